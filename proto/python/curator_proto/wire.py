"""Encoding shared by both ends of the wire: packed float32 vectors, and engine errors as gRPC statuses.

Vectors travel as one bytes field (n * dim little-endian float32), never as lists of messages.
An engine error travels as its status code (from the error class's `code`) plus the class name
in the trailing metadata key "curator-error", so the client raises the very class the engine did.
"""

import numpy as np

from curator import errors
from curator_proto.v1 import curator_pb2 as pb

ERROR_KEY = "curator-error"
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
    return pb.Failure(code=error.code, type=type(error).__name__, message=str(error))


def exception(code: str, type_name: str | None, message: str) -> Exception:
    """The engine's exception for an error that crossed the wire: by class name, else by status code."""
    cls = ERROR_CLASSES.get(type_name) or DEFAULT_BY_CODE.get(code)
    return cls(message) if cls else errors.CuratorError(f"{code}: {message}")
