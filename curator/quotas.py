"""Tenant quotas: how much one tenant may make the database hold, set by an admin, persisted, and
checked before a write changes anything.

A quota bounds four things, each summed over every collection of the database (a tenant name is
database-wide here) and, for entries, the semantic cache:

- `vectors`: the vectors the tenant may see (`count(tenant)` summed), a shared vector counting
  once for every tenant that sees it;
- `vector_bytes`: those vectors' float32 bytes (dim x 4 each);
- `payload_bytes`: the payloads on those vectors, each the length of its compact JSON as stored
  (`STORAGE.md`, `P` records; 0 for none);
- `cache_entries`: the tenant's entries in the semantic cache (where no quota sets it, the
  cache's own `tenant_entries` applies instead: `curator/cache/limits.py`; the cache checks it).

All follow what the tenant can see, not who wrote it: a payload belongs to its vector, and
tenants sharing a vector share it, so a grant brings the vector's payload along and a revoke
takes it away. That needs no bookkeeping per vector beyond what is stored (usage is derived
from the access lists and the payloads), and a tenant can always bring its own usage down by
itself (revoke, drop), which a writer-charged rule could not promise after a vector it paid for
was shared away.

A write that would take a tenant past a limit is refused whole, before it changes anything,
with ResourceExhaustedError naming the tenant, the limit, the usage it would reach and the
quota; a write exactly reaching a quota succeeds, and one that does not grow a usage (a delete,
a revoke, a payload made smaller) is never refused, even past a quota lowered below the usage.
Writes that grow several tenants (a payload written on a vector shared by two) are checked for
each. The check and the write happen under the grown tenants' locks (striped), so two writes of
one tenant in different collections cannot both pass on the same headroom.

Where quotas come from, per limit, first found: the tenant's own value set through the API, the
tenant's in the configuration (`[tenants.NAME]`), the default set through the API, the
configuration's `[default]`; none: unlimited. API-set values persist (`Q` records, see
`STORAGE.md`; in memory for ":memory:") and so outlive a configuration that changes.

Must never: take a collection's lock while holding a tenant's quota lock (writers take their
collection's first), or do any work per vector when no quota is set.
"""

import contextlib
import json
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from . import validate
from .errors import InvalidArgumentError, ResourceExhaustedError
from .storage import QUOTA  # Q + tenant name (UTF-8); Q alone is the default (STORAGE.md)

LIMITS = ("vectors", "vector_bytes", "payload_bytes", "cache_entries")
_HELD = {"vectors": "vectors", "vector_bytes": "bytes of vectors", "payload_bytes": "bytes of payloads",
         "cache_entries": "cache entries"}
MAX_LIMIT = (1 << 63) - 1  # a quota travels as int64


@dataclass(frozen=True)
class Quota:
    """A tenant's limits; None is unlimited."""

    vectors: int | None = None
    vector_bytes: int | None = None
    payload_bytes: int | None = None
    cache_entries: int | None = None

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Usage:
    """What a tenant holds, in the units of its quota."""

    vectors: int = 0
    vector_bytes: int = 0
    payload_bytes: int = 0
    cache_entries: int = 0


@dataclass(frozen=True)
class TenantQuota:
    """`db.quota(tenant)`: the tenant's effective quota and its usage (tenant None: the default
    quota, and no usage)."""

    tenant: str | None
    quota: Quota
    usage: Usage


def payload_bytes(payload: dict | None) -> int:
    """A payload's size as stored: its compact JSON (`storage.py` writes the same); 0 for none."""
    return len(json.dumps(payload, separators=(",", ":"))) if payload else 0


def checked_limits(changes: dict, where: str = "quota") -> dict:
    """Limit -> int >= 0 or None (unlimited); anything else is InvalidArgumentError naming it."""
    unknown = sorted(set(changes) - set(LIMITS))
    if unknown:
        raise InvalidArgumentError(f"{where}: unknown limit(s) {unknown}; allowed: {', '.join(LIMITS)}")
    checked = {}
    for limit, value in changes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                  or not 0 <= value <= MAX_LIMIT):
            raise InvalidArgumentError(f"{where}: {limit} must be an integer from 0 to {MAX_LIMIT}, or None "
                                       f"(unlimited); got {value!r}")
        checked[limit] = None if value is None else int(value)
    return checked


