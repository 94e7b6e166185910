"""The engine's flat data structures against plain Python models."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from curator.idmap import IdMap
from curator.nodemap import ABSENT, NodeMap
from curator.slabs import Slabs

ID = st.integers(0, 2**63 - 1) | st.integers(0, 300)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["assign", "discard"]), st.lists(ID, max_size=40, unique=True))))
def test_idmap_matches_a_dict(steps):
    ids, model = IdMap(capacity=4), {}
    for step, (op, batch) in enumerate(steps):
        arr = np.array(batch, np.int64)
        if op == "assign":
            ids.assign(arr, np.full(arr.size, step))
            model.update({i: step for i in batch})
        else:
            ids.discard(arr)
            for i in batch:
                model.pop(i, None)
        assert len(ids) == len(model)
    probe = np.array(sorted(set(model) | {0, 1, 2**62}), np.int64)
    assert ids.lookup(probe).tolist() == [model.get(i, -1) for i in probe.tolist()]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.integers(0, 50)), max_size=300))
def test_slabs_match_lists(steps):
    slabs, model = Slabs(capacity=4), [[] for _ in range(8)]
    slabs.reserve(8)
    for add, l, v in steps:
        if add:
            slabs.append(np.array([l]), np.array([v]))
            model[l].append(v)
        else:
            found = slabs.remove(np.array([l]), np.array([v]))[0]
            assert found == (v in model[l])
            if found:
                model[l].remove(v)
    batch_lists = np.repeat(np.arange(8), 3)
    slabs.append(batch_lists, np.arange(24))  # a batch that grows several lists at once
    for l in range(8):
        model[l] += [3 * l, 3 * l + 1, 3 * l + 2]
    slabs.compact()
    for l in range(8):
        assert sorted(slabs.get(l).tolist()) == sorted(model[l])
    assert slabs.contains(np.array([0, 7]), np.array([0, 999])).tolist() == [True, False]


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(-1, 9), st.booleans()), max_size=100))
def test_nodemap_matches_a_dict(steps):
    nodes, model = NodeMap(), {}
    for node, state, delete in steps:
        if delete and node in model:
            nodes.delete(node)
            del model[node]
        elif not delete:
            nodes.set(node, state)
            model[node] = state
    probe = np.arange(32)
    assert nodes.lookup(probe).tolist() == [model.get(n, ABSENT) for n in range(32)]
    assert [nodes.get(n) for n in range(32)] == [model.get(n, ABSENT) for n in range(32)]
    assert sorted(nodes.with_state(-1).tolist()) == sorted(n for n, s in model.items() if s == -1)
