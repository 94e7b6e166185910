"""The load-test harness (benchmarks/load) against a real server on loopback: a short open-loop
run of the mixed workload has every operation, no errors, counts equal to what the server's
Prometheus endpoint says it served, and every acknowledged write reads back. Plus the pieces
the figures rest on: histogram percentiles, the tenant law, the mix."""

import json

import numpy as np
import pytest

import curator
from benchmarks.load import cli, dataset
from benchmarks.load.histogram import Histogram
from benchmarks.load.server_metrics import compare, scrape_requests, served_between
from benchmarks.load.workload import OPERATIONS, ZipfTenants, parse_mix
from curator_server.app import CuratorServer, ServerConfig

SMALL = ["--dataset", "zipf", "--vectors", "2000", "--tenants", "20"]


def test_a_short_run_has_every_operation_no_errors_and_the_servers_counts(tmp_path):
    server = CuratorServer(ServerConfig(data=str(tmp_path / "data"), port=0, metrics_port=0)).start()
    metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
    try:
        data = dataset.build("zipf", 2000, 20)
        db = curator.connect(server.address)
        dataset.load(db, "loadtest", data)
        col = db.collection("loadtest")  # compile the server's search paths before the load starts
        col.search(data.vectors[0], k=10, tenant="t0")
        col.search(data.vectors[0], k=10, tenant="t0", filter={"year": {"gte": 2020}})
        db.close()
        before = scrape_requests(metrics)
        code = cli.main(["run", "--target", server.address, "--metrics-url", metrics, *SMALL, "--mix", "mixed",
                         "--rate", "150", "--duration", "3", "--warmup", "0", "--workers", "2", "--open-threads", "4",
                         "--timeout", "60", "--verify", "--quiet", "--out", str(tmp_path / "run")])
        after = scrape_requests(metrics)
    finally:
        server.stop()
    report = json.loads((tmp_path / "run.json").read_text())
    ops = report["phases"][0]["ops"]
    assert set(ops) == set(OPERATIONS)  # the mixed preset exercises every registered operation
    for name, op in ops.items():
        assert op["calls"] > 0 and op["errors"] == {}, name
        assert op["ok"] == op["calls"] and op["p50_ms"] is not None
    served = served_between(before, after)
    rows = compare({name: op["calls"] for name, op in ops.items()}, served)
    assert {tuple(r["methods"]) for r in rows} == {op.methods for op in OPERATIONS.values()}
    for row in rows:
        assert row["sent"] == row["served"], row
        assert all(set(served.get(m, {})) <= {"OK"} for m in row["methods"])  # served without errors
    assert report["server_check"] == rows  # the harness's own check agrees
    assert report["read_back"]["ok"] and report["read_back"]["live_checked"] > 0
    assert report["read_back"]["deleted_checked"] > 0 and report["read_back"]["uncertain"] == 0
    assert code == 0
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_percentiles_are_within_two_percent_of_numpy():
    rng = np.random.default_rng(0)
    seconds = rng.lognormal(mean=-6, sigma=1.5, size=20_000)
    halves = Histogram(), Histogram()
    for i, s in enumerate(seconds):
        halves[i % 2].record(s)
    index, counts = halves[1].sparse()
    merged = halves[0].add(Histogram.from_sparse(index, counts))  # as the parent merges workers
    assert merged.count == seconds.size
    for q in (50, 90, 99, 99.9):
        assert merged.percentile(q) == pytest.approx(np.percentile(seconds, q, method="inverted_cdf"), rel=0.02)


def test_tenants_follow_the_zipf_law_and_the_mix_is_checked():
    names = [f"t{i}" for i in range(100)]
    law = ZipfTenants(names, 1.0, seed=3)
    rng = np.random.default_rng(0)
    drawn = np.bincount([law.draw(rng)[0] for _ in range(50_000)], minlength=100)
    expected = 1 / np.arange(1, 101)
    expected = expected / expected.sum() * 50_000
    ranked = drawn[law.index]  # counts in the law's rank order
    assert ranked[0] == pytest.approx(expected[0], rel=0.05) and ranked[9] == pytest.approx(expected[9], rel=0.1)
    assert sorted(parse_mix("search=3,upsert=1").items()) == [("search", 0.75), ("upsert", 0.25)]
    with pytest.raises(ValueError, match="unknown operation"):
        parse_mix("search=1,no_such_operation=1")
    with pytest.raises(ValueError, match="upsert"):
        parse_mix("search=1,delete=1")  # deletes act on the client's own writes
