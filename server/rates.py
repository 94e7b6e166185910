"""Key rates: how many calls per second each API key may make, reads and writes apart.

A key may have `reads_per_second` and `writes_per_second` (fields of its `[[keys]]` entry, or set
by an admin through `Limits.SetKeyRates`, which persists in the data directory, `K` records, and
overrides the file) and a `burst`: each kind is a token bucket holding at most `burst` calls
(default: one second's worth, at least 1), refilled at the rate. A call that finds its bucket
empty is refused RESOURCE_EXHAUSTED before it reaches a worker (`Admission`), naming the limit,
with `retry-after` in its trailing metadata: the seconds until the bucket holds a call again.
Rates belong to a key's name: keys sharing one (an old and a new key while rotating) share its
buckets. In open mode there are no keys, so no rates.

Which calls count (`kind_of`, by the method's name): reads are the calls that only look (Get*,
Search, SearchBatch, Count, Scroll, Describe, List, Stats, State, Contains, VisibleTo, Owned,
TenantsOf, PayloadSchema, ServerInfo, the cache's Lookup, Classify, GetPolicy, CacheStats); every
other method of the contract is a write (Insert, SetPayloads, Grant, Revoke, Delete, Train, Create,
Drop, Deactivate, Activate, Offload, Snapshot, the cache's Store, Complete, Invalidate, Feedback, SetPolicy,
TrainClassifier), one call one token however many ids or queries it carries (`--max-batch` bounds
those). Opening a search stream counts nothing; each search on it counts as one read
(`SearchService` asks here per search), so a stream is no way around a rate. The Limits service
itself is not rate-limited, so an admin can always lift a limit; health and reflection need no key.

A check is O(1) under one short lock and never waits: it runs on grpcio's polling thread. The
clock is injectable, so tests step time instead of sleeping.

Must never: block, sleep, or read a request here.
"""

import json
import threading
import time

from curator.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from curator.storage import KEY_RATES  # K + key name (UTF-8) -> JSON of the rates set through the API

from .auth import RATE_FIELDS, KeyRing, Principal, rate_problem

READS, WRITES = "reads_per_second", "writes_per_second"
EPSILON = 1e-9  # a bucket refilled for exactly the time a token takes holds that token, whatever the rounding

_READ_METHODS = {
    "Collections": {"Describe", "List"},
    "Tenants": {"List", "Stats", "State"},
    "VectorsService": {"Get", "Count", "TenantsOf", "Contains", "VisibleTo", "Owned", "Scroll", "GetPayloads",
                       "PayloadSchema"},
    "Search": {"Search", "SearchBatch"},
    "Admin": {"ServerInfo"},
    "Cache": {"Lookup", "GetPolicy", "Classify", "CacheStats"},
    "TenantArchive": {"Export"},
}
_PER_SEARCH = {"SearchStream", "SearchGroups"}  # counted per search by the servicer, not per call
_EXEMPT_SERVICES = {"Limits"}
PACKAGE = "curator.v1"


def kind_of(method: str) -> str | None:
    """READS, WRITES, or None (not counted here) for a full method name "/curator.v1.Service/Method"."""
    service, _, name = method.lstrip("/").partition("/")
    package, _, service = service.rpartition(".")
    if package != PACKAGE or service in _EXEMPT_SERVICES or (service == "Search" and name in _PER_SEARCH):
        return None
    return READS if name in _READ_METHODS.get(service, ()) else WRITES


class TokenBucket:
    """`burst` tokens at most, `rate` more a second; a call takes one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, now

    def take(self, now: float, n: int = 1) -> float:
        """0.0 if n tokens were taken; else the seconds until n are there (nothing taken)."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens + EPSILON >= n:
            self.tokens = max(0.0, self.tokens - n)
            return 0.0
        return (n - self.tokens) / self.rate

    def give_back(self, n: int) -> None:
        self.tokens = min(self.burst, self.tokens + n)


class Observer:
    def refused(self, limit: str) -> None: ...