# -- the configuration: `curator serve --quotas FILE`, or curator.open(..., quotas={...}) ----------

def parse_config(document: dict, source: str = "quotas") -> dict:
    """{"default": {limit: n}, "tenants": {name: {limit: n}}} from a document of `[default]` and
    `[tenants.NAME]` tables, read strictly: unknown tables or limits, and values that are not
    integers >= 0, are refused naming the table and the field (a quota read leniently fails open)."""
    if not isinstance(document, dict):
        raise InvalidArgumentError(f"{source}: expected tables [default] and [tenants.NAME]")
    extra = sorted(set(document) - {"default", "tenants"})
    if extra:
        raise InvalidArgumentError(f"{source}: unknown top-level entries {extra}; only [default] and "
                                   "[tenants.NAME] tables are allowed")
    default = document.get("default", {})
    if not isinstance(default, dict):
        raise InvalidArgumentError(f"{source}: default must be a table ([default])")
    tenants = document.get("tenants", {})
    if not isinstance(tenants, dict) or not all(isinstance(t, dict) for t in tenants.values()):
        raise InvalidArgumentError(f"{source}: tenants must be tables ([tenants.NAME])")
    for name in tenants:
        validate.name(name, f"{source}: tenant name")
    return {"default": _config_limits(default, f"{source}: [default]"),
            "tenants": {name: _config_limits(values, f"{source}: [tenants.{name}]") for name, values in tenants.items()}}


def _config_limits(values: dict, where: str) -> dict:
    for limit, value in values.items():
        if value is None:  # TOML has no null; a dict given to open() must say unlimited by leaving it out
            raise InvalidArgumentError(f"{where}: {limit} = None; leave a limit out for unlimited")
    return checked_limits(values, where)


def read_config(path) -> dict:
    """The quotas of a TOML file (see `parse_config`)."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InvalidArgumentError(f"cannot read the quotas file {path}: {error}") from None
    return parse_config(document, str(path))


# -- the database's quotas ---------------------------------------------------------------------------

class Observer:
    """Where refusals are reported (the server counts them per limit); a no-op here."""

    def refused(self, limit: str) -> None: ...


Usages = Callable[[str, tuple], dict]  # (tenant, limits) -> {limit: what the tenant holds now}


class Quotas:
    """The quotas of one database: configured, set through the API (persisted), and the check."""

    STRIPES = 64  # tenant locks: a tenant's is STRIPES[hash % 64], so the map never grows with tenants

    def __init__(self, records, config: dict | None = None, observer: Observer | None = None):
        self._records = records
        config = parse_config(config or {}, "quotas")
        self._config_default, self._config_tenants = config["default"], config["tenants"]
        self._set: dict[str | None, dict] = {}  # tenant (None: the default) -> limits set through the API
        for key, value in records.scan_records(QUOTA):
            self._set[key[len(QUOTA):].decode() or None] = json.loads(value)
        self._lock = threading.Lock()
        self._stripes = [threading.Lock() for _ in range(self.STRIPES)]
        self.observer = observer or Observer()
        self._refresh()

    def _refresh(self) -> None:
        layers = [self._config_default, *self._config_tenants.values(), *self._set.values()]
        self.active = any(v is not None for layer in layers for v in layer.values())
        self.tracks_payloads = any(layer.get("payload_bytes") is not None for layer in layers)

    def of(self, tenant: str | None) -> Quota:
        """The effective quota of `tenant` (None: the default), limit by limit."""
        layers = (self._set.get(tenant), self._config_tenants.get(tenant)) if tenant is not None else ()
        layers += (self._set.get(None), self._config_default)
        values = {}
        for limit in LIMITS:
            for layer in layers:
                if layer is not None and limit in layer:
                    values[limit] = layer[limit]
                    break
        return Quota(**values)

    def set(self, tenant: str | None, changes: dict) -> Quota:
        """Set the given limits of `tenant` (None: the default for every tenant), each an int >= 0
        or None (unlimited, over any configured value); the others stay as they are. Persisted."""
        changes = checked_limits(changes)
        with self._lock:
            merged = {**self._set.get(tenant, {}), **changes}
            self._records.write_records([(quota_key(tenant), json.dumps(merged).encode())])
            self._set[tenant] = merged
            self._refresh()
        return self.of(tenant)

    def tenants(self) -> list[str]:
        """Tenants with a quota of their own (set through the API or configured), not the default's."""
        return sorted({t for t in self._set if t is not None} | set(self._config_tenants))

    @contextlib.contextmanager
    def charged(self, growth: dict[str, dict[str, int]], usage: Usages):
        """Check that no tenant passes a limit by growing as much as `growth` says (tenant -> limit ->
        amount), and hold the grown tenants' locks while the caller makes the write; refused whole
        with ResourceExhaustedError otherwise."""
        limited = []
        for tenant, grows in growth.items():
            quota = self.of(tenant)
            caps = {limit: (amount, getattr(quota, limit)) for limit, amount in grows.items()
                    if amount > 0 and getattr(quota, limit) is not None}
            if caps:
                limited.append((tenant, caps))
        if not limited:
            yield
            return
        with contextlib.ExitStack() as held:
            for stripe in sorted({hash(tenant) % self.STRIPES for tenant, _ in limited}):
                held.enter_context(self._stripes[stripe])
            for tenant, caps in limited:
                now = usage(tenant, tuple(caps))
                for limit, (amount, cap) in caps.items():
                    if now[limit] + amount > cap:
                        self.observer.refused(limit)
                        raise ResourceExhaustedError(
                            f"tenant {tenant!r} would hold {_number(now[limit] + amount)} {_HELD[limit]} "
                            f"({_number(now[limit])} now); its quota is {_number(cap)} ({limit})", limit=limit)
            yield


