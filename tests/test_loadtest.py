"""The load-test harness (curator_loadtest: `curator loadtest`) against a real server on loopback:
a short open-loop run of the mixed workload, with the server and the stand-in model behind its
cache started by the harness itself, has every operation, no errors, counts equal to what the
server's Prometheus endpoint says it served, cache completions that partly hit and partly reach
the model, and every acknowledged write reads back. Plus the pieces the figures rest on: histogram
percentiles, the tenant law, the mix; and the clear error when a target server has no model."""

import json

import numpy as np
import pytest

from curator_loadtest import cli
from curator_loadtest.histogram import Histogram
from curator_loadtest.ramp import passes
from curator_loadtest.server_metrics import compare
from curator_loadtest.workload import OPERATIONS, ZipfTenants, needs_upstream, parse_mix
from curator_server.app import CuratorServer, ServerConfig

SMALL = ["--dataset", "zipf", "--vectors", "2000", "--tenants", "20"]


def test_a_short_run_has_every_operation_no_errors_and_the_servers_counts(tmp_path):
    # No --target: the harness starts the stand-in model, then `curator serve --cache-config` pointing at it.
    code = cli.main(["run", *SMALL, "--mix", "mixed", "--rate", "150", "--duration", "3", "--warmup", "1",
                     "--workers", "2", "--open-threads", "4", "--timeout", "60", "--upstream-latency-ms", "5",
                     "--verify", "--quiet", "--out", str(tmp_path / "run")])
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["server"]["started_by_harness"] and report["upstream"]["stand_in"]
    ops = report["phases"][0]["ops"]
    grpc_ops = {name for name, op in OPERATIONS.items() if not op.needs_gateway}
    assert set(ops) == grpc_ops  # the mixed preset exercises every registered gRPC operation
    for name, op in ops.items():
        assert op["calls"] > 0 and op["errors"] == {}, name
        assert op["ok"] == op["calls"] and op["p50_ms"] is not None
    served = report["server_served"]  # the server's curator_requests_total, between the phase's start and end
    rows = compare({name: op["calls"] for name, op in ops.items()}, served)
    assert {tuple(r["methods"]) for r in rows} == {OPERATIONS[n].methods for n in grpc_ops}
    for row in rows:
        assert row["sent"] == row["served"], row
        assert all(set(served.get(m, {})) <= {"OK"} for m in row["methods"])  # served without errors
    assert report["server_check"] == rows  # the harness's own check agrees
    # New questions reached the model (each once); repeated ones were answered by the cache.
    assert 0 < report["upstream"]["calls"] < ops["cache_complete"]["calls"]
    assert report["read_back"]["ok"] and report["read_back"]["live_checked"] > 0
    assert report["read_back"]["deleted_checked"] > 0 and report["read_back"]["uncertain"] == 0
    assert code == 0
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_gateway_mix_runs_without_errors_and_the_gateways_counts_match(tmp_path):
    # The harness starts the server with --http-port and a cache embedding with the stand-in model.
    code = cli.main(["run", *SMALL, "--mix", "gateway_chat=3,search=1", "--rate", "120", "--duration", "3",
                     "--warmup", "1", "--workers", "2", "--open-threads", "4", "--timeout", "60",
                     "--upstream-latency-ms", "5", "--quiet", "--out", str(tmp_path / "run")])
    report = json.loads((tmp_path / "run.json").read_text())
    assert report["gateway"]["url"].startswith("http://127.0.0.1:")
    ops = report["phases"][0]["ops"]
    assert set(ops) == {"gateway_chat", "search"}
    for name, op in ops.items():
        assert op["calls"] > 0 and op["errors"] == {} and op["ok"] == op["calls"], name
    served = report["server_served"]
    assert served["/v1/chat/completions"] == {"200": ops["gateway_chat"]["calls"]}  # all answered 200
    assert all(row["match"] for row in report["server_check"]) and len(report["server_check"]) == 2
    # Repeated questions were answered by the gateway's cache; new ones reached the model.
    assert 0 < report["upstream"]["calls"] < ops["gateway_chat"]["calls"]
    assert code == 0


def test_a_target_server_without_a_model_is_refused_with_what_to_configure(tmp_path):
    server = CuratorServer(ServerConfig(data=":memory:", port=0, metrics_port=0)).start()
    try:
        with pytest.raises(SystemExit, match=r"(?s)front a model.*--cache-config"):
            cli.main(["run", "--target", server.address, *SMALL, "--mix", "cache_complete=1", "--rate", "10",
                      "--duration", "1", "--quiet", "--out", str(tmp_path / "run")])
    finally:
        server.stop()


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
    assert needs_upstream(parse_mix("mixed")) and needs_upstream(parse_mix("cache"))
    assert not needs_upstream(parse_mix("search"))


def test_the_ramp_judges_the_databases_latency_not_the_models():
    step = {"calls": 100, "error_rate": 0.0, "unsent": 0, "throughput": 100.0, "target_rate": 100.0,
            "all": {"p99_ms": 60.0}, "without_model": {"p99_ms": 12.0}}  # completes waited 50 ms for the model
    assert passes(step, 50.0, 0.001) == (True, "ok")
    assert not passes({**step, "without_model": None}, 50.0, 0.001)[0]  # a mix of model calls only: all of them
