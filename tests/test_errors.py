"""Every bad input gets its typed error, with a message that says what is allowed, and changes nothing."""

import numpy as np
import pytest

import curator
from curator import AlreadyExistsError, InvalidArgumentError, NotFoundError

pytestmark = pytest.mark.cluster


@pytest.fixture
def col(db):
    c = db.create_collection("c", dim=4, metric="cosine")
    c.insert(np.arange(10), np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), tenant="a")
    return c


def _q(*values):
    return np.array(values, np.float32)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda c: c.insert([100], np.ones((1, 5)), tenant="a"), InvalidArgumentError, "dimension 4 expected, got 5"),
        (lambda c: c.insert([100], _q(1, np.nan, 0, 0), tenant="a"), InvalidArgumentError, "NaN or infinity"),
        (lambda c: c.insert([100], _q(1, np.inf, 0, 0), tenant="a"), InvalidArgumentError, "NaN or infinity"),
        (lambda c: c.insert([100], np.zeros((1, 4)), tenant="a"), InvalidArgumentError, "length zero"),
        (lambda c: c.insert([3], np.ones((1, 4)), tenant="a"), AlreadyExistsError, "already exist, e.g. [3]"),
        (lambda c: c.insert([], np.ones((0, 4)), tenant="a"), InvalidArgumentError, "empty batch"),
        (lambda c: c.insert([100, 100], np.ones((2, 4)), tenant="a"), InvalidArgumentError, "repeat"),
        (lambda c: c.insert([100, 101], np.ones((1, 4)), tenant="a"), InvalidArgumentError, "pair up"),
        (lambda c: c.insert([-1], np.ones((1, 4)), tenant="a"), InvalidArgumentError, ">= 0"),
        (lambda c: c.insert(["x"], np.ones((1, 4)), tenant="a"), InvalidArgumentError, "64-bit integers"),
        (lambda c: c.insert([100], np.ones((1, 4)), tenant=""), InvalidArgumentError, "non-empty string"),
        (lambda c: c.search(np.ones(4), k=0, tenant="a"), InvalidArgumentError, "between 1 and"),
        (lambda c: c.search(np.ones(4), k=curator.MAX_K + 1, tenant="a"), InvalidArgumentError, "between 1 and"),
        (lambda c: c.search(np.ones(4), k=2.5, tenant="a"), InvalidArgumentError, "k must be an integer"),
        (lambda c: c.search(np.ones(4), k=3, tenant="a", ef=0), InvalidArgumentError, "ef must be between"),
        (lambda c: c.search(np.ones(3), k=3, tenant="a"), InvalidArgumentError, "dimension 4 expected, got 3"),
        (lambda c: c.search(_q(np.nan, 1, 1, 1), k=3, tenant="a"), InvalidArgumentError, "NaN"),
        # the same query refused by every plan: the exact scan (no tenant, or a filter) too
        (lambda c: c.search(_q(np.nan, 1, 1, 1), k=3), InvalidArgumentError, "NaN"),
        (lambda c: c.search_batch(np.stack([_q(1, 1, 1, 1), _q(np.inf, 1, 1, 1)]), k=3), InvalidArgumentError,
         "infinity"),
        (lambda c: c.search(_q(0, 0, 0, 0), k=3), InvalidArgumentError, "zero under cosine"),
        (lambda c: c.search(np.ones(4), k=3, tenant="nobody"), NotFoundError, "unknown tenant 'nobody'"),
        (lambda c: c.search_batch(np.ones((2, 4)), k=3, tenants=["a"]), InvalidArgumentError, "one per query"),
        (lambda c: c.search_batch(np.ones((0, 4)), k=3, tenants=[]), InvalidArgumentError, "empty batch"),
        (lambda c: c.search_batch(np.ones((2, 4)), k=3, tenants=["a", "ghost"]), NotFoundError, "ghost"),
        (lambda c: c.grant([3, 77], tenant="b"), NotFoundError, "unknown id(s), e.g. [77]"),
        (lambda c: c.revoke([3], tenant="ghost"), NotFoundError, "unknown tenant"),
        (lambda c: c.delete([55]), NotFoundError, "e.g. [55]"),
        (lambda c: c.get([55]), NotFoundError, "e.g. [55]"),
        (lambda c: c.drop_tenant("ghost"), NotFoundError, "unknown tenant"),
        (lambda c: c.count(tenant="ghost"), NotFoundError, "unknown tenant"),
        (lambda c: c.tenants_of(55), NotFoundError, "unknown id"),
    ],
)
def test_bad_input(col, call, error, message):
    before = (col.count(), col.count(tenant="a"), col.get(np.arange(10)).copy(), col.tenants())
    with pytest.raises(error) as raised:
        call(col)
    assert message in str(raised.value)
    assert isinstance(raised.value, curator.CuratorError)
    after = (col.count(), col.count(tenant="a"), col.get(np.arange(10)), col.tenants())
    assert before[:2] == after[:2] and before[3] == after[3]
    np.testing.assert_array_equal(before[2], after[2])


def test_bad_collections(db):
    db.create_collection("c", dim=4)
    with pytest.raises(AlreadyExistsError):
        db.create_collection("c", dim=4)
    with pytest.raises(InvalidArgumentError, match="unknown metric 'hamming'"):
        db.create_collection("d", dim=4, metric="hamming")
    with pytest.raises(InvalidArgumentError, match="dim must be an integer between 1 and"):
        db.create_collection("d", dim=0)
    with pytest.raises(InvalidArgumentError, match="unknown collection option"):
        db.create_collection("d", dim=4, leafsize=3)
    with pytest.raises(NotFoundError, match="unknown collection 'zz'"):
        db.collection("zz")
    with pytest.raises(InvalidArgumentError, match="unknown durability 'always'"):
        curator.open("/tmp/never-created", durability="always")


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_a_nan_query_is_refused_under_every_metric_after_every_plan_compiled(db, metric):
    """A compiled callee built for a fastmath caller loses its NaN check (numba compiles it with
    the caller's flags): after an exact-plan search has compiled, a NaN must still be refused."""
    col = db.create_collection(f"n{metric}", dim=4, metric=metric)
    col.insert(np.arange(10), np.random.default_rng(1).random((10, 4), np.float32), tenant="a")
    col.search(_q(1, 2, 3, 4), k=3)  # the exact plan (no tenant)
    for search in (lambda q: col.search(q, k=3, tenant="a"), lambda q: col.search(q, k=3)):
        with pytest.raises(InvalidArgumentError, match="NaN or infinity"):
            search(_q(np.nan, 1, 2, 3))
