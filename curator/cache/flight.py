"""Single flight: concurrent identical misses make one upstream call.

The first caller of a key runs the call; callers that arrive with the same key while it runs wait
for its outcome (the same answer, or the same error) instead of calling again.
"""

import threading
from concurrent.futures import Future


class SingleFlight:
    def __init__(self):
        self._lock = threading.Lock()
        self._flights: dict[object, Future] = {}

    def run(self, key, call) -> tuple[object, bool]:
        """(outcome of call(), whether this caller led the flight); a follower re-raises the leader's error."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = Future()
        if not leader:
            return flight.result(), False
        try:
            outcome = call()
        except BaseException as error:
            flight.set_exception(error)
            raise
        else:
            flight.set_result(outcome)
            return outcome, True
        finally:
            with self._lock:
                del self._flights[key]

    def in_flight(self) -> int:
        with self._lock:
            return len(self._flights)