def quota_key(tenant: str | None) -> bytes:
    return QUOTA + (tenant or "").encode()


def _number(n: int) -> str:
    return f"{n:,}".replace(",", " ")


# -- one collection's part of the usage -------------------------------------------------------------

@dataclass(frozen=True)
class Touch:
    """What a write names, for the check before it and the payload tally after it.

    kind: "insert" (ids must be new), "upsert", "grant" and "payloads" (ids must exist), which
    may grow a usage; "shrink" (revoke, delete) and "drop" (a tenant dropped), which cannot."""

    kind: str
    ids: np.ndarray | None = None
    tenant: str | None = None  # the tenant granted the ids (insert, upsert, grant), dropped, or writing payloads
    payloads: list | None = None  # the new payloads, one per id (None: the ids keep theirs)


class CollectionUsage:
    """One collection's usage per tenant: vectors from the index's counts, payload bytes from a
    tally per tenant number kept while some quota limits payload bytes (`tally`, None otherwise).

    Reads of another collection's usage take no lock (a tenant's growth there waits for the
    tenant's lock, which the reader holds; a shrink only makes a read conservative)."""

    def __init__(self, collection, quotas: Quotas, usage: Usages):
        self.collection, self.quotas, self.usage = collection, quotas, usage
        self.tally: np.ndarray | None = None

    @property
    def index(self):
        return self.collection.index

    def vectors_of(self, tenant: str) -> int:
        index = self.index
        t = index.tenant_numbers.get(tenant)
        return 0 if t is None else int(index.tenancy.count[t])

    def payload_bytes_of(self, tenant: str) -> int:
        """From the tally while payload quotas are kept; otherwise counted now, beside other reads."""
        t = self.index.tenant_numbers.get(tenant)
        tally = self.tally
        if t is None:
            return 0
        if tally is not None and self.quotas.tracks_payloads:
            return int(tally[t]) if t < tally.size else 0

        def count():
            index = self.index
            if tenant not in index.tenant_numbers:
                return 0
            n = index.count(tenant)
            ids, _ = index.scroll(tenant, -1, max(n, 1))
            return sum(payload_bytes(p) for p in index.get_payloads(ids)) if ids.size else 0

        return self.collection._read(count)

    def rebuild(self) -> None:
        """The tally from every stored payload (the caller holds the collection's writes)."""
        index = self.index
        tally = np.zeros(len(index.tenant_names), np.int64)
        live = index.slot_ids[: index.n_slots]
        ids = live[live >= 0]
        if ids.size:
            sizes = _sizes(index, ids)
            held = np.flatnonzero(sizes)
            if held.size:
                tenants, origin = index.tenancy.access.gather(index.ids.lookup(ids[held]))
                np.add.at(tally, tenants, sizes[held][origin])
        tally += index.evicted_payload_bytes(tally.size)  # vectors only inactive tenants see (states.py)
        self.tally = tally

    @contextlib.contextmanager
    def writing(self, touch: Touch | None):
        """Around one write, its collection's writes held: refuse it if it would take a tenant
        past a limit, hold the grown tenants' locks while it runs, then bring the tally up to date."""
        quotas = self.quotas
        if touch is None or not quotas.active:
            yield
            return
        tracking = quotas.tracks_payloads
        before = self._before(touch) if tracking else None
        with quotas.charged(self._growth(touch, before), self.usage):
            yield
            if tracking:
                self._settle(touch, before)

    def _before(self, touch: Touch):
        index = self.index
        if touch.kind == "drop":
            return index.tenant_numbers.get(touch.tenant)
        slots = index.ids.lookup(touch.ids)
        known = slots >= 0
        old = np.zeros(touch.ids.size, np.int64)
        if known.any():
            old[known] = _sizes(index, touch.ids[known])
        tenants, origin = index.tenancy.access.gather(slots[known])
        return known, old, tenants, np.flatnonzero(known)[origin]

    def _growth(self, touch: Touch, before) -> dict[str, dict[str, int]]:
        """Tenant -> limit -> how much the write adds (0 where it would fail on its own: ids that
        must be new and exist, or must exist and do not; that error comes first)."""
        if touch.kind in ("shrink", "drop"):
            return {}
        index = self.index
        known = before[0] if before is not None else index.ids.lookup(touch.ids) >= 0
        if (touch.kind == "insert" and known.any()) or (touch.kind in ("grant", "payloads") and not known.all()):
            return {}
        growth: dict[str, dict[str, int]] = {}
        gained = None
        if touch.tenant is not None:
            gained = ~index.visible_to(touch.ids, touch.tenant)
            n = int(gained.sum())
            growth[touch.tenant] = {"vectors": n, "vector_bytes": n * self.collection.dim * 4}
        if before is not None:
            _, old, tenants, rows = before
            new = old if touch.payloads is None else np.fromiter(
                (payload_bytes(p) for p in touch.payloads), np.int64, len(touch.payloads))
            if tenants.size:
                per = np.bincount(tenants, weights=(new - old)[rows])
                for t in np.flatnonzero(per > 0).tolist():
                    name = index.tenant_names[t]
                    # A write naming its tenant (the owner, writing its own payloads) is checked
                    # against that tenant's quota only: another tenant's quota never refuses it,
                    # and its refusal never tells the writer who else sees the vector or how full
                    # they are. Their tallies still follow (`_settle`).
                    if touch.tenant is None or name == touch.tenant:
                        growth.setdefault(name, {})["payload_bytes"] = int(per[t])
            if gained is not None:
                mine = growth[touch.tenant]
                mine["payload_bytes"] = mine.get("payload_bytes", 0) + int(new[gained].sum())
        return growth

    def _settle(self, touch: Touch, before) -> None:
        """The tally after the write: its ids' payloads as now stored, on the tenants now seeing them."""
        index = self.index
        tally = self.tally
        if tally.size < len(index.tenant_names):
            tally = np.concatenate([tally, np.zeros(len(index.tenant_names) - tally.size, np.int64)])
        if touch.kind == "drop":
            if before is not None:
                tally[before] = 0
        elif not (touch.kind == "insert" and touch.payloads is None):  # new vectors without payloads: nothing
            _, old, tenants, rows = before
            np.subtract.at(tally, tenants, old[rows])
            slots = index.ids.lookup(touch.ids)
            known = slots >= 0
            sizes = np.zeros(touch.ids.size, np.int64)
            if known.any():
                sizes[known] = _sizes(index, touch.ids[known])
            tenants, origin = index.tenancy.access.gather(slots[known])
            np.add.at(tally, tenants, sizes[np.flatnonzero(known)[origin]])
        self.tally = tally


def _sizes(index, ids: np.ndarray) -> np.ndarray:
    return np.fromiter((payload_bytes(p) for p in index.get_payloads(ids)), np.int64, ids.size)
