"""The cluster as one Database: what the front's servicers call, routed to the shards.

A tenant's calls go to its shard alone. Whole-collection calls (a search or count without a
tenant, the tenants, collections) gather from every shard. A vector lives on its owner's
shard; granting it to a tenant of another shard stores a copy there, held by the owner as well
(so that only the owner may overwrite it, as on one server), and the owner's later writes to it
(upsert, payloads, revoke, drop) reach every copy. Ids stay unique over the whole collection:
an insert asks the other shards first, while it holds its ids (`IdLocks`).

A tenant whose home is another shard is a guest on a shard: it sees there exactly the copies it
owns. When the owner of a vector shared over several shards gives it up (revoke, drop), or
hands it over (`transfer`), every copy passes to the same tenant, the one one server would pick
(`_settle_owners`), a guest where its home is elsewhere."""

import contextlib
import dataclasses
import threading

import numpy as np

from curator import tenant_archive, validate
from curator.api import Collection, SearchResult
from curator.errors import (AlreadyExistsError, CuratorError, InvalidArgumentError, NotFoundError,
                            PermissionDeniedError)
from curator.quotas import TenantQuota


class ClusterDatabase:
    def __init__(self, cluster, local):
        self.cluster = cluster  # server/cluster/controller.py: the shards and the placement
        self.local = local  # the front's own embedded database: the semantic cache, key rates' records
        self._collections: dict[str, "ClusterCollection"] = {}
        self._lock = threading.Lock()

    # the front's own parts: the semantic cache answers at the front, key rates are the front's
    @property
    def cache(self):
        return self.local.cache

    @property
    def records(self):
        return self.local.records

    @property
    def quotas(self):
        return self.local.quotas

    def usage(self, tenant, *args):
        return self.local.usage(tenant, *args)

    def _everywhere(self, call):
        """`call(copy)` on every shard, in order; the first shard's answer."""
        answers = [shard.write(call) for shard in self.cluster.shards]
        return answers[0]

    def create_collection(self, name: str, dim: int, metric: str = "l2", **options):
        def create(copy):
            copy.forget(name)
            return copy.db.create_collection(name, dim, metric, **options)

        self._everywhere(create)
        return self.collection(name)

    def collection(self, name: str) -> "ClusterCollection":
        col = self._collections.get(name)
        if col is None:
            remote = self.cluster.shards[0].read(lambda copy: copy.collection(name))
            with self._lock:
                col = self._collections.setdefault(name, ClusterCollection(self.cluster, remote.name, remote.dim,
                                                                          remote.metric))
        return col

    def list_collections(self) -> list[str]:
        return self.cluster.shards[0].read(lambda copy: copy.db.list_collections())

    def drop_collection(self, name: str) -> None:
        def drop(copy):
            copy.forget(name)
            copy.db.drop_collection(name)

        with self._lock:
            self._collections.pop(name, None)
        self._everywhere(drop)

    def set_quota(self, tenant, **limits):
        """On every shard: the tenant's shard counts what it holds, as one server does; the
        others hold only copies it owns of vectors it sees at home too, so with the same limits
        they never refuse a copy its home took. And at the front, which holds the semantic
        cache and so counts cache entries. The answer is the tenant's shard's."""
        answers = [shard.write(lambda copy: copy.db.set_quota(tenant, **limits)) for shard in self.cluster.shards]
        self.local.set_quota(tenant, **limits)
        return answers[0 if tenant is None else self.cluster.placement.shard_of(tenant)]

    def quota(self, tenant):
        shard = self.cluster.shards[0] if tenant is None else self.cluster.shard_of(tenant)
        found = shard.read(lambda copy: copy.db.quota(tenant))
        if tenant is None:
            return found
        cache = self.local.usage(tenant, ("cache_entries",))["cache_entries"]
        return TenantQuota(found.tenant, found.quota, dataclasses.replace(found.usage, cache_entries=cache))

    # a tenant's archive: its rows from its shard, its cache entries from the front
    def export_tenant(self, tenant: str, path=None, *, collection: str | None, cache: bool = True):
        archive = self.cluster.shard_of(validate.name(tenant, "tenant")).read(
            lambda copy: copy.db.export_tenant(tenant, collection=collection, cache=False))
        if cache:
            archive.cache = tenant_archive.tenant_cache(self.local.cache, tenant)
        if path is not None:
            archive.save(path)
        return archive

    def import_tenant(self, source, *, tenant: str | None = None, collection: str | None = None,
                      cache: bool = True, skip_taken: bool = False):
        return tenant_archive.import_archive(self, source, tenant=tenant, collection=collection, cache=cache,
                                             skip_taken=skip_taken)

    def copy_tenant(self, tenant: str, to_tenant: str | None = None, *, collection: str | None,
                    to_collection: str | None = None, to=None, cache: bool = True, skip_taken: bool = False):
        return tenant_archive.copy(self, tenant, to_tenant, collection=collection, to_collection=to_collection,
                                   to=to, cache=cache, skip_taken=skip_taken)

    def snapshot(self, path) -> None:
        raise InvalidArgumentError("a cluster front keeps no vectors to snapshot: each shard has two copies on "
                                   "different nodes; back up a tenant with Export")

    def close(self) -> None:
        self.local.close()


