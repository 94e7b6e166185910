"""Checks at the edge of the engine: every argument a user passes is validated here, once.

After these checks the engine trusts its inputs (contiguous float32 / int64 arrays of the right
shape, finite values whose squared norms and distances fit in float32, sane k). Errors say what
was wrong and what is allowed.
"""

import secrets

import numpy as np

from .errors import InvalidArgumentError
from .metric import MAX_NORM, within_norm_bound

MAX_K = 10_000
"""Largest k a search accepts."""

MAX_EF = 1_000_000
"""Largest recall knob a search accepts."""

MAX_NAME_LENGTH = 256

MAX_DIM = 65_536
"""Largest vector dimension a collection accepts."""

MAX_SCROLL = 100_000
"""Largest page a scroll returns."""


def name(value, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(
            f"{what} is {len(value)} characters long; at most {MAX_NAME_LENGTH} are allowed"
        )
    return value


def dim(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_DIM:
        raise InvalidArgumentError(f"dim must be an integer between 1 and {MAX_DIM}, got {value!r}")
    return int(value)


FIRST_DRAWN_ID = 1 << 32  # ids the database draws are at least this, above the ranges applications count in


def drawn_ids(n: int) -> np.ndarray:
    """n distinct ids drawn at random from [2^32, 2^63), for an insert that gives none: nothing in
    them tells what other tenants hold or how many ids were drawn before."""
    rng = np.random.default_rng(secrets.randbits(128))
    while True:
        ids = rng.integers(FIRST_DRAWN_ID, np.iinfo(np.int64).max, size=n, dtype=np.int64)
        if np.unique(ids).size == n:
            return ids


def ids(values) -> np.ndarray:
    """A non-empty 1-d int64 array of vector ids without repeats."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"ids must be a 1-d array, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidArgumentError("empty batch: at least one id is required")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            pass
        else:
            raise InvalidArgumentError(f"ids must be 64-bit integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise InvalidArgumentError("ids must fit in a signed 64-bit integer")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if (arr < 0).any():
        raise InvalidArgumentError("ids must be >= 0 (negative values are reserved as padding)")
    if arr.size > 1 and np.unique(arr).size != arr.size:
        raise InvalidArgumentError("ids repeat within one batch; each id may appear once")
    return arr


def vectors(values, dim: int) -> np.ndarray:
    """A non-empty (n, dim) float32 array of finite values and bounded norm (`metric.MAX_NORM`: the
    distances between any two accepted vectors are finite in float32); a single vector becomes (1, dim)."""
    try:
        with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf, refused below
            arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"vectors must be numeric arrays: {exc}") from None
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidArgumentError(f"vectors must be a 2-d array (n, {dim}), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InvalidArgumentError("empty batch: at least one vector is required")
    if arr.shape[1] != dim:
        raise InvalidArgumentError(f"dimension {dim} expected, got {arr.shape[1]}")
    arr = np.ascontiguousarray(arr)
    ok = within_norm_bound(arr)  # also False for a row with NaN or infinity
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        if not np.isfinite(arr[bad]).all():
            raise InvalidArgumentError(
                f"vector {bad} holds NaN or infinity (or a value beyond float32's range, ~3.4e38); "
                "only finite values are allowed")
        norm = float(np.sqrt(np.dot(arr[bad].astype(np.float64), arr[bad].astype(np.float64))))
        raise InvalidArgumentError(
            f"vector {bad} has length {norm:.3g}: its squared norm and distances would overflow float32; "
            f"the length must stay below {MAX_NORM:.2g} (values below ~{MAX_NORM / np.sqrt(dim):.2g} each "
            f"at dim {dim})")
    return arr


def k(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"k must be an integer, got {value!r}")
    if not 1 <= value <= MAX_K:
        raise InvalidArgumentError(f"k must be between 1 and {MAX_K}, got {value}")
    return int(value)


def ef(value, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"ef must be an integer, got {value!r}")
    if not 1 <= value <= MAX_EF:
        raise InvalidArgumentError(f"ef must be between 1 and {MAX_EF}, got {value}")
    return int(value)



def payloads(values, n: int) -> list | None:
    """None, or a list of n payload dicts (None entries mean no payload); types are checked by
    the collection's payload schema (`curator.payloads`)."""
    if values is None:
        return None
    if isinstance(values, dict) or not isinstance(values, (list, tuple)):
        raise InvalidArgumentError(f"payloads must be a list of dicts, one per vector, got {type(values).__name__}")
    if len(values) != n:
        raise InvalidArgumentError(f"{n} vectors but {len(values)} payloads; give one per vector")
    return list(values)
