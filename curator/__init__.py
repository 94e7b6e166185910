"""Curator: a multi-tenant vector database after the Curator paper (Jin et al., 2024).

    import curator
    db = curator.open(":memory:")
    col = db.create_collection("docs", dim=50, metric="cosine")
"""

__version__ = "0.1.0"  # in this one place: pyproject.toml reads it, `curator --version` prints it

from .api import Collection, Database
from .errors import (
    AlreadyExistsError,
    CuratorError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StorageError,
    UnauthenticatedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .metric import Metric
from .quotas import Quota, TenantQuota, Usage
from .validate import MAX_EF, MAX_K

__all__ = [
    "__version__", "open", "Database", "Collection", "Metric", "MAX_K", "MAX_EF",
    "CuratorError", "InvalidArgumentError", "NotFoundError", "AlreadyExistsError",
    "PermissionDeniedError", "ResourceExhaustedError", "StorageError", "UnauthenticatedError",
    "UpstreamError", "UpstreamTimeoutError", "restore", "connect", "Quota", "TenantQuota", "Usage",
]


def open(path: str = ":memory:", *, durability: str = "sync", cache: dict | None = None,  # noqa: A001
         quotas: dict | None = None, device: str = "auto") -> Database:
    """Open a database: ":memory:" keeps everything in this process; a path opens (or creates) a
    data directory there. durability: "sync" (fsync before a write returns), "batch" (group
    commit) or "none" (no fsync); see README. `cache`: the semantic cache's configuration
    (`curator.cache.config`: embedding, upstream, load, policies). `quotas`: configured tenant
    quotas, {"default": {limit: n}, "tenants": {name: {limit: n}}} (`curator.quotas`); those set
    with `db.set_quota` override them. `device`: where bulk array work runs (README, "GPU"): "auto"
    (a CUDA GPU when cupy sees one, else the CPU), "cpu", or "cuda" (an error where there is none)."""
    from .device import select
    from .embedded import EmbeddedDatabase
    from .storage import DataDirectory

    chosen = select(device)
    if path == ":memory:":
        return EmbeddedDatabase(cache=cache, quotas=quotas, device=chosen)
    directory = DataDirectory.open(path, durability)
    try:
        return EmbeddedDatabase(directory, cache=cache, quotas=quotas, device=chosen)
    except Exception:
        directory.close()  # a refused configuration leaves the directory free for the next opener
        raise


def connect(address: str, **options) -> Database:
    """A Database on a Curator server at "host:port" (options: api_key, timeout, retries,
    root_certificates); the same methods as `open`, over gRPC."""
    from curator_client import connect as connect_remote  # the SDK sits beside the engine, not in it

    return connect_remote(address, **options)


def restore(snapshot: str, path: str) -> None:
    """Make the data directory `path` (new or empty) a copy of a snapshot taken with `db.snapshot`."""
    from .storage import restore as restore_directory

    restore_directory(snapshot, path)
