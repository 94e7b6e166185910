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
    """A request goes beyond a configured limit."""

    code = "RESOURCE_EXHAUSTED"


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
