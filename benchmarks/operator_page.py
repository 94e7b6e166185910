"""The operator's page (server/operator_page.py) of a seeded server, shot with headless Chromium
(Debian's `chromium`, `make system`): `python -m benchmarks.operator_page` writes
benchmarks/results/operator_page.png.

The seeded server: two collections of tenants of several sizes, some inactive and one offloaded,
gRPC searches by a tenant key, and chat completions through the HTTP gateway in three cache
categories with policies of their own (repeats hit, new prompts miss and reach the stand-in LLM,
which measures the costs behind each category's break-even; "support" asks new questions only). tests/test_operator_page.py uses the
same seeding and the same browser calls.
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

import curator
from curator_loadtest.stand_in_llm import EMBEDDING_DIM, StandInLLM
from curator_server.app import CuratorServer, ServerConfig
from curator_server.auth import key_entry
from curator_server.gateway import GatewayConfig

ADMIN_KEY, TENANT_KEY = "key-of-ops", "key-of-alice"
POLICIES = {"finance": {"min_similarity": 0.9, "ttl": 300.0}, "code": {"min_similarity": 0.8, "ttl": 3600.0},
            "support": {"min_similarity": 0.95, "ttl": 600.0}}
RESULTS = Path(__file__).parent / "results"


def chromium() -> str:
    """Debian's chromium; a clear failure naming `make system` where it is missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("Debian's chromium is not installed: run `make system` (apt-get install chromium)")
    return found


def browse(url: str, *, screenshot: str | None = None, width: int = 1280, height: int = 1600,
           timeout: float = 120.0) -> str:
    """Load `url` in a fresh headless Chromium profile: its DOM after loading, or a screenshot."""
    with tempfile.TemporaryDirectory(prefix="curator-chromium-") as profile:
        command = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                   "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--hide-scrollbars",
                   f"--window-size={width},{height}"]
        command += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        done = subprocess.run(command + [url], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})
        if done.returncode != 0:
            raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout


def ticket_url(server, key: str = ADMIN_KEY) -> str:
    """A single-use URL that opens a session (the key goes in a header, never in the URL)."""
    base = f"http://127.0.0.1:{server.gateway.port}"
    request = urllib.request.Request(base + "/operator/ticket", method="POST", data=b"",
                                     headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return base + json.loads(answer.read())["path"]


@contextlib.contextmanager
def seeded_server(directory: Path, sample_seconds: float = 5.0):
    """A server on `directory` with keys for an admin ("ops") and a tenant ("alice"), an HTTP
    gateway in front of a stand-in LLM, seeded (`seed`)."""
    with StandInLLM() as llm:
        keys = directory / "keys.toml"
        keys.write_text(key_entry("ops", ADMIN_KEY, [], True) + "\n" + key_entry("alice", TENANT_KEY, ["alice"], False))
        keys.chmod(0o600)
        cache = {"embedding": {"url": llm.url, "model": "stand-in-words", "dim": EMBEDDING_DIM},
                 "upstream": {"url": llm.url, "timeout": 5.0}}
        config = ServerConfig(data=str(directory / "data"), port=0, keys=str(keys), cache=cache,
                              gateway=GatewayConfig(port=0))
        server = CuratorServer(config)
        server.operator.sample_seconds = sample_seconds
        server.start()
        try:
            seed(server)
            yield server
        finally:
            server.stop()


def seed(server, rounds: int = 1) -> None:
    rng = np.random.default_rng(7)
    db = server.db
    for name, dim, sizes in (("docs", 32, [400, 250, 160, 120, 90, 60, 40, 30, 20, 10]),
                             ("images", 64, [300, 120, 50])):
        col = db.create_collection(name, dim, metric="cosine")
        start = 0
        for i, size in enumerate(sizes):
            tenant = "alice" if (name, i) == ("docs", 0) else f"{name}-tenant-{i:02d}"
            col.insert(np.arange(start, start + size), rng.standard_normal((size, dim)).astype(np.float32),
                       tenant=tenant)
            start += size
        if name == "docs":
            for i in (5, 6, 7):
                col.deactivate_tenant(f"docs-tenant-{i:02d}")
            col.offload_tenant("docs-tenant-09")
    for category, policy in POLICIES.items():
        db.cache.set_policy(category, **policy)
    traffic(server, rounds)


def traffic(server, rounds: int = 1) -> None:
    """gRPC searches by alice's key and chat completions through the gateway in both categories."""
    rng = np.random.default_rng()
    with contextlib.closing(curator.connect(server.address, api_key=TENANT_KEY)) as remote:
        col = remote.collection("docs")
        for _ in range(20 * rounds):
            col.search(rng.standard_normal(32).astype(np.float32), k=5, tenant="alice")
    base = f"http://127.0.0.1:{server.gateway.port}/v1/chat/completions"
    prompts = {"finance": ["what is the fee for a wire transfer", "how do I open a savings account",
                           "what is the interest rate on loans"],
               "code": ["how do I sort a list in python", "how do I reverse a string", "what is a closure",
                        "how do I read a file line by line"]}
    words = [a + b for a in ("ka", "lo", "mi", "ne", "su", "ta", "ri", "po")
             for b in ("ber", "dan", "fim", "gol", "hut", "jex", "kor", "lum")]
    for _ in range(rounds):
        prompts["support"] = [" ".join(rng.choice(words, 8)) for _ in range(2)]  # new each time: misses
        for category, texts in prompts.items():
            for i, text in enumerate(texts):
                for _repeat in range(1 if category == "support" else 1 + (i % 3) + (category == "code")):
                    body = json.dumps({"model": "stand-in", "messages": [{"role": "user", "content": text}]})
                    request = urllib.request.Request(base, data=body.encode(), headers={
                        "Authorization": f"Bearer {TENANT_KEY}", "Content-Type": "application/json",
                        "X-Cache-Category": category})
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        answer.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS / "operator_page.png"))
    parser.add_argument("--seconds", type=float, default=30.0, help="traffic before the shot (the plots' window)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="curator-operator-") as directory:
        with seeded_server(Path(directory), sample_seconds=1.0) as server:
            end = time.monotonic() + args.seconds
            while time.monotonic() < end:
                traffic(server)
                time.sleep(0.5)
            browse(ticket_url(server), screenshot=args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes)")


if __name__ == "__main__":
    main()
