"""Where bulk array work runs: a CUDA GPU when one is selected (cupy, faiss-gpu), else the CPU.

The GPU packages are an optional extra (`pip install curator-db[gpu]`); nothing requires them.
Code that may run on either device takes an array module `xp` (cupy or numpy) and uses only
what both provide, so the same lines run, and are tested, on the CPU. A `Device` is that choice
for a database (`select`): "cpu" (the compiled CPU kernels only), "cuda" (cupy on the first GPU)
or "numpy" (the device code paths run by numpy on the CPU: the tests, `benchmarks/gpu.py --cpu`).
What runs on it: k-means of the shared tree (`tree.py`), batched searches and masked exact scans
(`device_search.py`), the kNN graph an HNSW graph is built from (`knn_graph.py`). Single queries
stay on the CPU, where a transfer would cost more than the scan.

This module must never make cupy a requirement: it is imported inside `select` only.
"""

import functools
import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidArgumentError
from .metric import Metric

log = logging.getLogger("curator")

CHOICES = ("auto", "cpu", "cuda", "numpy")


@dataclass(eq=False)
class Device:
    """The device a database's collections run their bulk array work on.

    `memory_budget`: bytes of device memory the collections' resident arrays may take together
    (`reserve`); `scratch_bytes`: the most one batch's temporary arrays may take."""

    name: str  # "cpu", "cuda" or "numpy"
    xp: object = np
    memory_budget: int = 0
    scratch_bytes: int = 256 << 20
    label: str = "CPU"  # what it is, in words (the GPU's name)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one batch on the device at a time
    reserved: int = 0

    @property
    def accelerated(self) -> bool:
        """Whether the device code paths run (on a GPU, or emulated by numpy)."""
        return self.name != "cpu"

    def to_host(self, array) -> np.ndarray:
        return array.get() if hasattr(array, "get") else np.asarray(array)

    def reserve(self, nbytes: int) -> bool:
        """Take nbytes of the budget; False (nothing taken) where they do not fit."""
        with self.lock:
            if self.reserved + nbytes > self.memory_budget:
                return False
            self.reserved += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self.lock:
            self.reserved = max(0, self.reserved - nbytes)

    def free_cached(self) -> None:
        """Give the memory pool's cached blocks back (after an out-of-memory error)."""
        if self.name == "cuda":
            self.xp.get_default_memory_pool().free_all_blocks()

    def synchronize(self) -> None:
        if self.name == "cuda":
            self.xp.cuda.Device().synchronize()

    def describe(self) -> dict:
        return {"device": self.name, "label": self.label, "memory_budget": self.memory_budget,
                "memory_reserved": self.reserved}


CPU = Device("cpu")


def select(choice: "str | Device" = "auto", memory_fraction: float = 0.8) -> Device:
    """The device for `choice`: "cpu"; "cuda" (an error saying why where there is none); "auto"
    (the GPU when cupy sees one, else the CPU); "numpy" (the device paths emulated on the CPU).
    A Device passes through. The budget is `memory_fraction` of the GPU's free memory now."""
    if isinstance(choice, Device):
        return choice
    if choice not in CHOICES:
        raise InvalidArgumentError(f"device must be one of {', '.join(CHOICES)}; got {choice!r}")
    if choice == "cpu":
        return CPU
    if choice == "numpy":
        return Device("numpy", np, memory_budget=1 << 30, scratch_bytes=64 << 20,
                      label="numpy (device paths on the CPU)")
    cupy, why = _cupy()
    if cupy is None:
        if choice == "cuda":
            raise InvalidArgumentError(f"no CUDA device: {why}; use device=\"cpu\" or \"auto\"")
        log.info("device auto: the CPU (%s)", why)
        return CPU
    free, total = cupy.cuda.runtime.memGetInfo()
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    device = Device("cuda", cupy, memory_budget=int(free * memory_fraction),
                    scratch_bytes=min(4 << 30, int(free * 0.1)), label=name)
    log.info("device: %s (%.1f GiB free of %.1f GiB; budget %.1f GiB)", name, free / 2**30, total / 2**30,
             device.memory_budget / 2**30)
    return device


@functools.cache
def _cupy():
    """(cupy, None) when it imports and sees a CUDA device, else (None, why not)."""
    try:
        import cupy
    except Exception as error:  # noqa: BLE001 - any import failure means no GPU path
        return None, f"cupy not installed ({type(error).__name__}: {error})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # noqa: BLE001 - no driver, no device
        return None, f"cupy sees no device ({type(error).__name__}: {error})"
    if count == 0:
        return None, "cupy sees no device"
    return cupy, None


def array_module():
    """cupy when it imports and sees a CUDA device, else numpy."""
    return _cupy()[0] or np


@functools.cache
def faiss_gpus() -> int:
    """CUDA devices faiss can use (0 with faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@functools.cache
def _torch_cuda():
    """torch, when it is installed with a CUDA device: its topk selects without a full sort,
    which cupy's argpartition does not (it sorts the whole row)."""
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - optional
        return None


def topk(d, k: int, xp):
    """The k smallest of each row of d, ascending: (column indices, values), on d's device."""
    n = d.shape[1]
    k = min(k, n)
    if xp is np:
        if k < n:
            top = np.argpartition(d, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(n), d.shape)
        picked = np.take_along_axis(d, top, axis=1)
        order = np.argsort(picked, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(picked, order, axis=1)
    torch = _torch_cuda()
    if torch is not None:
        values, top = torch.topk(torch.from_dlpack(d), k, dim=1, largest=False, sorted=True)
        return xp.from_dlpack(top), xp.from_dlpack(values)
    top = xp.argsort(d, axis=1)[:, :k]
    return top, xp.take_along_axis(d, top, axis=1)


def distances(q, rows, metric: Metric, xp, row_norms=None):
    """(nq, n) distances, smaller first, from prepared queries to prepared rows (unit length
    under cosine), as one matrix product; `row_norms`: the rows' squared norms, if known."""
    dots = q @ rows.T
    if metric is Metric.L2:
        if row_norms is None:
            row_norms = (rows * rows).sum(axis=1)
        return (q * q).sum(axis=1)[:, None] - 2 * dots + row_norms[None, :]
    if metric is Metric.COSINE:
        return 1 - dots
    return -dots


def exact_topk(queries: np.ndarray, rows: np.ndarray, k: int, metric: Metric, xp=None):
    """Best k rows for each query by exact distance (smaller first): (row indices, distances), each
    (nq, min(k, n)) numpy arrays. `rows` and `queries` are prepared for the metric (unit length
    under cosine). Runs on `xp` (default: the device of `array_module`)."""
    xp = xp or array_module()
    q, r = xp.asarray(queries, dtype=xp.float32), xp.asarray(rows, dtype=xp.float32)
    top, picked = topk(distances(q, r, metric, xp), k, xp)
    to_host = getattr(xp, "asnumpy", np.asarray)
    return to_host(top).astype(np.int64), to_host(picked).astype(np.float32)
