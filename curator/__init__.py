"""Curator: a multi-tenant vector database after the Curator paper (Jin et al., 2024).

    import curator
    db = curator.open(":memory:")
    col = db.create_collection("docs", dim=50, metric="cosine")
"""

from .api import Collection, Database
from .errors import (
    AlreadyExistsError,
    CuratorError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from .metric import Metric
from .validate import MAX_EF, MAX_K

__all__ = [
    "open", "Database", "Collection", "Metric", "MAX_K", "MAX_EF",
    "CuratorError", "InvalidArgumentError", "NotFoundError", "AlreadyExistsError",
    "PermissionDeniedError", "ResourceExhaustedError",
]


def open(path: str = ":memory:") -> Database:  # noqa: A001 - the name users expect, like sqlite3
    """Open a database: ":memory:" keeps everything in this process."""
    from .embedded import EmbeddedDatabase

    if path == ":memory:":
        return EmbeddedDatabase()
    raise InvalidArgumentError(
        f"cannot open {path!r}: only ':memory:' is available until durable storage lands (issue 3)"
    )