def checked_rates(changes: dict) -> dict:
    unknown = sorted(set(changes) - set(RATE_FIELDS))
    if unknown:
        raise InvalidArgumentError(f"unknown key rate(s) {unknown}; allowed: {', '.join(RATE_FIELDS)}")
    for field, value in changes.items():
        problem = rate_problem(field, value)
        if problem:
            raise InvalidArgumentError(f"{problem} (or None: unlimited; for burst, one second's worth)")
    return {field: None if value is None else float(value) for field, value in changes.items()}


class Rates:
    """Every key's rates and buckets (see the module's note)."""

    def __init__(self, keys: KeyRing, records, clock=time.monotonic, observer: Observer | None = None):
        self._records, self.clock = records, clock
        self.observer = observer or Observer()
        self._file = {p.name: {f: getattr(p, f) for f in RATE_FIELDS} for p in keys.principals()}
        self._set: dict[str, dict] = {}
        for key, value in records.scan_records(KEY_RATES):
            self._set[key[len(KEY_RATES):].decode()] = json.loads(value)
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._limits: dict[str, dict] = {}  # key name -> its effective rates, where it has any
        for name in self._file:
            self._resolve(name)

    def _resolve(self, name: str) -> None:
        rates = self.of(name)
        if rates[READS] is None and rates[WRITES] is None:
            self._limits.pop(name, None)
        else:
            self._limits[name] = rates
        for kind in (READS, WRITES):
            self._buckets.pop((name, kind), None)  # a new rate starts a full bucket

    def of(self, name: str) -> dict:
        """The effective rates of the key named `name` (None: unlimited; burst None: the default)."""
        if name not in self._file:
            raise NotFoundError(f"no key named {name!r}" + ("" if self._file else " (this server runs without keys)"))
        return {**self._file[name], **self._set.get(name, {})}

    def set(self, name: str, changes: dict) -> dict:
        """Set rates of the key named `name` (each a number, or None: unlimited / the default burst);
        the others stay. Persisted; overrides the keys file from then on."""
        changes = checked_rates(changes)
        self.of(name)  # an unknown name is NotFound
        with self._lock:
            merged = {**self._set.get(name, {}), **changes}
            self._records.write_records([(KEY_RATES + name.encode(), json.dumps(merged).encode())])
            self._set[name] = merged
            self._resolve(name)
        return self.of(name)

    def take(self, who: Principal, kind: str, n: int = 1) -> float:
        """Take n calls of `kind` from the key's bucket: 0.0, or the seconds until they are there."""
        rates = self._limits.get(who.name)
        if rates is None or rates[kind] is None:
            return 0.0
        with self._lock:
            bucket = self._buckets.get((who.name, kind))
            now = self.clock()
            if bucket is None:
                rate = rates[kind]
                bucket = self._buckets[(who.name, kind)] = TokenBucket(rate, rates["burst"] or max(1.0, rate), now)
            return bucket.take(now, n)

    def check(self, who: Principal, kind: str) -> None:
        """Take one call, or refuse it with ResourceExhaustedError naming the limit and when to retry."""
        wait = self.take(who, kind)
        if wait:
            raise self.refusal(who, kind, wait)

    def try_take(self, who: Principal, kind: str, n: int) -> bool:
        """Take n calls at once, or none (counting no refusal: the caller tries them one by one)."""
        return self.take(who, kind, n) == 0.0

    def give_back(self, who: Principal, kind: str, n: int) -> None:
        with self._lock:
            bucket = self._buckets.get((who.name, kind))
            if bucket is not None:
                bucket.give_back(n)

    def refusal(self, who: Principal, kind: str, wait: float) -> ResourceExhaustedError:
        self.observer.refused(kind)
        rates = self.of(who.name)
        burst = rates["burst"] or max(1.0, rates[kind])
        what = "reads" if kind == READS else "writes"
        return ResourceExhaustedError(
            f"key {who.name!r} is over its rate of {rates[kind]:g} {what} per second ({kind}, burst {burst:g}); "
            f"retry after {wait:.3f} s", limit=kind, retry_after=wait)


class Unlimited:
    """No rates (a servicer built without a server: tests, tools)."""

    def check(self, who, kind) -> None: ...

    def try_take(self, who, kind, n) -> bool:
        return True

    def give_back(self, who, kind, n) -> None: ...


UNLIMITED = Unlimited()