def _union(held: list, n: int) -> np.ndarray:
    """Which of n ids any of the (shard, mask) pairs holds."""
    out = np.zeros(n, bool)
    for _, mask in held:
        out |= mask
    return out


def _all_known(ids: np.ndarray, held: np.ndarray) -> None:
    """NotFoundError, in the engine's words, for the ids no shard holds."""
    if not held.all():
        missing = ids[~held]
        raise NotFoundError(f"{missing.size} unknown id(s), e.g. {missing[:5].tolist()}")


def _subset(payloads, mask):
    if payloads is None or isinstance(payloads, dict):
        return payloads
    return [p for p, keep in zip(payloads, mask.tolist()) if keep]


class IdLocks:
    """A collection's ids in stripes (an id's stripe: id mod STRIPES), one lock each: a write
    holds the stripes of the ids it names, taken in order, while it checks other shards and
    writes, so two writes naming one id take turns (an id stays unique over the shards, a grant
    copies a vector once) while writes of other ids go on side by side."""

    STRIPES = 64

    def __init__(self):
        self._locks = [threading.Lock() for _ in range(self.STRIPES)]

    @contextlib.contextmanager
    def held(self, ids: np.ndarray | None):
        """The stripes of `ids` (None: every stripe, for a write whose ids are not known first)."""
        stripes = range(self.STRIPES) if ids is None else np.unique(np.mod(ids, self.STRIPES)).tolist()
        taken = []
        try:
            for stripe in stripes:
                self._locks[stripe].acquire()
                taken.append(stripe)
            yield
        finally:
            for stripe in reversed(taken):
                self._locks[stripe].release()


