"""A server stream's turns in one batch each: send the reply and receive the next request together.

grpcio's blocking server sends each reply a stream handler yields as a batch of its own and waits
for it to complete before it asks for the next request, in another batch: two completions per
message, each one taken by the server's polling thread and handed to the handler's thread. A
search stream is a strict turn-taking of request and reply, so `Exchange` sends a reply and
receives the next request in one batch: one completion, one hand-off, per search.

This drives the call with grpcio's own machinery below its public API (the handler's call and
its state in `grpc._server`), as grpcio's generator adapter does. When a grpcio release does not
have that shape, `Exchange.of` answers None and the handler yields its replies as usual.
"""

import functools
import logging

log = logging.getLogger("curator.server")

try:  # not public API (see the module's note)
    from grpc import _server
    from grpc._cython import cygrpc

    _RECEIVE_MESSAGE = cygrpc.OperationType.receive_message
except (ImportError, AttributeError):  # pragma: no cover - depends on the grpcio release
    _server = None

_TOKEN = "curator_send_and_receive"  # our batch's name among the call's outstanding operations


class Exchange:
    """The turns of one stream call; `send(reply)` returns the next request's bytes, or None at
    the end of the stream (the client closed it, cancelled it, or the server is stopping)."""

    def __init__(self, state, call):
        self._state, self._call = state, call
        self._request: bytes | None = None

    @classmethod
    def of(cls, requests) -> "Exchange | None":
        """The exchange of the call behind grpcio's request iterator, or None if grpcio differs."""
        state, call = getattr(requests, "_state", None), getattr(requests, "_call", None)
        needed = ("_possibly_finish_call", "_is_rpc_state_active", "_get_initial_metadata_operation", "_OPEN")
        if _server is None or state is None or call is None or not all(hasattr(_server, n) for n in needed):
            _unavailable()
            return None
        return cls(state, call)

    def send(self, reply: bytes) -> bytes | None:
        state = self._state
        with state.condition:
            if not _server._is_rpc_state_active(state):
                return None
            operations = [cygrpc.SendMessageOperation(reply, 0), cygrpc.ReceiveMessageOperation(0)]
            if state.initial_metadata_allowed:
                operations.insert(0, _server._get_initial_metadata_operation(state, None))
                state.initial_metadata_allowed = False
            self._call.start_server_batch(tuple(operations), self._done)
            state.due.add(_TOKEN)
            while _TOKEN in state.due:
                state.condition.wait()
            request, self._request = self._request, None
            return request

    def _done(self, event):
        """The batch completed (in the server's polling thread): keep the request, wake the handler."""
        request = None
        for operation in event.batch_operations:
            if operation.type() == _RECEIVE_MESSAGE:
                request = operation.message()
        state = self._state
        with state.condition:
            if request is None and state.client is _server._OPEN:
                state.client = _server._CLOSED  # the client half-closed: no more requests
            self._request = request
            state.condition.notify_all()
            return _server._possibly_finish_call(state, _TOKEN)


@functools.cache  # said once
def _unavailable() -> None:
    log.warning("this grpcio's server calls are not of the shape Exchange drives; search streams "
                "send each reply as a batch of its own")
