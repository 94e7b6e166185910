"""Single searches over one long-lived stream per thread (the blocking SDK's fast path).

A unary call through grpcio costs ~0.55 ms round trip on loopback here, most of it the call's
own setup; a message on an open bidirectional stream costs much less. So `search` goes over a
SearchStream that each thread keeps open. The stream is only a shortcut: when the server refuses
one (at its stream limit, or too old to know SearchStream), closes an idle one, or goes away, the
search is made as a unary Search call, with that call's retries; streams are tried again later.

Each stream is driven by the thread that asks, which waits on the call's own completion queue:
a search wakes no other thread of the client. grpcio's public blocking streams hand every
message to a thread that consumes the request iterator and every reply to the channel's polling
thread, and on 2 cores those hand-offs cost more than the rest of the client (measured on a
loopback echo: 177 us of client CPU per message against 71-91 us driven from the caller's
thread; a Curator search 0.46 against 0.33 ms p50). The driving uses grpcio's segregated calls
(`grpc._cython.cygrpc`), the machinery of its own single-threaded unary-stream calls but not
its public API: when a grpcio release lacks them, the SDK logs it once and searches with unary
calls, which need nothing private.
"""

import logging
import os
import threading
import time
import weakref

import grpc

from curator_proto.v1 import curator_pb2 as pb

log = logging.getLogger("curator.client")

_SERVICE = pb.DESCRIPTOR.services_by_name["Search"]
METHOD = f"/{_SERVICE.full_name}/SearchStream".encode()
GROUPS = f"/{_SERVICE.full_name}/SearchGroups".encode()  # (pb.SearchGroup -> pb.SearchGroupReply)

try:  # not public API (see the module's note)
    from grpc._common import CYGRPC_STATUS_CODE_TO_STATUS_CODE
    from grpc._cython import cygrpc
except ImportError:  # pragma: no cover - depends on the grpcio release
    cygrpc = None

# what each batch of the stream's operations is, as the completion queue names it back
_OPENED, _HEADERS, _STATUS, _REPLY = "opened", "headers", "status", "reply"


def drivable(channel: grpc.Channel) -> bool:
    """Whether this grpcio lets the caller's thread drive a stream on `channel` (see above)."""
    return cygrpc is not None and hasattr(getattr(channel, "_channel", None), "segregated_call")


class StreamEnded(grpc.RpcError):
    """The stream ended (refused, cancelled, closed by the server, or the server went away)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class SearchStream:
    """One open SearchStream: ask() sends a request and waits for its reply, in the caller's thread.

    The thread that owns the stream asks; the watchdog may cancel it from its own thread; closing
    takes the stream's lock, since grpcio frees the call once its last completion is taken.
    """

    def __init__(self, channel: grpc.Channel, metadata, method: bytes = METHOD, reply=pb.SearchStreamReply):
        self._lock = threading.Lock()
        self._pid = os.getpid()  # the process whose gRPC core the call lives in
        self._reply_type = reply
        self._due = {_OPENED, _HEADERS, _STATUS}  # batches started and not yet completed
        self._call = channel._channel.segregated_call(
            cygrpc.PropagationConstants.GRPC_PROPAGATE_DEFAULTS, method, None, None, metadata, None,
            (((cygrpc.SendInitialMetadataOperation(metadata, 0),), _OPENED),
             ((cygrpc.ReceiveInitialMetadataOperation(0),), _HEADERS),
             ((cygrpc.ReceiveStatusOnClientOperation(0),), _STATUS)), None, None)
        self._status: StreamEnded | None = None
        self.asked_at: float | None = None  # when the unanswered request was sent (for the watchdog)
        self._sent = False  # the last request's batch was started (else the stream had ended)
        self.timed_out = False

    def ask(self, request):
        """Send a request (a SearchRequest, or a SearchGroup on GROUPS) and return its reply."""
        self.send(request)
        return self.receive()

    def send(self, request) -> None:
        """Send a request without waiting for its reply; `receive` (on this thread or another)
        then takes the reply. The stream is held from one to the other: its lock is taken here and
        given back in `receive`, whichever thread that is (a Lock may be released by any thread)."""
        self._lock.acquire()
        self.asked_at = time.monotonic()
        try:
            batch = (cygrpc.SendMessageOperation(request.SerializeToString(), 0), cygrpc.ReceiveMessageOperation(0))
            self._sent = self._status is None and self._call.operate(batch, _REPLY)
            if self._sent:
                self._due.add(_REPLY)
        except BaseException:
            self.asked_at = None
            self._lock.release()
            raise

    def receive(self):
        """The reply to the request `send` sent; StreamEnded if the stream ended instead."""
        try:
            if self._sent:
                message = self._reply()
                if message is not None:
                    return self._reply_type.FromString(message)
            self._drain()  # the stream ended: its status says why
            raise self._status
        finally:
            self.asked_at = None
            self._lock.release()

    def _reply(self) -> bytes | None:
        """The reply's bytes; None when the stream ended instead."""
        while True:
            event = self._next_event()
            if event.tag == _REPLY:
                for operation in event.batch_operations:
                    if operation.type() == cygrpc.OperationType.receive_message:
                        return operation.message()

    def _next_event(self):
        event = self._call.next_event()
        self._due.discard(event.tag)
        if event.tag == _STATUS:
            status = event.batch_operations[0]
            code = CYGRPC_STATUS_CODE_TO_STATUS_CODE.get(status.code(), grpc.StatusCode.UNKNOWN)
            self._status = StreamEnded(code, status.details())
        return event

    def _drain(self) -> None:
        """Take every outstanding completion: once the last is taken, grpcio frees the call."""
        while self._due:
            self._next_event()

    def cancel(self, timed_out: bool = False) -> None:
        self.timed_out = timed_out
        self._call.cancel(cygrpc.StatusCode.cancelled, "deadline" if timed_out else "closed by the client")

    def close(self, wait: bool = True) -> None:
        """End the stream and free it; with wait=False, not while a search runs on it."""
        if not self._lock.acquire(blocking=wait):
            return  # its thread is asking: the stream ends with the channel, and that thread frees it
        try:
            if self._due:
                self.cancel(self.timed_out)
                self._drain()
        finally:
            self._lock.release()

    def __del__(self):
        """Its thread ended without closing it. Not in a child forked from the process that opened
        it: a fork whose child runs Python before exec (subprocess with preexec_fn, as Ray starts
        its processes) frees the other threads' thread-locals there, and closing would wait on
        gRPC's locks, which threads that do not exist in the child may have held (a test's raylet
        start hung so)."""
        if getattr(self, "_due", None) and os.getpid() == getattr(self, "_pid", None):
            self.close(wait=False)


