"""Non-interference, over gRPC: whatever tenant alice does, tenant bob's view is the same.

Two servers get the same admin setup and the same data of bob's; on one of them alice then does
random things (vectors with her own ids, payload fields that share names with bob's but not their
types, grants between her tenants, payload rewrites, cache entries, searches, failed calls), on
the other nothing. Bob's key then makes the same calls on both, through every RPC a tenant key
may use, and must get the same answers and the same errors, word for word: nothing of alice's
ids, fields, types, counts or cache entries reaches him. (His searches are exact, so that the
shared tree's layout, which alice's vectors shape, does not decide which neighbours he gets; the
tree is the paper's point, and what it may leak is approximate recall, not content.)

Bob's cache statistics are compared whole, byte sizes included: each server's cache runs on a
clock that stands still (`start`), because an entry's size holds its creation time's digits, and
the two worlds run at different moments whatever alice does. His entry ids are random (never a
function of how many entries alice stored): `bob_sees` reports only that they are 63-bit ids and
the tests check that his consecutive stores are not consecutive numbers. (An embedding model's
dimension is one across the cache, so a tenant storing another dimension under a model name
alice uses would learn it is in use; alice and bob use model "m" at one dimension here.)
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import curator
from curator_server.app import CuratorServer, ServerConfig
from tests.conftest import keys_file

DIM = 4
KEYS = {"alice": "nonint-alice-0123456789", "bob": "nonint-bob-0123456789", "admin": "nonint-admin-0123456789"}
BOB_IDS = np.arange(100, 140)
ALICE_BASE = 1_000
FIELDS = ["year", "lang", "tags", "price", "secret"]  # bob's payloads use the first four
ALICE_VALUES = st.one_of(st.text(max_size=5), st.integers(-5, 3000), st.floats(-10, 10, allow_nan=False),
                         st.booleans(), st.lists(st.text(max_size=3), max_size=3))
EXACT = 1_000_000  # ef: an exact search (ef >= 16 x the tenant's vectors, search.EXACT_EF)


def bob_payload(i: int) -> dict:
    return {"year": 2000 + i % 25, "lang": ("en", "de", "fr")[i % 3], "tags": [f"t{i % 4}", "all"],
            "price": float(i) / 4}


def start(tmp_path, name: str) -> CuratorServer:
    keys = keys_file(tmp_path / f"{name}.toml", {"alice": (KEYS["alice"], ["alice", "alice2"]),
                                                "bob": (KEYS["bob"], ["bob"]), "admin": (KEYS["admin"], None)})
    server = CuratorServer(ServerConfig(port=0, keys=keys)).start()
    server.db.cache._clock = lambda: 1_700_000_000.0  # the same creation time in both worlds (see above)
    with curator.connect(server.address, api_key=KEYS["admin"]) as admin:
        col = admin.create_collection("c", dim=DIM, branching=4, leaf_size=8, train_size=64)
        rng = np.random.default_rng(3)
        col.insert(BOB_IDS, rng.random((BOB_IDS.size, DIM), dtype=np.float32), tenant="bob",
                   payloads=[bob_payload(i) for i in BOB_IDS.tolist()])
    return server


ACTIONS = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 30),
              st.dictionaries(st.sampled_from(FIELDS), ALICE_VALUES, max_size=4)),
    st.tuples(st.just("grant"), st.integers(1, 30), st.none()),
    st.tuples(st.just("payloads"), st.integers(1, 30),
              st.dictionaries(st.sampled_from(FIELDS), ALICE_VALUES, max_size=4)),
    st.tuples(st.just("revoke"), st.integers(1, 30), st.none()),
    st.tuples(st.just("cache"), st.integers(1, 5), st.none()),
    st.tuples(st.just("search"), st.integers(1, 5), st.dictionaries(st.sampled_from(FIELDS), ALICE_VALUES,
                                                                     max_size=1)),
), max_size=12)


def alice_acts(address: str, actions, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with curator.connect(address, api_key=KEYS["alice"]) as db:
        col = db.collection("c")
        next_id = ALICE_BASE
        for kind, n, extra in actions:
            try:
                if kind == "insert":
                    ids = np.arange(next_id, next_id + n)
                    next_id += n
                    col.insert(ids, rng.random((n, DIM), dtype=np.float32), tenant="alice",
                               payloads=[extra] * n)
                elif kind == "grant":
                    col.grant(np.arange(ALICE_BASE, ALICE_BASE + n), tenant="alice2")
                elif kind == "payloads":
                    col.set_payloads(np.arange(ALICE_BASE, ALICE_BASE + n), extra, tenant="alice")
                elif kind == "revoke":
                    col.revoke(np.arange(ALICE_BASE, ALICE_BASE + n), tenant="alice2")
                elif kind == "cache":
                    for i in range(n):
                        db.cache.store("alice", f"alice asks {i}", f"alice's answer {i}",
                                       embedding=np.eye(8, dtype=np.float32)[i % 8], embedding_model="m")
                        for j in (i, i + 1):  # hits and misses in bob's category (the default)
                            db.cache.lookup("alice", f"alice asks {j}", embedding=np.eye(8, dtype=np.float32)[j % 8],
                                            embedding_model="m")
                else:
                    col.search(rng.random(DIM, dtype=np.float32), k=n, tenant="alice", filter=extra or None)
            except curator.CuratorError:
                pass  # alice's own failures are hers


def bob_sees(address: str, entry_ids: list | None = None) -> list:
    """Everything bob's key can ask, with the answer or the error, as comparable values; the
    entry ids his stores got are appended to `entry_ids` (random: compared apart)."""
    seen = []
    entry_ids = [] if entry_ids is None else entry_ids

    def stored(entry_id: int) -> bool:
        entry_ids.append(entry_id)
        return 0 <= entry_id < 1 << 63

    def ask(name, call):
        try:
            value = call()
        except curator.CuratorError as error:
            value = (type(error).__name__, str(error))
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], np.ndarray):
            value = (value[0].tolist(), np.round(value[1], 5).tolist(), getattr(value, "plan", None))
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        seen.append((name, value if isinstance(value, (list, tuple, dict, int, str, type(None))) else repr(value)))

    probe_ids = np.array([100, 101, 139, ALICE_BASE, ALICE_BASE + 5, 99_999])
    query = np.full(DIM, 0.5, np.float32)
    with curator.connect(address, api_key=KEYS["bob"]) as db:
        col = db.collection("c")
        for where in (None, {"year": 2010}, {"year": {"gte": 2010}}, {"lang": "en"}, {"tags": "t1"},
                      {"price": {"lt": 3.5}}, {"secret": 1}, {"year": "2010"}, {"lang": {"gt": 3}},
                      {"not": {"secret": {"exists": True}}}, {"nope": 1}, {"year": True}):
            ask(f"search {where}", lambda: col.search(query, k=7, tenant="bob", filter=where, ef=EXACT))
        ask("search_batch", lambda: col.search_batch(np.stack([query, query / 2]), k=5, tenants="bob", ef=EXACT))
        for name, call in [
            ("count", lambda: col.count(tenant="bob")),
            ("scroll", lambda: col.scroll(tenant="bob", limit=100)),
            ("tenants", col.tenants),
            ("stats", col.stats),
            ("list", db.list_collections),
            ("get", lambda: col.get(probe_ids)),
            ("get own", lambda: col.get(BOB_IDS[:3])),
            ("get_payloads", lambda: col.get_payloads(probe_ids)),
            ("get_payloads own", lambda: col.get_payloads(BOB_IDS[:3])),
            ("contains", lambda: col.contains(probe_ids)),
            ("visible_to", lambda: col.visible_to(probe_ids, tenant="bob")),
            ("owned", lambda: col.owned(probe_ids, tenant="bob")),
            ("tenants_of", lambda: col.tenants_of(ALICE_BASE)),
            ("tenants_of own", lambda: col.tenants_of(100)),
            ("grant alice's", lambda: col.grant([ALICE_BASE], tenant="bob")),
            ("revoke alice's", lambda: col.revoke([ALICE_BASE], tenant="bob")),
            ("set_payloads alice's", lambda: col.set_payloads([ALICE_BASE], {"x": 1})),
            ("schema", col.payload_schema),
            ("count all", col.count),
            ("search alice", lambda: col.search(query, k=3, tenant="alice")),
            ("insert", lambda: col.insert([500, 501], np.ones((2, DIM)), tenant="bob",
                                          payloads=[{"year": "now"}, {"secret": 2}])),
            ("upsert own", lambda: col.upsert([100], np.ones((1, DIM)), tenant="bob")),
            ("set_payloads own", lambda: col.set_payloads([101], {"lang": "xx"})),
            ("search after", lambda: col.search(query, k=10, tenant="bob", filter={"secret": 2}, ef=EXACT)),
            ("cache lookup", lambda: (lambda r: (r.hit, r.answer))(
                db.cache.lookup("bob", "alice asks 0", embedding=np.eye(8, dtype=np.float32)[0],
                                embedding_model="m"))),
            ("cache store", lambda: stored(db.cache.store("bob", "bob asks", "bob's answer",
                                                          embedding=np.eye(8, dtype=np.float32)[1],
                                                          embedding_model="m"))),
            ("cache store again", lambda: stored(db.cache.store("bob", "bob asks more", "bob's other answer",
                                                                embedding=np.eye(8, dtype=np.float32)[2],
                                                                embedding_model="m"))),
            ("cache hit", lambda: (lambda r: (r.hit, r.answer))(
                db.cache.lookup("bob", "bob asks", embedding=np.eye(8, dtype=np.float32)[1], embedding_model="m"))),
            ("cache stats", lambda: db.cache.stats("bob")),
            ("quota", lambda: db.quota("bob").usage),
        ]:
            ask(name, call)
    return seen


def assert_random_ids(quiet: list, busy: list) -> None:
    """Bob's two stores in each world: a global sequence would give consecutive numbers, offset
    by alice's stores in the busy world; random ids are far apart and differ between worlds."""
    assert len(quiet) == len(busy) == 2 and len(set(quiet + busy)) == 4
    assert abs(quiet[1] - quiet[0]) > 1 << 20 and abs(busy[1] - busy[0]) > 1 << 20


def test_bob_sees_the_same_with_and_without_alice(tmp_path):
    quiet, busy = start(tmp_path, "quiet"), start(tmp_path, "busy")
    try:
        alice_acts(busy.address, [("insert", 20, {"year": "old", "secret": 1, "lang": 3}), ("grant", 10, None),
                                  ("cache", 3, None), ("payloads", 5, {"price": "cheap", "tags": True})], 1)
        quiet_ids, busy_ids = [], []
        assert bob_sees(quiet.address, quiet_ids) == bob_sees(busy.address, busy_ids)
        assert_random_ids(quiet_ids, busy_ids)
    finally:
        quiet.stop(), busy.stop()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(actions=ACTIONS, seed=st.integers(0, 2**16))
def test_whatever_alice_does_bob_sees_the_same(tmp_path_factory, actions, seed):
    tmp = tmp_path_factory.mktemp("w")
    quiet, busy = start(tmp, "quiet"), start(tmp, "busy")
    try:
        alice_acts(busy.address, actions, seed)
        quiet_ids, busy_ids = [], []
        assert bob_sees(quiet.address, quiet_ids) == bob_sees(busy.address, busy_ids)
        assert_random_ids(quiet_ids, busy_ids)
    finally:
        quiet.stop(), busy.stop()
