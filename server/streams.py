"""The server's open search streams: a cap on how many, and closing the ones left idle.

The blocking gRPC server gives each open stream a worker thread for as long as it lives, so
streams must never take every worker: past `limit` open streams a new one is refused
(RESOURCE_EXHAUSTED) and its client searches with unary calls instead. Nor may one key take
every stream: past `per_key` streams of its own, its next is refused the same way while other
keys' streams still open. A stream idle for `idle_seconds` is cancelled to give its thread back;
so is every stream when the server stops, so that a drain does not wait for clients that keep
streams open.
"""

import threading
import time

import grpc

from curator.errors import ResourceExhaustedError


class OpenStreams:
    def __init__(self, limit: int, idle_seconds: float, per_key: int | None = None):
        self.limit, self.idle_seconds, self.per_key = limit, idle_seconds, per_key  # per_key None: no share
        self._last_used: dict[grpc.ServicerContext, float] = {}
        self._owner: dict[grpc.ServicerContext, object] = {}  # the key (principal) each stream is open for
        self._owned: dict[object, int] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="curator-stream-reaper", daemon=True)
        self._reaper.start()

    def open(self, context: grpc.ServicerContext, owner=None) -> None:
        """Count a stream opened for `owner` (a principal), or refuse it."""
        with self._lock:
            if len(self._last_used) >= self.limit or self._closing.is_set():
                raise ResourceExhaustedError(f"{len(self._last_used)} search streams are open, the server's "
                                             f"limit (max_streams={self.limit}); use unary Search")
            owned = self._owned.get(owner, 0)
            if self.per_key is not None and owned >= self.per_key:
                raise ResourceExhaustedError(f"this key has {owned} search streams open, its share of the "
                                             f"server's (max_streams_per_key={self.per_key}); use unary Search")
            self._last_used[context] = time.monotonic()
            self._owner[context] = owner
            self._owned[owner] = owned + 1

    # one dict store each: no lock on the per-query path
    def busy(self, context: grpc.ServicerContext) -> None:
        self._last_used[context] = float("inf")  # a long search is not idleness

    def idle(self, context: grpc.ServicerContext) -> None:
        self._last_used[context] = time.monotonic()

    def close(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._last_used.pop(context, None)
            if context not in self._owner:
                return
            owner = self._owner.pop(context)
            if self._owned[owner] > 1:
                self._owned[owner] -= 1
            else:
                del self._owned[owner]

    def __len__(self) -> int:
        return len(self._last_used)

    def cancel_all(self) -> None:
        """Refuse new streams and end the open ones (the server is stopping)."""
        self._closing.set()
        with self._lock:
            contexts = list(self._last_used)
        for context in contexts:
            context.cancel()

    def _reap(self) -> None:
        while not self._closing.wait(min(1.0, self.idle_seconds / 4)):
            cutoff = time.monotonic() - self.idle_seconds
            with self._lock:
                idle = [c for c, used in self._last_used.items() if used < cutoff]
            for context in idle:
                context.cancel()
