"""NodeMap: one tenant's sub-tree as a sorted map node -> state, in two small numpy arrays.

A tenant's sub-tree has one entry per split node and per shortlist, a few to a few thousand.
Two sorted int32 arrays cost 8 bytes an entry, against ~110 for a Python dict, and answer a
whole batch of lookups with one searchsorted. Changes (a shortlist created, split, merged or
freed) are rare next to lookups and cost one small memmove.
"""

import numpy as np

ABSENT = -2  # the tenant has nothing under this node


class NodeMap:
    __slots__ = ("nodes", "states")

    def __init__(self):
        self.nodes = np.zeros(0, np.int32)
        self.states = np.zeros(0, np.int32)

    def __len__(self) -> int:
        return self.nodes.size

    def lookup(self, nodes: np.ndarray) -> np.ndarray:
        """State of each node, ABSENT where the tenant has nothing."""
        if self.nodes.size == 0:
            return np.full(np.shape(nodes), ABSENT, np.int32)
        at = np.minimum(np.searchsorted(self.nodes, nodes), self.nodes.size - 1)
        return np.where(self.nodes[at] == nodes, self.states[at], ABSENT)

    def get(self, node: int) -> int:
        at = int(np.searchsorted(self.nodes, node))
        if at < self.nodes.size and self.nodes[at] == node:
            return int(self.states[at])
        return ABSENT

    def set(self, node: int, state: int) -> None:
        at = int(np.searchsorted(self.nodes, node))
        if at < self.nodes.size and self.nodes[at] == node:
            self.states[at] = state
        else:
            self.nodes = np.insert(self.nodes, at, node)
            self.states = np.insert(self.states, at, state)

    def delete(self, node: int) -> None:
        at = int(np.searchsorted(self.nodes, node))
        assert at < self.nodes.size and self.nodes[at] == node, "deleting a node the tenant does not have"
        self.nodes = np.delete(self.nodes, at)
        self.states = np.delete(self.states, at)

    def with_state(self, state: int) -> np.ndarray:
        return self.nodes[self.states == state]

    def items(self):
        return zip(self.nodes.tolist(), self.states.tolist())

    @property
    def nbytes(self) -> int:
        return self.nodes.nbytes + self.states.nbytes + 2 * 112  # the arrays' own headers
