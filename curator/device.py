"""Where bulk array work runs: a CUDA GPU when one is present (cupy, faiss-gpu), else the CPU.

The GPU packages are an optional extra (`pip install curator-db[gpu]`); nothing requires them.
Code that may run on either device takes an array module `xp` (cupy or numpy) and uses only
what both provide, so the same lines run, and are tested, on the CPU. Used for k-means training
of the shared tree and for batched exact scans; single queries stay on the CPU, where a
transfer would cost more than the scan.
"""

import functools

import numpy as np

from .metric import Metric


@functools.cache
def array_module():
    """cupy when it imports and sees a CUDA device, else numpy."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # noqa: BLE001 - not installed, no driver, no device: the CPU it is
        pass
    return np


@functools.cache
def faiss_gpus() -> int:
    """CUDA devices faiss can use (0 with faiss-cpu)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def exact_topk(queries: np.ndarray, rows: np.ndarray, k: int, metric: Metric, xp=None):
    """Best k rows for each query by exact distance (smaller first): (row indices, distances), each
    (nq, min(k, n)) numpy arrays. `rows` and `queries` are prepared for the metric (unit length
    under cosine). Runs on `xp` (default: the device of `array_module`)."""
    xp = xp or array_module()
    q, r = xp.asarray(queries, dtype=xp.float32), xp.asarray(rows, dtype=xp.float32)
    if metric is Metric.L2:
        d = (q * q).sum(axis=1)[:, None] - 2 * (q @ r.T) + (r * r).sum(axis=1)[None, :]
    elif metric is Metric.COSINE:
        d = 1 - q @ r.T
    else:
        d = -(q @ r.T)
    n = r.shape[0]
    k = min(k, n)
    if k < n:
        top = xp.argpartition(d, k - 1, axis=1)[:, :k]
    else:
        top = xp.broadcast_to(xp.arange(n), (q.shape[0], n))
    picked = xp.take_along_axis(d, top, axis=1)
    order = xp.argsort(picked, axis=1)
    top, picked = xp.take_along_axis(top, order, axis=1), xp.take_along_axis(picked, order, axis=1)
    to_host = getattr(xp, "asnumpy", np.asarray)
    return to_host(top).astype(np.int64), to_host(picked).astype(np.float32)