class ClusterCollection(Collection):
    def __init__(self, cluster, name: str, dim: int, metric: str):
        self.cluster, self.name, self.dim, self.metric = cluster, name, dim, metric
        self._ids = IdLocks()  # a write's checks on other shards and its writes: one step for its ids

    # -- routing ----------------------------------------------------------------------------------

    def _home(self, tenant: str):
        return self.cluster.shard_of(validate.name(tenant, "tenant"))

    def _read(self, shard, method: str, *args, **kwargs):
        return shard.read(lambda copy: getattr(copy.collection(self.name), method)(*args, **kwargs))

    def _tenant_read(self, of: str, method: str, *args, **kwargs):
        """A read of tenant `of`, on its shard."""
        return self._read(self._home(of), method, *args, **kwargs)

    def _write(self, shard, method: str, *args, **kwargs):
        return shard.write(lambda copy: getattr(copy.collection(self.name), method)(*args, **kwargs))

    def _held(self, ids: np.ndarray, shards, archived: bool = True) -> list[tuple[object, np.ndarray]]:
        """(shard, mask of `ids` it holds) for each of `shards` holding any (see `contains`)."""
        out = []
        for shard in shards:
            mask = np.asarray(self._read(shard, "contains", ids, archived=archived), bool)
            if mask.any():
                out.append((shard, mask))
        return out

    def _known(self, ids: np.ndarray, shards) -> None:
        """NotFoundError (the engine's words) for those of `ids` none of `shards` holds."""
        _all_known(ids, _union(self._held(ids, shards), ids.size))

    def _others(self, home):
        return [s for s in self.cluster.shards if s is not home]

    def _gather_rows(self, ids, *methods: str) -> list[list]:
        """For each of `methods` (get, get_payloads, owners), `method(ids)` answered row by row
        by a shard that holds each id (one pass of `contains` for them all); ids held nowhere get
        the engine's own error. A shard holding an id in memory answers first: a vector shared
        over shards may be in its owner's archive on the owner's home shard (offloaded, where no
        other tenant sees it) and in memory on the others, and, as on one server, reading it
        restores no one."""
        ids = validate.ids(ids)
        out, found = [[None] * ids.size for _ in methods], np.zeros(ids.size, bool)
        for archived in (False, True):
            todo = np.flatnonzero(~found)
            for shard, mask in self._held(ids[todo], self.cluster.shards, archived):
                rows = todo[mask]
                rows = rows[~found[rows]]
                if rows.size:
                    for answers, method in zip(out, methods):
                        for row, value in zip(rows.tolist(), self._read(shard, method, ids[rows])):
                            answers[row] = value
                    found[rows] = True
            if found.all():
                break
        _all_known(ids, found)
        return out

    # -- writes -----------------------------------------------------------------------------------

    def insert(self, ids, vectors, *, tenant: str, payloads=None) -> np.ndarray:
        home = self._home(tenant)
        vectors = np.asarray(vectors, dtype=np.float32)
        if ids is None:
            ids = validate.drawn_ids(vectors.shape[0] if vectors.ndim == 2 else 1)
        ids = validate.ids(ids)
        with self._ids.held(ids):
            with self._waking(tenant):
                self._unique(ids, home)
            self._write(home, "insert", ids, vectors, tenant=tenant, payloads=payloads)
        return ids

    def _unique(self, ids, home) -> None:
        for _, mask in self._held(ids, self._others(home)):
            taken = ids[mask]
            raise AlreadyExistsError(f"{taken.size} id(s) already exist, e.g. {taken[:5].tolist()}; delete them "
                                     "first or use new ids")

    def upsert(self, ids, vectors, *, tenant: str, payloads=None) -> None:
        home = self._home(tenant)
        ids, vectors = validate.ids(ids), np.asarray(vectors, dtype=np.float32)
        with self._ids.held(ids):
            elsewhere = self._held(ids, self._others(home))
            with self._waking(tenant):
                self._owns_elsewhere(ids, home, elsewhere)
            self._write(home, "upsert", ids, vectors, tenant=tenant, payloads=payloads)
            rows = vectors.reshape(-1, self.dim) if vectors.ndim else vectors
            for shard, mask in elsewhere:  # the owner's copies on other shards follow
                self._follow(shard, tenant, "upsert", ids[mask], rows[mask], payloads=_subset(payloads, mask))

    def _follow(self, shard, owner: str, method: str, ids: np.ndarray, *args, **kwargs) -> None:
        """The owner's write (its home shard took it) on its copies on `shard`. Refused there,
        the copies disagree on their owner (a front stopped half-way through a hand-over): they
        are handed to `owner`, whose home holds the truth for it, and the write made again, so
        that it never lands on one shard only."""
        try:
            self._write(shard, method, ids, *args, tenant=owner, **kwargs)
        except PermissionDeniedError:
            self._agree(shard, ids, owner)
            self._write(shard, method, ids, *args, tenant=owner, **kwargs)

    def _agree(self, shard, ids: np.ndarray, owner: str) -> None:
        """Copies of `ids` on `shard` that name another owner are handed to `owner`."""
        wrong = ~np.asarray(self._read(shard, "owned", ids, tenant=owner), bool)
        if wrong.any():
            named = np.array(self._read(shard, "owners", ids[wrong]), object)
            for previous in np.unique(named).tolist():
                self._hand_over(shard, ids[wrong][named == previous], owner, (previous,))

    def _owns_elsewhere(self, ids, home, elsewhere) -> None:
        """PermissionDeniedError for ids held only on other shards than the writer's home: no
        copy there, so its tenant sees them not, and owns them not."""
        if not elsewhere:
            return
        here = np.asarray(self._read(home, "contains", ids), bool)
        for _, mask in elsewhere:
            if (mask & ~here).any():
                foreign = ids[mask & ~here]
                raise PermissionDeniedError(f"{foreign.size} id(s) belong to other tenants, e.g. "
                                            f"{foreign[:5].tolist()}; a tenant may overwrite only its own")

    @contextlib.contextmanager
    def _waking(self, *tenants: str | None):
        """Around the front's own checks of a write: one server wakes the tenants a write names
        before it refuses the write (a call naming a tenant wakes it), so a refusal here wakes
        them on their home shards too."""
        try:
            yield
        except CuratorError:
            for tenant in tenants:
                if tenant is not None:
                    self._wake(tenant)
            raise

    def _wake(self, tenant: str, missing_ok: bool = True) -> None:
        """Wake `tenant` on its home shard if it sleeps (unknown: nothing, or NotFoundError)."""
        try:
            state = self._tenant_read(tenant, "tenant_state", tenant)
        except NotFoundError:
            if missing_ok:
                return
            raise
        if state != "active":
            self._write(self._home(tenant), "activate_tenant", tenant)

    def set_payloads(self, ids, payloads, *, tenant=None) -> None:
        ids = validate.ids(ids)
        with self._ids.held(ids):
            if tenant is not None:
                home = self._home(tenant)
                self._write(home, "set_payloads", ids, payloads, tenant=tenant)
                for shard, mask in self._held(ids, self._others(home)):
                    self._follow(shard, tenant, "set_payloads", ids[mask], _subset(payloads, mask))
                return
            held = self._held(ids, self.cluster.shards)
            _all_known(ids, _union(held, ids.size))
            for shard, mask in held:
                self._write(shard, "set_payloads", ids[mask], _subset(payloads, mask))

    def grant(self, ids, *, tenant: str) -> int:
        home = self._home(tenant)
        ids = validate.ids(ids)
        with self._ids.held(ids):
            missing = ~np.asarray(self._read(home, "contains", ids), bool)
            if missing.any():
                with self._waking(tenant):
                    self._known(ids[missing], self._others(home))
                self._copy(ids[missing], home)
            return self._write(home, "grant", ids, tenant=tenant)

    def _copy(self, ids: np.ndarray, home) -> None:
        """Store on `home` a copy of each of `ids` (held elsewhere), owned there by its owner."""
        vectors, payloads, owners = self._gather_rows(ids, "get", "get_payloads", "owners")
        vectors, owners = np.asarray(vectors, np.float32).reshape(ids.size, self.dim), np.array(owners, object)
        for owner in np.unique(owners).tolist():
            rows = owners == owner
            self._write(home, "insert", ids[rows], vectors[rows], tenant=owner, payloads=_subset(payloads, rows))

    def revoke(self, ids, *, tenant: str) -> None:
        home = self._home(tenant)
        ids = validate.ids(ids)
        with self._ids.held(ids):
            here = np.asarray(self._read(home, "contains", ids), bool)
            if not here.all():  # ids the tenant cannot see are no-ops, as on one server; unknown ones are not
                with self._waking(tenant):
                    self._known(ids[~here], self._others(home))
            if here.any():
                self._write(home, "revoke", ids[here], tenant=tenant)
            else:  # still a call naming the tenant: it wakes (unknown: NotFoundError)
                self._wake(tenant, missing_ok=False)
            self._give_up_copies(ids, tenant, home)

    def _give_up_copies(self, ids: np.ndarray, tenant: str, home) -> None:
        """The copies of `ids` the tenant holds on other shards (it owns them, or owned them
        when a front died half-way through an earlier revoke) are given up there too, and every
        copy passes to the tenant one server picks."""
        given_up = []
        for shard, mask in self._held(ids, self._others(home)):
            seen = np.asarray(self._read(shard, "visible_to", ids[mask], tenant=tenant), bool)
            if seen.any():
                self._write(shard, "revoke", ids[mask][seen], tenant=tenant)
                given_up.append(ids[mask][seen])
        if given_up:
            self._settle_owners(np.unique(np.concatenate(given_up)))

    def _settle_owners(self, ids: np.ndarray) -> None:
        """After the owner of `ids` gave them up on every shard (revoke, drop), each shard holding
        them handed them to its own longest-standing tenant seeing them; one server hands each
        to the longest-standing over the whole collection. That tenant is its home shard's pick
        (a tenant comes into being on its home shard, before any copy names it elsewhere), so it
        is the oldest of the shards' picks, compared by when each came into being at home; the
        copies the others picked for are handed to it."""
        held = self._held(ids, self.cluster.shards)
        if len(held) < 2:
            return  # on one shard at most: its pick is the collection's
        picks = np.full((len(held), ids.size), "", object)
        for row, (shard, mask) in enumerate(held):
            picks[row, mask] = self._read(shard, "owners", ids[mask])
        names, inverse = np.unique(picks, return_inverse=True)  # "": not held on that shard
        oldest_first = sorted((t for t in names.tolist() if t),
                              key=lambda t: (self._tenant_read(t, "tenant_since", t), t))
        place = {t: r for r, t in enumerate(oldest_first)}
        rank = np.array([place.get(t, len(oldest_first)) for t in names.tolist()])
        winners = np.array(oldest_first + [""], object)[rank[inverse.reshape(picks.shape)].min(axis=0)]
        for row, (shard, mask) in enumerate(held):
            moved = mask & (picks[row] != winners)
            for winner in np.unique(winners[moved]).tolist():
                self._hand_over(shard, ids[moved & (winners == winner)], winner, ())

    def _hand_over(self, shard, ids: np.ndarray, to: str, previous: tuple[str, ...]) -> None:
        """Make `to` the owner of `ids` on `shard`, as a guest there if its home is elsewhere (a
        guest sees on a shard exactly the copies it owns, which `count` relies on): `previous`
        owners that are guests there give their copies up."""
        if self.cluster.shard_of(to) is not shard:
            self._write(shard, "grant", ids, tenant=to)
        self._write(shard, "transfer", ids, to=to)
        for owner in previous:
            if owner != to and self.cluster.shard_of(owner) is not shard:
                self._write(shard, "revoke", ids, tenant=owner)

    def transfer(self, ids, *, to: str, tenant: str | None = None) -> None:
        ids, home = validate.ids(ids), self._home(validate.name(to, "to"))
        with self._ids.held(ids):
            with self._waking(to, tenant):
                held = self._held(ids, self.cluster.shards)
                _all_known(ids, _union(held, ids.size))
                self._read(home, "tenant_since", to)  # an unknown `to`: the engine's NotFoundError
                owners = np.array(self.owners(ids), object)
                if tenant is not None and (owners != tenant).any():
                    others = int((owners != tenant).sum())
                    raise PermissionDeniedError(f"{others} of these vectors are owned by another tenant: only a "
                                                f"vector's owner (the tenant that inserted it) may hand it over; "
                                                f"{tenant!r} may not")
                unseen = ~np.asarray(self._read(home, "visible_to", ids, tenant=to), bool)
                if unseen.any():
                    raise InvalidArgumentError(f"{int(unseen.sum())} of these vectors are not granted to {to!r}, "
                                               f"e.g. {ids[unseen][:5].tolist()}: a vector passes only to a tenant "
                                               "that sees it")
            for shard, mask in held:
                for owner in np.unique(owners[mask]).tolist():
                    rows = mask & (owners == owner)
                    self._hand_over(shard, ids[rows], to, (owner,))
            if tenant is not None:
                self._wake(tenant)  # named by the call, as on one server

    def delete(self, ids) -> None:
        ids = validate.ids(ids)
        with self._ids.held(ids):
            held = self._held(ids, self.cluster.shards)
            _all_known(ids, _union(held, ids.size))
            for shard, mask in held:
                self._write(shard, "delete", ids[mask])

    # -- reads ------------------------------------------------------------------------------------

    def owned(self, ids, *, tenant: str) -> np.ndarray:
        return self._tenant_read(tenant, "owned", ids, tenant=tenant)

    def owners(self, ids) -> list[str]:
        return self._gather_rows(ids, "owners")[0]

    def get_payloads(self, ids) -> list[dict]:
        return self._gather_rows(ids, "get_payloads")[0]

    def payload_schema(self) -> dict[str, str]:
        schema = {}
        for shard in self.cluster.shards:
            schema.update(self._read(shard, "payload_schema"))
        return dict(sorted(schema.items()))

    def get(self, ids) -> np.ndarray:
        (rows,) = self._gather_rows(ids, "get")
        return np.asarray(rows, np.float32).reshape(len(rows), self.dim)

    def tenants_of(self, id_: int) -> list[str]:
        (id_,) = validate.ids([id_])
        ids = np.array([id_], np.int64)  # an archived copy's tenants (its owner alone) are on the others too
        held = self._held(ids, self.cluster.shards, archived=False) or self._held(ids, self.cluster.shards)
        if not held:
            return self._read(self.cluster.shards[0], "tenants_of", id_)  # the engine's NotFoundError
        return sorted({t for shard, _ in held for t in self._read(shard, "tenants_of", id_)})

    def contains(self, ids, *, archived: bool = True) -> np.ndarray:
        ids = validate.ids(ids)
        out = np.zeros(ids.size, bool)
        for shard in self.cluster.shards:
            out |= np.asarray(self._read(shard, "contains", ids, archived=archived), bool)
        return out

    def visible_to(self, ids, *, tenant: str) -> np.ndarray:
        return self._tenant_read(tenant, "visible_to", ids, tenant=tenant)

    def count(self, tenant: str | None = None) -> int:
        if tenant is not None:
            return self._tenant_read(tenant, "count", tenant)
        total = 0
        for shard in self.cluster.shards:  # less the copies: on a shard, its tenants from elsewhere own them
            total += self._read(shard, "count")
            for guest in self._read(shard, "tenants"):
                if self.cluster.shard_of(guest) is not shard:
                    total -= self._read(shard, "count", guest)
        return total

    def scroll(self, *, tenant: str | None = None, after_id: int = -1, limit: int = 1000):
        if tenant is not None:
            return self._tenant_read(tenant, "scroll", tenant=tenant, after_id=after_id, limit=limit)
        pages = [self._read(shard, "scroll", after_id=after_id, limit=limit) for shard in self.cluster.shards]
        ids = np.unique(np.concatenate([page for page, _ in pages]))
        more = ids.size > limit or any(after != -1 for _, after in pages)
        page = ids[:limit]
        return page, int(page[-1]) if more and page.size else -1

    def tenants(self) -> list[str]:
        return sorted({t for shard in self.cluster.shards for t in self._read(shard, "tenants")})

    def create_tenant(self, tenant: str) -> None:
        self._write(self._home(tenant), "create_tenant", tenant)

    def drop_tenant(self, tenant: str) -> None:
        home = self._home(tenant)
        with self._ids.held(None):
            guest_at = [shard for shard in self._others(home) if tenant in self._read(shard, "tenants")]
            shared = [self._guest_ids(shard, tenant) for shard in guest_at]  # its copies: what it owns there
            try:
                self._write(home, "drop_tenant", tenant)
                unknown = None
            except NotFoundError as error:  # unknown; if it is a guest somewhere, a front that died
                if not guest_at:  # half-way through its drop left it there: the drop is finished
                    raise
                unknown = error
            for shard in guest_at:
                self._write(shard, "drop_tenant", tenant)
            copies = np.unique(np.concatenate(shared)) if shared else np.zeros(0, np.int64)
            if copies.size:  # (a tenant may be a guest somewhere with no copies left)
                self._settle_owners(copies)
            if unknown is not None:
                raise unknown

    def _guest_ids(self, shard, tenant: str) -> np.ndarray:
        """The ids `tenant` sees on a shard that is not its home (the copies it owns there)."""
        pages, after = [], -1
        while True:
            page, after = self._read(shard, "scroll", tenant=tenant, after_id=after, limit=validate.MAX_SCROLL)
            pages.append(page)
            if after == -1:
                return np.concatenate(pages)

    def tenant_since(self, tenant: str) -> int:
        return self._tenant_read(tenant, "tenant_since", tenant)

    def tenant_state(self, tenant: str) -> str:
        return self._tenant_read(tenant, "tenant_state", tenant)

    def deactivate_tenant(self, tenant: str) -> None:
        self._write(self._home(tenant), "deactivate_tenant", tenant)

    def activate_tenant(self, tenant: str) -> None:
        self._write(self._home(tenant), "activate_tenant", tenant)

    def offload_tenant(self, tenant: str) -> None:
        self._write(self._home(tenant), "offload_tenant", tenant)

    def search(self, query, k: int = 10, *, tenant: str | None = None, filter: dict | None = None,
               ef: int | None = None) -> SearchResult:
        if tenant is not None:
            return self._tenant_read(tenant, "search", query, k, tenant=tenant, filter=filter, ef=ef)
        found = self._everyone("search", query, k, filter=filter, ef=ef)
        ids, distances = _merge([f.ids[None] for f in found], [f.distances[None] for f in found], k)
        kept = ids[0] >= 0  # as one engine answers: as many as found
        return SearchResult(ids[0][kept], distances[0][kept], max(found, key=lambda f: f.ids.size).plan)

    def _everyone(self, method: str, *args, **kwargs) -> list[SearchResult]:
        """A search of every vector: `method` on every shard. A shard that refuses the filter
        (it names a field none of the shard's vectors holds, or compares with a type they do not
        have) holds nothing it could match: the refusal stands only if every shard refuses."""
        found, refused = [], []
        for shard in self.cluster.shards:
            try:
                found.append(self._read(shard, method, *args, **kwargs))
            except InvalidArgumentError as error:
                refused.append((shard, error))
        if not found:  # in the words of the shard with the most vectors (it names the fields it knows)
            raise max(refused, key=lambda pair: self._read(pair[0], "count"))[1]
        return found

    def search_now(self, *args, **kwargs):
        return None  # a call to a shard may wait: never on the polling thread

    def search_batch(self, queries, k: int = 10, *, tenants=None, filter: dict | None = None,
                     ef: int | None = None) -> SearchResult:
        """Each query on its tenant's shard, those of no tenant (None) on every shard."""
        if isinstance(tenants, str):
            return self._tenant_read(tenants, "search_batch", queries, k, tenants=tenants, filter=filter, ef=ef)
        queries = np.asarray(queries, dtype=np.float32)
        if tenants is None:
            return self._search_everyone(queries, k, filter, ef)
        tenants = list(tenants)
        if len(tenants) != len(queries):
            raise InvalidArgumentError(f"{len(queries)} queries but {len(tenants)} tenants; give one per query")
        homes = [None if t is None else self._home(t) for t in tenants]
        ids = np.full((len(queries), k), -1, np.int64)
        distances = np.full((len(queries), k), np.inf, np.float32)
        plans = [""] * len(queries)
        for home in dict.fromkeys(homes):
            rows = np.array([h is home for h in homes])
            if home is None:
                found = self._search_everyone(queries[rows], k, filter, ef)
            else:
                found = self._read(home, "search_batch", queries[rows], k, filter=filter, ef=ef,
                                   tenants=[t for t, keep in zip(tenants, rows.tolist()) if keep])
            ids[rows], distances[rows] = found.ids, found.distances
            for row, plan in zip(np.flatnonzero(rows).tolist(), found.plan):
                plans[row] = plan
        return SearchResult(ids, distances, plans)

    def _search_everyone(self, queries: np.ndarray, k: int, filter, ef) -> SearchResult:
        found = self._everyone("search_batch", queries, k, filter=filter, ef=ef)
        ids, distances = _merge([f.ids for f in found], [f.distances for f in found], k)
        most = np.stack([(f.ids >= 0).sum(axis=1) for f in found]).argmax(axis=0)  # each query's plan: the
        plans = [found[shard].plan[q] for q, shard in enumerate(most.tolist())]  # shard that found the most
        return SearchResult(ids, distances, plans)

    def train(self, sample=None) -> None:
        for shard in self.cluster.shards:
            self._write(shard, "train", sample)

    def stats(self) -> dict:
        per_shard = [self._read(shard, "stats") for shard in self.cluster.shards]
        out = dict(per_shard[0])
        for key, value in out.items():
            if isinstance(value, int) and not isinstance(value, bool):
                out[key] = sum(s.get(key, 0) for s in per_shard)
        out["vectors"] = self.count()  # the rest are sums over the shards: copies count on each
        return out


def _merge(ids: list[np.ndarray], distances: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best over the shards' answers, a copy's id once."""
    ids, distances = np.concatenate(ids, axis=1), np.concatenate(distances, axis=1).astype(np.float32)
    order = np.argsort(distances, axis=1, kind="stable")
    ids, distances = np.take_along_axis(ids, order, 1), np.take_along_axis(distances, order, 1)
    out_ids = np.full((ids.shape[0], k), -1, np.int64)
    out_d = np.full((ids.shape[0], k), np.inf, np.float32)
    for row in range(ids.shape[0]):  # per query, not per vector: dedupe copies of shared vectors
        _, first = np.unique(ids[row], return_index=True)
        keep = np.sort(first[ids[row][first] != -1])[:k]
        out_ids[row, : keep.size], out_d[row, : keep.size] = ids[row][keep], distances[row][keep]
    return out_ids, out_d
