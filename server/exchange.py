"""A server stream's turns: each reply and the next request in one batch, quick turns answered at once.

grpcio's blocking server sends each reply a stream handler yields as a batch of its own and waits
for it to complete before it asks for the next request, in another batch; every completion is
taken by the server's polling thread and handed to the handler's thread. A search stream is a
strict turn-taking of request and reply, so `Exchange` does two things instead:

- it sends a reply and receives the next request in one batch: one completion per turn;
- a turn its `quick` function can answer (a search, or a small group of them, that cannot take
  long) is answered on the polling thread as soon as the request arrives, and the next batch is
  started from there: the handler's thread is not woken at all. This is how gRPC's C++ callback
  API runs its reactions (inline on the polling thread, for handlers that do not block). Other
  turns, and the end of the stream, go to the handler's thread as usual.

On a virtual machine each hand-off between threads may wake an idle vCPU through the host, which
costs more than the search (benchmarks/floor.py measures it). This drives the call with grpcio's
own machinery below its public API (the handler's call and its state in `grpc._server`), as
grpcio's generator adapter does; when a grpcio release does not have that shape, `Exchange.of`
answers None and the handler yields its replies as usual.
"""

import functools
import logging
from collections.abc import Callable

log = logging.getLogger("curator.server")

try:  # not public API (see the module's note)
    from grpc import _server
    from grpc._cython import cygrpc

    _RECEIVE_MESSAGE = cygrpc.OperationType.receive_message
except (ImportError, AttributeError):  # pragma: no cover - depends on the grpcio release
    _server = None

_TOKEN = "curator_send_and_receive"  # our batch's name among the call's outstanding operations
_NEEDED = ("_possibly_finish_call", "_is_rpc_state_active", "_get_initial_metadata_operation", "_OPEN", "_CLOSED")

Quick = Callable[[bytes], "bytes | None"]  # a request's reply if answered on the spot, else None


class Exchange:
    """The turns of one stream call. The handler's thread calls `send(reply)`, which returns the
    next request that `quick` did not answer, or None at the end of the stream (the client closed
    or cancelled it, or the server is stopping)."""

    def __init__(self, state, call, quick: Quick):
        self._state, self._call, self._quick = state, call, quick
        self._request: bytes | None = None

    @classmethod
    def of(cls, requests, quick: Quick) -> "Exchange | None":
        """The exchange of the call behind grpcio's request iterator, or None if grpcio differs."""
        state, call = getattr(requests, "_state", None), getattr(requests, "_call", None)
        if _server is None or state is None or call is None or not all(hasattr(_server, n) for n in _NEEDED):
            _unavailable()
            return None
        return cls(state, call, quick)

    def send(self, reply: bytes) -> bytes | None:
        state = self._state
        with state.condition:
            if not _server._is_rpc_state_active(state):
                return None
            operations = (cygrpc.SendMessageOperation(reply, 0), cygrpc.ReceiveMessageOperation(0))
            if state.initial_metadata_allowed:
                operations = (_server._get_initial_metadata_operation(state, None), *operations)
                state.initial_metadata_allowed = False
            self._call.start_server_batch(operations, self._done)
            state.due.add(_TOKEN)
            while _TOKEN in state.due:
                state.condition.wait()
            request, self._request = self._request, None
            return request

    def _done(self, event):
        """A turn's batch completed (on the server's polling thread): answer the request if it is
        quick, else keep it and wake the handler's thread."""
        request = None
        for operation in event.batch_operations:
            if operation.type() == _RECEIVE_MESSAGE:
                request = operation.message()
        state = self._state
        if request is not None and self._answered(request):
            return None, ()  # the next batch is under way, under the same token
        with state.condition:
            if request is None and state.client is _server._OPEN:
                state.client = _server._CLOSED  # the client half-closed: no more requests
            self._request = request
            state.condition.notify_all()
            return _server._possibly_finish_call(state, _TOKEN)

    def _answered(self, request: bytes) -> bool:
        """Answer a quick request and start the next turn's batch; False leaves it to the handler."""
        try:
            reply = self._quick(request)  # not under the call's lock: cancelling must not wait on it
        except Exception:  # nothing may escape into grpcio's polling loop; the handler answers instead
            log.exception("a quick search stream turn failed; its handler answers it")
            return False
        if reply is None:
            return False
        with self._state.condition:
            if not _server._is_rpc_state_active(self._state):
                return False  # ended meanwhile: the handler's reply finds it so
            self._call.start_server_batch(
                (cygrpc.SendMessageOperation(reply, 0), cygrpc.ReceiveMessageOperation(0)), self._done)
            return True


@functools.cache  # said once
def _unavailable() -> None:
    log.warning("this grpcio's server calls are not of the shape Exchange drives; search streams "
                "send each reply as a batch of its own")
