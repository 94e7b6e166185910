"""How often a tenant key may meet ids it cannot see.

Ids are unique across a collection, so an insert or upsert naming an id another tenant holds must
fail, and a failure is a bit of information: trying ids in batches and halving them, a tenant
could map which ids others use (measured on the landed code: all 100 of another tenant's ids in
0..1e6 in 237 calls). The server answers every such collision with one message that names no id
and no count (`TAKEN`), and gives each key a budget of them: `per_hour` collisions with ids it
cannot see, refilled evenly; while a key's budget is spent, its writes that name ids are refused
RESOURCE_EXHAUSTED before they are tried, whatever ids they name, so they answer nothing. An
application that meets other tenants' ids by accident should let the server choose ids or pick
them at random from the 63-bit range, where no budget is ever touched.

Must never: tell a key which ids collided, or how many.
"""

import threading
import time

from curator.errors import AlreadyExistsError, ResourceExhaustedError

TAKEN = ("some of these ids are taken in this collection (ids are unique across all its tenants); choose "
         "others, for example at random from the 63-bit range")


class ProbeBudget:
    def __init__(self, per_hour: float = 60.0, clock=time.monotonic):
        self.per_hour, self.clock = per_hour, clock
        self._left: dict[str, tuple[float, float]] = {}  # key name -> (collisions left, when counted)
        self._lock = threading.Lock()

    def _now_left(self, key: str) -> tuple[float, float]:
        """The key's collisions left now (refilled since last counted), and now."""
        left, then = self._left.get(key, (self.per_hour, self.clock()))
        now = self.clock()
        return min(self.per_hour, left + (now - then) * self.per_hour / 3600.0), now

    def check(self, key: str) -> None:
        """Refuse a write naming ids while the key's budget is spent."""
        if self.per_hour <= 0:
            return
        with self._lock:
            left, _ = self._now_left(key)
        if left < 1:
            wait = (1 - left) * 3600.0 / self.per_hour
            raise ResourceExhaustedError(
                f"this key met ids it cannot see more than {self.per_hour:g} times in the last hour; writes "
                f"naming ids resume in {wait:.0f} s (choose ids at random from the 63-bit range)",
                limit="id_collisions_per_hour", retry_after=wait)

    def taken(self, key: str) -> AlreadyExistsError:
        """Count one collision with ids the key cannot see; the error to answer it with."""
        with self._lock:
            left, now = self._now_left(key)
            self._left[key] = (left - 1, now)
        return AlreadyExistsError(TAKEN)