class Watchdog:
    """Cancels a stream whose reply is later than the deadline (a stream's ask has no timeout).

    One daemon thread per channel, started with its first stream, waking a few times per deadline.
    """

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._streams: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def watch(self, stream: SearchStream) -> None:
        with self._lock:
            self._streams.add(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="curator-stream-watchdog", daemon=True)
                self._thread.start()

    def streams(self) -> list[SearchStream]:
        with self._lock:
            return list(self._streams)

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            now = time.monotonic()
            late = [s for s in self.streams() if s.asked_at is not None and now - s.asked_at > self.timeout]
            for stream in late:
                stream.cancel(timed_out=True)


class StreamPool:
    """Each thread's SearchStream on one channel, and when to try again after a refusal."""

    RETRY_AFTER = 5.0  # seconds before a thread asks again for a stream the server refused

    def __init__(self, channel: grpc.Channel, metadata, timeout: float):
        self._channel, self._metadata = channel, metadata
        self._local = threading.local()
        self.watchdog = Watchdog(timeout)
        self.available = True
        if not drivable(channel):
            self._unavailable("no segregated calls")

    def get(self) -> SearchStream | None:
        stream = getattr(self._local, "stream", None)
        if stream is None and self.available and time.monotonic() >= getattr(self._local, "retry_at", 0.0):
            try:
                stream = self._local.stream = SearchStream(self._channel, self._metadata)
            except (AttributeError, TypeError) as error:  # grpcio's private machinery changed shape
                self._unavailable(error)
                return None
            self.watchdog.watch(stream)
        return stream

    def _unavailable(self, reason) -> None:
        self.available = False
        log.warning("this grpcio (%s) cannot drive a search stream from the caller's thread (%s); "
                    "single searches use unary calls", grpc.__version__, reason)

    def failed(self, stream: SearchStream, error: grpc.RpcError) -> None:
        """Forget a stream that broke; ask for a new one now if the server only closed an idle one."""
        stream.close()
        self._local.stream = None
        idle_closed = error.code() == grpc.StatusCode.CANCELLED and not stream.timed_out
        self._local.retry_at = 0.0 if idle_closed else time.monotonic() + self.RETRY_AFTER

    def close(self) -> None:
        """End every stream no thread is asking on (one that is asking ends with the channel)."""
        self.watchdog.stop()
        for stream in self.watchdog.streams():
            stream.close(wait=False)
