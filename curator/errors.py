"""The engine's exceptions: a small closed set that every transport maps one to one.

Each class names the gRPC status it travels as (`code`), so the server can map an engine
error to a status and the client can raise the same class again. Messages say what was
wrong and what is allowed. This module must never import anything from a transport.
"""


class CuratorError(Exception):
    """Base of every error Curator raises on purpose."""

    code = "INTERNAL"


class InvalidArgumentError(CuratorError, ValueError):
    """The request itself is malformed: wrong dimension, NaN, k out of range, empty batch."""

    code = "INVALID_ARGUMENT"


class NotFoundError(CuratorError, LookupError):
    """A named thing does not exist: collection, tenant or vector id."""

    code = "NOT_FOUND"


class AlreadyExistsError(CuratorError):
    """A create or insert names something that already exists."""

    code = "ALREADY_EXISTS"


class UnauthenticatedError(CuratorError):
    """The caller gave no credentials, or credentials the server does not know."""

    code = "UNAUTHENTICATED"


class PermissionDeniedError(CuratorError):
    """The caller may not act for the tenant it names."""

    code = "PERMISSION_DENIED"


class ResourceExhaustedError(CuratorError):
    """A request goes beyond a configured limit. `limit` names a tenant quota or key rate when
    one refused it (vectors, vector_bytes, payload_bytes, cache_entries, reads_per_second,
    writes_per_second) or a semantic cache budget did (cache_entries, cache_bytes,
    cache_categories, answer_bytes: `curator/cache/limits.py`); `retry_after` is the seconds until a rate allows the call again."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str = "", *, limit: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.limit, self.retry_after = limit, retry_after


class StorageError(CuratorError):
    """The data directory cannot be used: in use by another process, damaged, of a newer format,
    or a write to it failed. The directory is left as it was."""

    code = "FAILED_PRECONDITION"


class UpstreamError(CuratorError):
    """The model behind the semantic cache failed or broke off its answer (nothing was cached)."""

    code = "UNAVAILABLE"


class UpstreamTimeoutError(CuratorError):
    """The model behind the semantic cache did not answer in time (nothing was cached)."""

    code = "DEADLINE_EXCEEDED"


ALL_ERRORS = (
    InvalidArgumentError,
    NotFoundError,
    AlreadyExistsError,
    PermissionDeniedError,
    ResourceExhaustedError,
    StorageError,
    UnauthenticatedError,
    UpstreamError,
    UpstreamTimeoutError,
)
