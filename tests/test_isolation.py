"""Isolation, as a stateful property: random inserts, grants, revokes, deletes and drops, checked
against a plain model after every step. A tenant never sees a vector it was not granted, always
gets min(k, visible) results, and the sub-tree invariants hold throughout. Tenants are made
inactive and woken at random (tenant states): every answer stays the model's, a call naming a
tenant wakes it, and exactly the vectors only inactive tenants see are out of memory. Tenants are
offloaded at random too: the vectors only they saw then leave the store for their archives, and
a call naming the tenant, or a write naming one of those ids, restores it."""

import shutil
import tempfile

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import curator
from curator_server.cluster.placement import Placement
from tests.conftest import SMALL_TREE, brute_force, clustered, opened

POOL = clustered(400, 5, seed=11)  # id i is always the vector POOL[i]
NAMES = ["t0", "t1", "t2", "t10", "t11"]  # over both shards of a two-shard cluster (placement.py)
TENANTS = st.sampled_from(NAMES)
IDS = st.lists(st.integers(0, POOL.shape[0] - 1), min_size=1, max_size=60, unique=True)


class Isolation(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.col = curator.open(":memory:").create_collection("c", dim=5, metric="l2", **SMALL_TREE)
        self._model()

    def _model(self):
        self.access: dict[int, set[str]] = {}  # the model: who may see each live id
        self.rows: dict[int, int] = {}  # and which POOL row is its vector
        self.owner: dict[int, str] = {}  # and which tenant owns it
        self.tenants: set[str] = set()
        self.numbers: dict[str, int] = {}  # tenants in the order they came into being
        self.created = 0  # numbers are never reused: a dropped tenant's name comes back as a new one
        self.asleep: set[str] = set()  # inactive tenants (offloaded ones too)
        self.archived: dict[str, set[int]] = {}  # offloaded tenants -> the ids their archives hold

    def _restored_by(self, ids):
        """A write naming ids some offloaded tenant's archive holds restores that tenant."""
        for tenant, held in list(self.archived.items()):
            if held & set(ids):
                self._restore(tenant)

    def _restore(self, tenant):
        self.archived.pop(tenant, None)
        self.asleep.discard(tenant)

    def _tenant(self, tenant):
        self._restore(tenant)  # a call that names a tenant wakes it
        self.tenants.add(tenant)
        if tenant not in self.numbers:
            self.numbers[tenant], self.created = self.created, self.created + 1

    def _let_go(self, i, tenant):
        """Tenant no longer sees i: if it owned i, the longest-standing tenant left owns it."""
        self.access[i].discard(tenant)
        if not self.access[i]:
            del self.access[i]
            self.owner.pop(i, None)
        elif self.owner[i] == tenant:
            self.owner[i] = min(self.access[i], key=self.numbers.__getitem__)

    def _live(self, ids):
        return [i for i in ids if i in self.access]

    @rule(ids=IDS, tenant=TENANTS)
    def insert(self, ids, tenant):
        new = [i for i in ids if i not in self.access]
        if not new:
            return
        self.col.insert(new, POOL[new], tenant=tenant)
        self._tenant(tenant)
        for i in new:
            self.access[i] = {tenant}
            self.rows[i] = i
            self.owner[i] = tenant

    @rule(ids=IDS, tenant=TENANTS, shift=st.integers(1, POOL.shape[0] - 1))
    def upsert(self, ids, tenant, shift):
        rows = [(i + shift) % POOL.shape[0] for i in ids]
        self._restored_by(ids)
        if any(self.owner.get(i, tenant) != tenant for i in ids):
            with pytest.raises(curator.PermissionDeniedError):  # only the owner overwrites
                self.col.upsert(ids, POOL[rows], tenant=tenant)
            self._restore(tenant)  # woken before it was refused
            return
        self.col.upsert(ids, POOL[rows], tenant=tenant)
        self._tenant(tenant)
        for i, row in zip(ids, rows):
            self.access.setdefault(i, set()).add(tenant)
            self.owner.setdefault(i, tenant)
            self.rows[i] = row

    @rule(ids=IDS, tenant=TENANTS)
    def grant(self, ids, tenant):
        live = self._live(ids)
        if not live:
            return
        fresh = sum(tenant not in self.access[i] for i in live)
        assert self.col.grant(live, tenant=tenant) == fresh
        self._restored_by(live)
        self._tenant(tenant)
        for i in live:
            self.access[i].add(tenant)

    @precondition(lambda self: self.tenants)
    @rule(ids=IDS, data=st.data())
    def revoke(self, ids, data):
        tenant = data.draw(st.sampled_from(sorted(self.tenants)))
        live = self._live(ids)
        if not live:
            return
        self.col.revoke(live, tenant=tenant)
        self._restore(tenant)
        self._restored_by(live)
        for i in live:
            if tenant in self.access[i]:
                self._let_go(i, tenant)

    @rule(ids=IDS)
    def delete(self, ids):
        live = self._live(ids)
        if not live:
            return
        self.col.delete(live)
        self._restored_by(live)
        for i in live:
            del self.access[i]
            del self.owner[i]

    @precondition(lambda self: self.tenants)
    @rule(data=st.data())
    def drop_tenant(self, data):
        tenant = data.draw(st.sampled_from(sorted(self.tenants)))
        self.col.drop_tenant(tenant)
        self.tenants.discard(tenant)
        self._restore(tenant)
        del self.numbers[tenant]
        for i in list(self.access):
            if tenant in self.access[i]:
                self._let_go(i, tenant)

    @precondition(lambda self: self.tenants)
    @rule(data=st.data(), k=st.integers(1, 40), ef=st.sampled_from([1, 8, 32, None, 100_000]),
          q=st.integers(0, POOL.shape[0] - 1))
    def search(self, data, k, ef, q):
        tenant = data.draw(st.sampled_from(sorted(self.tenants)))
        visible = np.array(sorted(i for i, who in self.access.items() if tenant in who), np.int64)
        query = POOL[q] + 0.1
        ids, dists = self.col.search(query, k=k, tenant=tenant, ef=ef)
        self._restore(tenant)
        assert ids.size == min(k, visible.size)
        assert set(ids.tolist()) <= set(visible.tolist()), "a tenant saw a vector it was not granted"
        assert np.unique(ids).size == ids.size and np.all(np.diff(dists) >= 0)
        if ef == 100_000 and visible.size:
            _, truth = brute_force(POOL[[self.rows[i] for i in visible.tolist()]], query, "l2", k)
            np.testing.assert_allclose(dists, truth, rtol=1e-4, atol=1e-4)
        batch_ids, _ = self.col.search_batch(np.stack([query, query]), k=k, tenants=[tenant, tenant], ef=ef)
        np.testing.assert_array_equal(batch_ids[0, : ids.size], ids)

    @precondition(lambda self: self.tenants)
    @rule(data=st.data())
    def deactivate(self, data):
        tenant = data.draw(st.sampled_from(sorted(self.tenants)))
        self.col.deactivate_tenant(tenant)
        self.asleep.add(tenant)

    @precondition(lambda self: self.asleep)
    @rule(data=st.data())
    def activate(self, data):
        tenant = data.draw(st.sampled_from(sorted(self.asleep)))
        self.col.activate_tenant(tenant)
        self._restore(tenant)

    @precondition(lambda self: self.tenants)
    @rule(data=st.data())
    def offload(self, data):
        tenant = data.draw(st.sampled_from(sorted(self.tenants)))
        self.col.offload_tenant(tenant)
        if tenant not in self.archived:
            self.archived[tenant] = {i for i, who in self.access.items() if who == {tenant}}
        self.asleep.add(tenant)
        # ids it alone sees are taken while it is away, for everyone
        held = sorted(self.archived[tenant])[:3]
        if held:
            other = "t0" if tenant != "t0" else "t1"
            with pytest.raises(curator.AlreadyExistsError):
                self.col.insert(held, POOL[held], tenant=other)
            assert self.col.tenant_state(tenant) == "offloaded"
            self._tenant(other) if other in self.tenants else None

    @invariant()
    def counts_and_subtrees_agree(self):
        assert self.col.count() == len(self.access)
        assert sorted(self.col.tenants()) == sorted(self.tenants)
        index = self.col.index
        for tenant in self.tenants:
            expected = sum(tenant in who for who in self.access.values())
            asleep = tenant in self.asleep
            state = "offloaded" if tenant in self.archived else "inactive" if asleep else "active"
            assert self.col.tenant_state(tenant) == state
            t = index.tenant_numbers[tenant]
            assert (int(index.tenancy.count[t]) if asleep else self.col.count(tenant=tenant)) == expected
            index.tenancy.check(t)
        archived = set().union(*self.archived.values())
        assert index.evicted == sum(who <= self.asleep and i not in archived for i, who in self.access.items())
        for tenant in self.tenants if self.access else ():
            ids = np.array(sorted(self.access), np.int64)
            expected = [self.owner[i] == tenant for i in ids.tolist()]
            assert self.col.owned(ids, tenant=tenant).tolist() == expected


TestIsolation = Isolation.TestCase
TestIsolation.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


class DurableIsolation(Isolation):
    """The same property on a data directory, closed and reopened at random steps: what a reopen
    brings back always equals the model."""

    def __init__(self):
        RuleBasedStateMachine.__init__(self)
        self.path = tempfile.mkdtemp(prefix="curator-prop-")
        self.db = curator.open(self.path, durability="none")
        self.col = self.db.create_collection("c", dim=5, metric="l2", **SMALL_TREE)
        self._model()

    @rule()
    def reopen(self):
        self.db.close()
        self.db = curator.open(self.path, durability="none")
        self.col = self.db.collection("c")

    @invariant()
    def stored_vectors_are_bit_exact(self):
        if self.access:
            ids = np.array(sorted(self.access), np.int64)
            np.testing.assert_array_equal(self.col.get(ids), POOL[[self.rows[i] for i in ids.tolist()]])
            self._restored_by(ids.tolist())  # the archives holding some came back to answer

    def teardown(self):
        self.db.close()
        shutil.rmtree(self.path, ignore_errors=True)


TestDurableIsolation = DurableIsolation.TestCase
TestDurableIsolation.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


@pytest.mark.cluster
def test_isolation_through_a_cluster_front(request, tmp_path):
    """The same property through a cluster front (conftest's session cluster: two shards of two
    copies), the five tenants spread over both shards: every answer, owner, count and state
    stays the model's, vectors are bit-exact. The engine's internals are out of reach there, so
    an inactive tenant's count is not asked (asking wakes it). Tenants are not offloaded: a
    shard archives an offloaded tenant's vectors that only tenants of other shards share, and a
    write naming them there restores it where one server would not (README, "A cluster on
    Ray"); tests/test_offloaded.py runs through a front."""
    assert sorted(Placement(2).shard_of(t) for t in NAMES) == [0, 0, 0, 1, 1]
    with opened(request, "cluster", tmp_path) as front:
        made = []

        class ThroughFront(Isolation):
            def __init__(self):
                RuleBasedStateMachine.__init__(self)
                if made:
                    front.drop_collection(made[-1])
                made.append(f"c{len(made)}")
                self.col = front.create_collection(made[-1], dim=5, metric="l2", **SMALL_TREE)
                self._model()

            def offload(self):  # not a rule here (see above)
                raise AssertionError("not drawn")

            @precondition(lambda self: self.access)
            @rule(data=st.data(), tenant=TENANTS)
            def grant_live(self, data, tenant):
                """Live ids to a tenant (of either shard): copies over shards, often."""
                live = sorted(self.access)
                self.grant(data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=8, unique=True)), tenant)

            @precondition(lambda self: self.access)
            @rule(data=st.data())
            def owner_lets_go(self, data):
                """An owner revokes some of its vectors (shared over shards, often)."""
                owner = data.draw(st.sampled_from(sorted(set(self.owner.values()))))
                mine = sorted(i for i, who in self.owner.items() if who == owner)
                ids = data.draw(st.lists(st.sampled_from(mine), min_size=1, max_size=8, unique=True))
                self.col.revoke(ids, tenant=owner)
                self._restore(owner)
                for i in ids:
                    self._let_go(i, owner)

            @invariant()
            def counts_and_subtrees_agree(self):
                assert self.col.count() == len(self.access)
                assert sorted(self.col.tenants()) == sorted(self.tenants)
                for tenant in sorted(self.tenants):
                    asleep = tenant in self.asleep
                    state = "offloaded" if tenant in self.archived else "inactive" if asleep else "active"
                    assert self.col.tenant_state(tenant) == state
                    if not asleep:
                        assert self.col.count(tenant=tenant) == sum(tenant in who for who in self.access.values())
                if self.access:
                    ids = np.array(sorted(self.access), np.int64)
                    assert self.col.owners(ids) == [self.owner[i] for i in ids.tolist()]
                    np.testing.assert_array_equal(self.col.get(ids), POOL[[self.rows[i] for i in ids.tolist()]])
                    self._restored_by(ids.tolist())

        run_state_machine_as_test(ThroughFront, settings=settings(max_examples=80, stateful_step_count=30,
                                                                  deadline=None))
