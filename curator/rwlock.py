"""A readers-writer lock: many searches at once, or one write.

Searches hold it shared while their compiled kernels run (without the GIL), so they proceed side
by side on every core; a write holds it exclusively only for the short moment it changes the
index. Turns are fair both ways (phase-fair): a writer that waits holds back readers that come
after it, so a steady stream of searches cannot starve writes; and the readers that were waiting
when a write ends go before the next writer, so a steady stream of writes (eight threads of
one-vector inserts) cannot starve searches either. Since writers keep their exclusive sections
short, readers wait microseconds, not the length of a write's disk work or a retrain (see
`embedded.py`).

Not reentrant: a thread that holds it shared must not ask for it again, shared or exclusive.
"""

import threading
from contextlib import contextmanager


class ReadWriteLock:
    def __init__(self):
        self._mutex = threading.Lock()  # taken directly (`with`): a C call, not Condition's Python one
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer: int | None = None  # the ident of the thread writing
        self._writers_waiting = 0
        self._queued = 0  # readers waiting for the current or next write to end
        self._writes = 0  # writes ended so far

    def acquire_shared(self, blocking: bool = True) -> bool:
        with self._mutex:
            if self._writer is None and not self._writers_waiting:
                self._readers += 1
                return True
            if not blocking:
                return False
            self._queued += 1  # admitted (and counted) by the write that ends next
            since = self._writes
            while self._writes == since:
                self._cond.wait()
            return True

    def release_shared(self) -> None:
        with self._mutex:
            self._readers -= 1
            if self._readers == 0 and self._writers_waiting:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._mutex:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = threading.get_ident()

    def release_exclusive(self) -> None:
        with self._mutex:
            self._writer = None
            self._writes += 1
            self._readers += self._queued  # the readers that waited go before the next writer
            self._queued = 0
            self._cond.notify_all()

    def held_exclusively(self) -> bool:
        """Whether the calling thread holds the lock exclusively."""
        return self._writer == threading.get_ident()

    @contextmanager
    def shared(self):
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextmanager
    def exclusive(self):
        self.acquire_exclusive()
        try:
            yield
        finally:
            self.release_exclusive()
