"""Encoding shared by both ends of the wire: packed float32 vectors, and engine errors as gRPC statuses.

Vectors travel as one bytes field (n * dim little-endian float32), never as lists of messages.
An engine error travels as its status code (from the error class's `code`) plus the class name
in the trailing metadata key "curator-error", so the client raises the very class the engine did.
A refusal by a quota or a rate also names its limit ("curator-limit") and, for a rate, the seconds
until it allows the call ("retry-after", a decimal string); the exception carries both again.
"""

import math

import numpy as np

from curator import errors
from curator_proto.v1 import curator_pb2 as pb

ERROR_KEY = "curator-error"
LIMIT_KEY = "curator-limit"
RETRY_AFTER_KEY = "retry-after"
ERROR_CLASSES = {cls.__name__: cls for cls in errors.ALL_ERRORS}
# By code alone only where the code means one engine error: a bare UNAVAILABLE or DEADLINE_EXCEEDED
# comes from the transport, not from the cache's upstream model.
DEFAULT_BY_CODE = {cls.code: cls for cls in errors.ALL_ERRORS
                   if cls not in (errors.UpstreamError, errors.UpstreamTimeoutError)}


def pack(vectors: np.ndarray) -> pb.Vectors:
    array = np.ascontiguousarray(vectors, dtype="<f4")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    return pb.Vectors(dim=array.shape[1], data=array.tobytes())


def unpack(message: pb.Vectors, what: str = "vectors") -> np.ndarray:
    """(n, dim) float32 from a Vectors message; a malformed one is InvalidArgumentError."""
    if message.dim == 0:
        raise errors.InvalidArgumentError(f"{what}: dim must be given (> 0)")
    row = message.dim * 4
    if len(message.data) == 0 or len(message.data) % row:
        raise errors.InvalidArgumentError(
            f"{what}: {len(message.data)} bytes is not a whole number of rows of {message.dim} float32 "
            f"({row} bytes each)")
    return np.frombuffer(message.data, dtype="<f4").reshape(-1, message.dim).astype(np.float32)


def unpack_one(message: pb.Vectors, what: str = "query") -> np.ndarray:
    """One (dim,) float32 vector from a Vectors message that holds exactly one.

    A copy, not a view of the message's bytes: the engine's compiled code takes writable arrays,
    and a read-only one would be compiled for anew."""
    if message.dim and len(message.data) == message.dim * 4:
        return np.frombuffer(message.data, dtype="<f4").copy()
    n = unpack(message, what).shape[0]  # raises InvalidArgumentError for a malformed message
    raise errors.InvalidArgumentError(f"{what}: one vector expected, got {n}; use SearchBatch for several")


def failure(error: errors.CuratorError) -> pb.Failure:
    """An engine error as a message (streams carry errors in their replies, not in a status)."""
    return pb.Failure(code=error.code, type=type(error).__name__, message=str(error),
                      limit=getattr(error, "limit", None) or "", retry_after=getattr(error, "retry_after", None) or 0.0)


def trailers(error: errors.CuratorError) -> tuple:
    """The trailing metadata of a call that failed with `error`: its class, and a limit's name and
    retry-after where it has them."""
    metadata = [(ERROR_KEY, type(error).__name__)]
    if getattr(error, "limit", None):
        metadata.append((LIMIT_KEY, error.limit))
    if getattr(error, "retry_after", None) is not None:
        metadata.append((RETRY_AFTER_KEY, retry_after_text(error.retry_after)))
    return tuple(metadata)


def retry_after_text(seconds: float) -> str:
    """Seconds as a decimal string, rounded up to the millisecond (waiting that long is enough)."""
    return f"{math.ceil(max(0.0, seconds) * 1000) / 1000:.3f}"


def exception(code: str, type_name: str | None, message: str, limit: str | None = None,
              retry_after: float | None = None) -> Exception:
    """The engine's exception for an error that crossed the wire: by class name, else by status code."""
    cls = ERROR_CLASSES.get(type_name) or DEFAULT_BY_CODE.get(code)
    if cls is None:
        return errors.CuratorError(f"{code}: {message}")
    if issubclass(cls, errors.ResourceExhaustedError):
        return cls(message, limit=limit or None, retry_after=retry_after)
    return cls(message)


def from_failure(failure: pb.Failure) -> Exception:
    """The engine's exception for an error carried in a stream's reply."""
    return exception(failure.code, failure.type, failure.message, failure.limit,
                     failure.retry_after if failure.retry_after > 0 else None)


def from_trailers(code: str, metadata, message: str) -> Exception:
    """The engine's exception for a failed call, from its status and trailing metadata (pairs, or
    grpc.aio's Metadata mapping)."""
    metadata = metadata if hasattr(metadata, "get") else dict(metadata or ())
    retry_after = metadata.get(RETRY_AFTER_KEY)
    try:
        retry_after = float(retry_after) if retry_after is not None else None
    except ValueError:
        retry_after = None
    return exception(code, metadata.get(ERROR_KEY), message, metadata.get(LIMIT_KEY), retry_after)
