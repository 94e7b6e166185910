"""A real Prometheus scrapes the server's metrics endpoint, and `promtool check metrics` accepts
what it serves. Prometheus comes from Debian's `prometheus` package (installed by `make test`)."""

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

import curator
from benchmarks.measure import free_port
from curator_server.app import CuratorServer, ServerConfig

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian package prometheus missing")


@pytest.fixture
def serving(tmp_path):
    server = CuratorServer(ServerConfig(data=str(tmp_path / "d"), port=0, metrics_port=0, tenant_metrics_top=2)).start()
    db = curator.connect(server.address)
    col = db.create_collection("c", dim=3)
    col.insert(np.arange(10), np.ones((10, 3)), tenant="a")
    for tenant in ("a", "b", "c", "d"):
        col.grant([1], tenant=tenant)
    for _ in range(5):
        col.search(np.ones(3), k=2, tenant="a")
    with pytest.raises(curator.NotFoundError):
        col.search(np.ones(3), k=2, tenant="nobody")
    cache, vector = db.cache, np.ones(4, np.float32)
    cache.set_policy("faq", min_similarity=0.9, max_entries=1)
    for answer in ("first", "second"):  # the second store evicts the first
        cache.store("a", f"q {answer}", answer, embedding=vector, category="faq", embedding_model="t")
    for _ in range(3):
        cache.lookup("a", embedding=vector, category="faq", embedding_model="t")
    cache.lookup("a", embedding=-vector, category="faq", embedding_model="t")
    yield server
    db.close()
    server.stop()


def _metrics(server) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()


def test_promtool_accepts_the_metrics(serving):
    text = _metrics(serving)
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'curator_requests_total{code="NOT_FOUND",method="SearchStream"} 1.0' in text
    assert 'curator_request_seconds_bucket{le="0.001",method="SearchStream"}' in text
    assert 'curator_cache_lookups_total{category="faq",outcome="hit"} 3.0' in text
    assert 'curator_cache_lookups_total{category="faq",outcome="miss"} 1.0' in text
    assert 'curator_cache_removed_entries_total{category="faq",why="evicted"} 1.0' in text
    assert 'curator_cache_entries{category="faq"} 1.0' in text
    assert 'curator_cache_top1_similarity_bucket{category="faq",le="0.0"} 1.0' in text  # the opposite vector: -1
    assert 'curator_cache_lookup_seconds_count{category="faq"} 4.0' in text
    tenant_lines = [line for line in text.splitlines() if line.startswith("curator_tenant_requests_total")]
    assert len(tenant_lines) == 3 and any('tenant="_other"' in line for line in tenant_lines)  # capped at top 2


def test_a_real_prometheus_scrapes_the_server(serving, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: curator\n"
                      f"    static_configs:\n      - targets: ['127.0.0.1:{serving.metrics_port}']\n")
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = urllib.parse.quote('sum(curator_requests_total{job="curator",method="SearchStream"})')
        value = None
        for _ in range(120):
            time.sleep(0.5)
            try:
                answer = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={query}",
                                                          timeout=2))
            except OSError:
                continue
            if answer["data"]["result"]:
                value = float(answer["data"]["result"][0]["value"][1])
                break
        assert value == 6.0, f"Prometheus saw {value} searches"
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
