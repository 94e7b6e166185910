"""Requests that cannot be decoded are the caller's error (INVALID_ARGUMENT), not the server's.

grpcio decodes a request with the method's deserializer before any handler runs; when that
raises (protobuf refuses a message nested deeper than its recursion limit, ~100 levels, which a
filter reaches at about 48), grpcio logs the exception and ends the call INTERNAL, as if the
server were broken. `Decoding` wraps every method's deserializer so that a failure becomes an
`Undecodable` value, answered INVALID_ARGUMENT with a short message and nothing logged.

Must never: decode a request twice, or change a request that decodes.
"""

import grpc

from curator_proto import wire

MESSAGE = ("the request could not be decoded as {kind}: it is malformed or nested deeper than protobuf "
           "allows (about 100 levels; a filter may nest at most 32)")


class Undecodable:
    """What a request that failed to decode becomes."""

    def __init__(self, kind: str):
        self.kind = kind

    def refuse(self, context) -> None:
        context.set_trailing_metadata(((wire.ERROR_KEY, "InvalidArgumentError"),))
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, MESSAGE.format(kind=self.kind))


def _tolerant(deserializer):
    if deserializer is None:
        return None
    kind = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    kind = kind.name if kind is not None else "the method's request"

    def decode(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # protobuf's DecodeError, or RecursionError from a pure-Python runtime
            return Undecodable(kind)

    return decode


def _checked_unary(behaviour):
    def run(request, context):
        if isinstance(request, Undecodable):
            request.refuse(context)
        return behaviour(request, context)

    return run


def checked(request, context):
    """A streamed request, refused if it did not decode. Stream handlers call this on each
    request they take: wrapping grpcio's request iterator would hide the call that
    `server.exchange` drives."""
    if isinstance(request, Undecodable):
        request.refuse(context)
    return request


class Decoding(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return handler
        decode = _tolerant(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_checked_unary(handler.unary_unary), decode, serialize)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_checked_unary(handler.unary_stream), decode, serialize)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(handler.stream_unary, decode, serialize)
        return grpc.stream_stream_rpc_method_handler(handler.stream_stream, decode, serialize)
