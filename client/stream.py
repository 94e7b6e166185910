"""Single searches over one long-lived stream per thread (the blocking SDK's fast path).

A unary call through grpcio costs ~0.55 ms round trip on loopback here, most of it the call's
own setup; a message on an open bidirectional stream costs ~0.26 ms. So `search` goes over a
SearchStream that each thread keeps open. The stream is only a shortcut: when the server refuses
one (at its stream limit, or too old to know SearchStream), closes an idle one, or goes away, the
search is made as a unary Search call, with that call's retries; streams are tried again later.
"""

import queue
import threading
import time
import weakref

import grpc

_END = object()  # ends a stream's request iterator


class SearchStream:
    """One open SearchStream: ask() sends a request and waits for its reply."""

    def __init__(self, stub, metadata):
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._replies = stub.SearchStream(iter(self._requests.get, _END), metadata=metadata)
        self.asked_at: float | None = None  # when the unanswered request was sent (for the watchdog)
        self.timed_out = False

    def ask(self, request):
        self.asked_at = time.monotonic()
        self._requests.put(request)
        try:
            return next(self._replies)
        finally:
            self.asked_at = None

    def cancel(self, timed_out: bool = False) -> None:
        self.timed_out = timed_out
        self._replies.cancel()

    def close(self) -> None:
        self._requests.put(_END)
        self._replies.cancel()


class Watchdog:
    """Cancels a stream whose reply is later than the deadline (a blocking next() has no timeout).

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

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            now = time.monotonic()
            with self._lock:
                late = [s for s in self._streams if s.asked_at is not None and now - s.asked_at > self.timeout]
            for stream in late:
                stream.cancel(timed_out=True)


class StreamPool:
    """Each thread's SearchStream on one channel, and when to try again after a refusal."""

    RETRY_AFTER = 5.0  # seconds before a thread asks again for a stream the server refused

    def __init__(self, stub, metadata, timeout: float):
        self._stub, self._metadata = stub, metadata
        self._local = threading.local()
        self.watchdog = Watchdog(timeout)

    def get(self) -> SearchStream | None:
        stream = getattr(self._local, "stream", None)
        if stream is None and time.monotonic() >= getattr(self._local, "retry_at", 0.0):
            stream = self._local.stream = SearchStream(self._stub, self._metadata)
            self.watchdog.watch(stream)
        return stream

    def failed(self, stream: SearchStream, error: grpc.RpcError) -> None:
        """Forget a stream that broke; ask for a new one now if the server only closed an idle one."""
        stream.close()
        self._local.stream = None
        idle_closed = error.code() == grpc.StatusCode.CANCELLED and not stream.timed_out
        self._local.retry_at = 0.0 if idle_closed else time.monotonic() + self.RETRY_AFTER

    def close(self) -> None:
        self.watchdog.stop()
