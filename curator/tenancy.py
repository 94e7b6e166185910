"""Per-tenant sub-trees of the shared clustering tree: presence, shortlists, split and merge.

For each tenant t, its own clustering tree is a sub-tree of the shared one, written down as a
map node -> state (`nodes[t]`, a `NodeMap`):
- SPLIT: t has more vectors under this node than one shortlist should hold, so they live in
  the node's children;
- a shortlist id: all of t's vectors under this node are in that one list;
- ABSENT: t has nothing under this node (presence is exact: no false positives, ever).
The SPLIT nodes form a tree from the root; every vector t may see is in exactly one shortlist,
at the first node on its leaf's path from the root that t has not split.

A shortlist over `split_limit` vectors at an inner node is pushed down to the node's children;
when the shortlists under a split node shrink to `split_limit // 2` in all they merge back up (the
gap keeps a list at the boundary from flapping). A (vector, tenant) pair costs one int32 in a
shortlist and one int32 in the vector's access list, both in `Slabs` pools.

An inactive tenant (`asleep`, see `states.py`) has no sub-tree: `sleep` drops it and `wake`
builds it again. It keeps its entries in the access lists of the vectors still in memory and its
`count` (every vector it sees, in memory or evicted); grants and removals that reach it change
only those.

Loops here run per shortlist or per tenant touched by a batch, never per vector; the per-vector
work is numpy or compiled `Slabs` edits. This module knows slots and tenant numbers only, not
user ids or tenant names.
"""

import copy

import numpy as np

from .nodemap import ABSENT, NodeMap
from .slabs import Slabs
from .tree import ClusteringTree

SPLIT = -1
_ASLEEP = NodeMap()  # the map of every inactive tenant: empty, shared, never edited (~280 bytes saved each)


