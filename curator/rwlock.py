"""A readers-writer lock: many searches at once, or one write.

Searches hold it shared while their compiled kernels run (without the GIL), so they proceed side
by side on every core; a write holds it exclusively only for the short moment it changes the
index. A writer that waits holds new readers back (writer preference), so a steady stream of
searches cannot starve writes; since writers keep their exclusive sections short, readers wait
microseconds, not the length of a write's disk work or a retrain (see `embedded.py`).

Not reentrant: a thread that holds it shared must not ask for it again, shared or exclusive.
"""

import threading
from contextlib import contextmanager


class ReadWriteLock:
    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer: int | None = None  # the ident of the thread writing
        self._writers_waiting = 0

    def acquire_shared(self, blocking: bool = True) -> bool:
        with self._cond:
            while self._writer is not None or self._writers_waiting:
                if not blocking:
                    return False
                self._cond.wait()
            self._readers += 1
            return True

    def release_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0 and self._writers_waiting:
                self._cond.notify_all()

    def acquire_exclusive(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer is not None or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = threading.get_ident()

    def release_exclusive(self) -> None:
        with self._cond:
            self._writer = None
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