class TenantSubtrees:
    def __init__(self, tree: ClusteringTree, split_limit: int = 128):
        self.tree = tree
        self.split_limit = split_limit
        self.merge_limit = split_limit // 2
        self.leaf_of = np.zeros(0, np.int32)  # slot -> leaf of the shared tree
        self.access = Slabs()  # slot -> tenants that may see it
        self._reset_subtrees(0)
        self.asleep = np.zeros(16, bool)  # tenant -> inactive: no sub-tree (see states.py)

    def _reset_subtrees(self, n_tenants: int) -> None:
        self.members = Slabs()  # shortlist -> slots
        self.directory = Slabs(n_tenants)  # tenant -> its shortlists
        self.shortlist_node = np.zeros(64, np.int32)
        self.shortlist_tenant = np.zeros(64, np.int32)
        self.n_shortlists = 0  # high-water mark of shortlist ids
        self._free_shortlists: list[int] = []
        asleep = getattr(self, "asleep", None)
        self.nodes: list[NodeMap] = [_ASLEEP if asleep is not None and asleep[t] else NodeMap()
                                     for t in range(n_tenants)]
        self.count = np.zeros(max(n_tenants, 16), np.int64)
        # Sub-trees not built yet (after `load`): tenant t's slots are pending[offsets[t]:offsets[t+1]]
        # until its first use, so that opening a database costs nothing per tenant.
        self._pending = np.zeros(0, np.int64)
        self._pending_offsets = np.zeros(1, np.int64)
        self._unbuilt = np.zeros(0, bool)

    # -- tenants -------------------------------------------------------------------------------

    @property
    def n_tenants(self) -> int:
        return len(self.nodes)

    @property
    def n_live_shortlists(self) -> int:
        return self.n_shortlists - len(self._free_shortlists)

    def load(self, n_tenants: int, pair_slots: np.ndarray, pair_tenants: np.ndarray,
             asleep: np.ndarray | None = None, counts: np.ndarray | None = None) -> None:
        """Take (slot, tenant) pairs from storage: access lists now, sub-trees on first use.
        `asleep`: the inactive tenants (never built); `counts`: every vector each tenant sees,
        evicted ones included (default: the pairs given)."""
        self.asleep = np.zeros(max(n_tenants, 16), bool)
        if asleep is not None:
            self.asleep[: asleep.size] = asleep
        self._reset_subtrees(n_tenants)
        self.access.append(pair_slots, pair_tenants)
        order = np.argsort(pair_tenants, kind="stable")
        self._pending = pair_slots[order]
        resident = np.bincount(pair_tenants, minlength=n_tenants)
        self._pending_offsets = np.concatenate([[0], np.cumsum(resident)])
        self.count[:n_tenants] = resident if counts is None else counts[:n_tenants]
        self._unbuilt = (resident > 0) & ~self.asleep[: resident.size]

    def pending(self, t: int) -> bool:
        """Whether tenant t's sub-tree is still to build (`ensure`)."""
        return t < self._unbuilt.size and bool(self._unbuilt[t])

    def any_pending(self, tenants: np.ndarray | None = None) -> bool:
        if tenants is None:
            return bool(self._unbuilt.any())
        tenants = tenants[tenants < self._unbuilt.size]
        return bool(self._unbuilt[tenants].any())

    def ensure(self, t: int) -> None:
        """Build tenant t's sub-tree if it is still pending from `load`."""
        if t < self._unbuilt.size and self._unbuilt[t]:
            self._unbuilt[t] = False
            mine = self._pending[self._pending_offsets[t] : self._pending_offsets[t + 1]]
            self._insert(np.sort(mine), t)

    def ensure_all(self, tenants: np.ndarray) -> None:
        for t in np.unique(tenants[tenants < self._unbuilt.size]).tolist():
            self.ensure(t)

    def add_tenant(self) -> int:
        t = len(self.nodes)
        self.nodes.append(NodeMap())
        self.directory.reserve(t + 1)
        if t >= self.count.shape[0]:
            self.count = np.concatenate([self.count, np.zeros(self.count.shape[0], np.int64)])
        if t >= self.asleep.shape[0]:
            self.asleep = np.concatenate([self.asleep, np.zeros(self.asleep.shape[0], bool)])
        return t

    def sleep(self, t: int) -> np.ndarray:
        """Drop tenant t's sub-tree (it goes inactive); returns the slots it sees. Its entries in
        the access lists and its count stay."""
        if self.pending(t):
            self._unbuilt[t] = False
            slots = self._pending[self._pending_offsets[t] : self._pending_offsets[t + 1]].copy()
        else:
            lists = self.directory.get(t).astype(np.int64)
            slots = self.members.gather(lists)[0]
            self.members.clear(lists)
            self.directory.clear(np.array([t]))
            self._free_shortlists.extend(lists.tolist())
        self.nodes[t] = _ASLEEP
        self.asleep[t] = True
        return slots

    def wake(self, t: int, slots: np.ndarray) -> None:
        """Build tenant t's sub-tree again over the slots it sees (each already has t in its
        access list): it is active from now on."""
        self.asleep[t] = False
        self.nodes[t] = NodeMap()
        if slots.size:
            self._insert(np.sort(slots), t)
        self.count[t] = slots.size

    def slots_of(self, t: int) -> np.ndarray:
        self.ensure(t)
        return self.members.gather(self.directory.get(t))[0]

    def tenants_of(self, slot: int) -> np.ndarray:
        return self.access.get(slot)

    # -- vectors ---------------------------------------------------------------------------------

    def place(self, slots: np.ndarray, leaves: np.ndarray) -> None:
        """Record the leaf of the shared tree that new (or re-routed) slots fall in."""
        need = int(slots.max()) + 1
        if need > self.leaf_of.shape[0]:
            grown = np.zeros(max(need, self.leaf_of.shape[0] * 3 // 2 + 16), np.int32)
            grown[: self.leaf_of.shape[0]] = self.leaf_of
            self.leaf_of = grown
        self.access.reserve(need)
        self.leaf_of[slots] = leaves

    def grant(self, slots: np.ndarray, t: int) -> np.ndarray:
        """Let tenant t see these slots; returns those it could not see before."""
        self.ensure(t)
        slots = slots[~self.access.contains(slots, np.full(slots.shape[0], t))]
        if slots.size:
            self.access.append(slots, np.full(slots.shape[0], t))
            if not self.asleep[t]:
                self._insert(slots, t)
            self.count[t] += slots.size
        return slots

    def revoke(self, slots: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Take these slots from tenant t; returns those it could see before, and of them
        those no tenant can see any more."""
        tenant = np.full(slots.shape[0], t)
        slots = slots[self.access.contains(slots, tenant)]
        if slots.size == 0:
            return slots, slots
        self._take(slots, t)
        self.access.remove(slots, tenant[: slots.size])
        return slots, slots[self.access.size[slots] == 0]

    def remove(self, slots: np.ndarray) -> None:
        """Take these slots from every tenant that can see them (the vectors are being deleted)."""
        tenants, origin = self.access.gather(slots)
        order = np.argsort(tenants, kind="stable")
        tenants, pair_slots = tenants[order], slots[origin[order]]
        bounds = np.flatnonzero(np.diff(tenants)) + 1
        for group in np.split(np.arange(tenants.size), bounds):
            if group.size:
                self._take(pair_slots[group], int(tenants[group[0]]))
        self.access.clear(slots)  # every tenant at once

    def _take(self, slots: np.ndarray, t: int) -> None:
        """Remove slots that tenant t can see from its sub-tree (not from their access lists)."""
        self.count[t] -= slots.size
        if self.asleep[t]:
            return  # no sub-tree: the count is all there is
        self.ensure(t)
        nodes = self._frontier(slots, t)
        touched, inverse = _groups(nodes)
        lists = self.nodes[t].lookup(touched).astype(np.int64)
        self.members.remove(lists[inverse], slots)
        self._tidy(t, touched)

    def drop(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Remove tenant t's sub-tree and grants; returns the slots it could see, and of them
        those no tenant can see any more."""
        assert not self.asleep[t], "an inactive tenant is woken before it is dropped"
        self.ensure(t)
        lists = self.directory.get(t).astype(np.int64)
        slots = self.members.gather(lists)[0]
        self.access.remove(slots, np.full(slots.shape[0], t))
        self.members.clear(lists)
        self.directory.clear(np.array([t]))
        self._free_shortlists.extend(lists.tolist())
        self.nodes[t] = NodeMap()
        self.count[t] = 0
        return slots, slots[self.access.size[slots] == 0]

    def rebuilt(self, tree: ClusteringTree, old_slots: np.ndarray, leaves: np.ndarray) -> "TenantSubtrees":
        """`rebuild` made as a new object, this one only read (searches may go on using it).
        Every sub-tree must be built (`ensure`)."""
        new = copy.copy(self)  # what rebuild replaces is shared until it does; the rest is copied
        new.access = copy.deepcopy(self.access)
        new.leaf_of = self.leaf_of.copy()
        new.asleep = self.asleep.copy()
        new.rebuild(tree, old_slots, leaves)
        return new

    def rebuild(self, tree: ClusteringTree, old_slots: np.ndarray, leaves: np.ndarray) -> None:
        """Re-derive every tenant's sub-tree over a new shared tree (after training).

        The live slots are renumbered: the vector in old_slots[i] is now in slot i, in leaves[i].
        """
        renumber = np.full(self.leaf_of.shape[0], -1, np.int64)
        renumber[old_slots] = np.arange(old_slots.size)
        # Sorted, so each shortlist lists its vectors in memory order: scans then read forwards.
        per_tenant = [None if self.asleep[t] else np.sort(renumber[self.slots_of(t)]) for t in range(self.n_tenants)]
        counts = self.count
        self.access.renumber(old_slots)
        self.tree = tree
        self.leaf_of[: old_slots.size] = leaves
        self._reset_subtrees(self.n_tenants)
        for t, mine in enumerate(per_tenant):
            if mine is None:
                self.count[t] = counts[t]  # inactive: no sub-tree, and its evicted vectors count too
            elif mine.size:
                self._insert(mine, t)
                self.count[t] = mine.size
        self.members.compact()
        self.access.compact()

    # -- the sub-tree ----------------------------------------------------------------------------

    def _frontier(self, slots: np.ndarray, t: int) -> np.ndarray:
        """For each slot, the first node on its leaf's path that tenant t has not split."""
        paths = self.tree.paths[self.leaf_of[slots]]
        split = self.nodes[t].with_state(SPLIT)
        if split.size == 0:
            return paths[:, 0]
        level = np.isin(paths, split).argmin(axis=1)  # first node not split (leaves never are)
        return paths[np.arange(paths.shape[0]), level]

    def _insert(self, slots: np.ndarray, t: int) -> None:
        nodes = self._frontier(slots, t)
        targets, inverse = _groups(nodes)
        lists = self.nodes[t].lookup(targets).astype(np.int64)
        for i in np.flatnonzero(lists == ABSENT).tolist():  # the tenant's first vectors under these nodes
            lists[i] = self._new_shortlist(t, int(targets[i]))
        self.members.append(lists[inverse], slots)
        full = (self.members.size[lists] > self.split_limit) & ~self.tree.is_leaf[targets]
        for l in lists[full].tolist():
            self._split(l)

    def _split(self, l: int) -> None:
        t, node = int(self.shortlist_tenant[l]), int(self.shortlist_node[l])
        slots = self.members.get(l).copy()
        self._free_shortlist(l)
        self.nodes[t].set(node, SPLIT)
        self._insert(slots, t)  # each slot now lands one level further down

    def _tidy(self, t: int, touched: np.ndarray) -> None:
        """After removals: free empty shortlists, then merge small sibling lists upwards."""
        lists = self.nodes[t].lookup(touched)
        for l in lists[(lists >= 0)].tolist():
            if self.members.size[l] == 0:
                self._free_shortlist(l)
        parents = {int(self.tree.parent[n]) for n in touched.tolist() if n != 0}
        for p in sorted(parents, key=lambda n: -self.tree.depth[n]):
            self._merge(t, p)

    def _merge(self, t: int, p: int) -> None:
        state = self.nodes[t]
        while state.get(p) == SPLIT:
            below = state.lookup(self.tree.children(p))
            if np.any(below == SPLIT):
                return
            lists = below[below >= 0].astype(np.int64)
            if self.members.size[lists].sum() > self.merge_limit:
                return
            slots = self.members.gather(lists)[0]
            for l in lists.tolist():
                self._free_shortlist(l)
            state.delete(p)
            if slots.size:
                self.members.append(np.full(slots.size, self._new_shortlist(t, p)), slots)
            if p == 0:
                return
            p = int(self.tree.parent[p])

    def _new_shortlist(self, t: int, node: int) -> int:
        if self._free_shortlists:
            l = self._free_shortlists.pop()
        else:
            l = self.n_shortlists
            self.n_shortlists += 1
            if l >= self.shortlist_node.shape[0]:
                self.shortlist_node = np.concatenate([self.shortlist_node, np.zeros_like(self.shortlist_node)])
                self.shortlist_tenant = np.concatenate([self.shortlist_tenant, np.zeros_like(self.shortlist_tenant)])
            self.members.reserve(l + 1)
        self.shortlist_node[l] = node
        self.shortlist_tenant[l] = t
        self.directory.append(np.array([t]), np.array([l]))
        self.nodes[t].set(node, l)
        return l

    def _free_shortlist(self, l: int) -> None:
        t, node = int(self.shortlist_tenant[l]), int(self.shortlist_node[l])
        self.members.clear(np.array([l]))
        self.directory.remove(np.array([t]), np.array([l]))
        self.nodes[t].delete(node)
        self._free_shortlists.append(l)

    # -- accounting and checks -----------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        maps = sum(m.nbytes for m in self.nodes if m is not _ASLEEP)
        return (
            self.members.nbytes + self.directory.nbytes + self.access.nbytes + self.leaf_of.nbytes
            + self.shortlist_node.nbytes + self.shortlist_tenant.nbytes + self.count.nbytes + self.asleep.nbytes + maps
        )

    def check(self, t: int) -> None:
        """Assert the invariants of tenant t's sub-tree (for tests; costs O(|t|))."""
        if self.asleep[t]:
            assert len(self.nodes[t]) == 0 and self.directory.size[t] == 0, "an inactive tenant with a sub-tree"
            return
        self.ensure(t)
        state, tree = self.nodes[t], self.tree
        lists = self.directory.get(t)
        assert sorted(lists.tolist()) == sorted(s for _, s in state.items() if s != SPLIT)
        assert np.all(np.diff(state.nodes) > 0) and np.all(state.states != ABSENT)
        for node, s in state.items():
            if node != 0:
                assert state.get(int(tree.parent[node])) == SPLIT, "a sub-tree node hangs below a non-split node"
            if s == SPLIT:
                below = state.lookup(tree.children(node))
                assert np.any(below != ABSENT), "a split node with nothing below"
                if np.all(below != SPLIT):
                    sizes = int(self.members.size[below[below >= 0]].sum())
                    assert sizes > self.merge_limit, "sibling shortlists small enough to merge"
            else:
                size = int(self.members.size[s])
                assert size > 0, "an empty shortlist"
                assert tree.is_leaf[node] or size <= self.split_limit, "an overfull inner shortlist"
                members = self.members.get(s)
                assert np.all(tree.paths[self.leaf_of[members], tree.depth[node]] == node), "a vector outside its node"
                assert np.all(self.access.contains(members, np.full(members.size, t))), "a member without access"
        slots = self.slots_of(t)
        assert np.unique(slots).size == slots.size == self.count[t], "a vector in two shortlists, or a bad count"


def _groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_inverse=True), without the sort for the common single value."""
    if values.size == 1:
        return values, np.zeros(1, np.intp)
    return np.unique(values, return_inverse=True)
