"""What the HTTP gateway adds to a cache hit and a miss, against calling the cache in-process, in
one run: `python -m benchmarks.gateway_latency [--hits 2000] [--misses 400]`.

Both sides use the same cache configuration: the stand-in LLM (curator_loadtest/stand_in_llm.py,
in this process) embeds prompts (its bag-of-words /v1/embeddings) and answers misses at once.
- In-process: `cache.chat_prompt` (render, embed, classify: the embedding, reported apart), then
  `cache.lookup_chat`, the hit; a miss adds the upstream call (the engine's own client) and
  `cache.store_chat`, as complete() does.
- Gateway: `curator serve --data :memory: --http-port` in its own process, one keep-alive
  connection sending one request at a time (http.client, as light a client as there is); the
  embedding's share is taken from the answer's Server-Timing (`prompt;dur=`), so "excluding the
  embedding" is the client's time less what the server spent rendering, embedding, classifying.
Added latency: the gateway's percentile less the in-process one (not paired per request).
Results: benchmarks/results/gateway_latency.{json,md}.
"""

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import curator
from curator_loadtest.stand_in_llm import EMBEDDING_DIM, StandInLLM

from .measure import free_port, markdown_table, write_results

RESULTS = Path(__file__).parent / "results"
PARAMS = {"model": "stand-in", "temperature": 0}


def config_toml(url: str) -> str:
    return (f'[cache]\nembedding = {{ url = "{url}", model = "stand-in-words", dim = {EMBEDDING_DIM} }}\n'
            f'[cache.upstream]\nurl = "{url}"\ntimeout = 10\n')


def messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def questions(prefix: str, n: int) -> list[str]:
    """n prompts of 12 random words: unlike each other to the stand-in's embedding, so each new one misses."""
    rng = np.random.default_rng(list(prefix.encode()))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return [" ".join("".join(rng.choice(letters, 6)) for _ in range(12)) for _ in range(n)]


def in_process(url: str, hits: int, misses: int, stored: list[str], new: str) -> dict:
    """Seconds per step: embed (chat_prompt), lookup on hits, and a miss's lookup + upstream + store."""
    config = {"embedding": {"url": url, "model": "stand-in-words", "dim": EMBEDDING_DIM},
              "upstream": {"url": url, "timeout": 10.0}}
    with curator.open(":memory:", cache=config) as db:
        cache = db.cache
        for text in stored:
            cache.store_chat(cache.chat_prompt("default", messages(text), params=PARAMS), f"stored answer to {text}")
        embed, lookup = np.empty(hits), np.empty(hits)
        for i in range(hits):
            start = time.perf_counter()
            prompt = cache.chat_prompt("default", messages(stored[i % len(stored)]), params=PARAMS)
            middle = time.perf_counter()
            found = cache.lookup_chat(prompt)
            embed[i], lookup[i] = middle - start, time.perf_counter() - middle
            assert found.hit
        miss = np.empty(misses)
        for i, text in enumerate(questions(new, misses)):
            prompt = cache.chat_prompt("default", messages(text), params=PARAMS)
            start = time.perf_counter()
            assert not cache.lookup_chat(prompt).hit
            answer = cache.upstream.chat(messages(text), PARAMS)
            cache.store_chat(prompt, answer.text)
            miss[i] = time.perf_counter() - start
    return {"embed": embed, "hit": lookup, "miss": miss}


class Gateway:
    """`curator serve` with the gateway, in its own process, and one keep-alive connection to it."""

    def __init__(self, url: str, directory: str):
        config = Path(directory) / "cache.toml"
        config.write_text(config_toml(url))
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "curator_server", "serve", "--data", ":memory:", "--port", str(free_port()),
             "--http-port", str(self.port), "--cache-config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:  # bounded: until the server answers or the deadline
            try:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.connection.request("GET", "/v1/models")
                self.connection.getresponse().read()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start") from None
                time.sleep(0.2)

    def ask(self, text: str, stream: bool = False) -> tuple[float, float, str]:
        """(client seconds, the server's prompt seconds from Server-Timing, X-Cache)."""
        body = json.dumps({**PARAMS, "messages": messages(text), "stream": stream})
        start = time.perf_counter()
        self.connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        data = response.read()
        seconds = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"gateway answered {response.status}: {data[:300]!r}")
        timing = dict(part.strip().split(";dur=") for part in response.getheader("Server-Timing").split(","))
        return seconds, float(timing.get("prompt", 0.0)) / 1e3, response.getheader("X-Cache")

    def close(self) -> None:
        self.connection.close()
        self.process.terminate()
        self.process.wait(timeout=60)


def through_gateway(gateway: Gateway, hits: int, misses: int, stored: list[str], new: str) -> dict:
    for text in stored:
        assert gateway.ask(text)[2] == "MISS"
    out = {}
    for name, stream in (("hit", False), ("streamed hit", True)):
        total, embed = np.empty(hits), np.empty(hits)
        for i in range(hits):
            total[i], embed[i], cache = gateway.ask(stored[i % len(stored)], stream)
            assert cache == "HIT", cache
        out[name], out[f"{name} embed"] = total - embed, embed
    total, embed = np.empty(misses), np.empty(misses)
    for i, text in enumerate(questions(new, misses)):
        total[i], embed[i], cache = gateway.ask(text)
        assert cache == "MISS", cache
    out["miss"], out["miss embed"] = total - embed, embed
    return out


def percentiles(seconds: np.ndarray) -> dict:
    return {"p50_ms": float(np.percentile(seconds, 50) * 1e3), "p99_ms": float(np.percentile(seconds, 99) * 1e3),
            "n": int(seconds.size)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=2000)
    parser.add_argument("--misses", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)
    stored = questions("stored", 50)
    with StandInLLM() as llm, tempfile.TemporaryDirectory(prefix="curator-gateway-") as directory:
        in_process(llm.url, args.warmup, 20, stored, "warm-up misses")  # warm: imports, numba, connections
        local = in_process(llm.url, args.hits, args.misses, stored, "misses")
        gateway = Gateway(llm.url, directory)
        try:
            through_gateway(gateway, args.warmup, 20, questions("warm-up", 50), "warm-up misses")
            remote = through_gateway(gateway, args.hits, args.misses, stored, "misses")
        finally:
            gateway.close()
    rows = [
        {"what": "embedding (in-process chat_prompt)", **percentiles(local["embed"])},
        {"what": "embedding (gateway's Server-Timing prompt, on hits)", **percentiles(remote["hit embed"])},
        {"what": "hit in-process (lookup_chat)", **percentiles(local["hit"])},
        {"what": "hit through the gateway, embedding excluded", **percentiles(remote["hit"])},
        {"what": "streamed hit through the gateway, embedding excluded", **percentiles(remote["streamed hit"])},
        {"what": "miss in-process (lookup, upstream, store)", **percentiles(local["miss"])},
        {"what": "miss through the gateway, embedding excluded", **percentiles(remote["miss"])},
    ]
    added = {name: {q: percentiles(remote[name])[q] - percentiles(local[base])[q] for q in ("p50_ms", "p99_ms")}
             for name, base in (("hit", "hit"), ("streamed hit", "hit"), ("miss", "miss"))}
    results = {"rows": rows, "added_ms": added, "hits": args.hits, "misses": args.misses,
               "target": "a hit through the gateway costs <= 1 ms p50 beyond the in-process lookup"}
    text = "# The HTTP gateway's added latency\n\n" + __doc__.split("\n\n", 1)[1] + "\n" + markdown_table(
        rows, [("what", "", ""), ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f"), ("n", "n", "d")])
    text += "\n\nAdded by the gateway (its percentile less the in-process one):\n\n" + markdown_table(
        [{"what": name, **values} for name, values in added.items()],
        [("what", "", ""), ("p50_ms", "p50 ms", ".3f"), ("p99_ms", "p99 ms", ".3f")]) + "\n"
    write_results(RESULTS, "gateway_latency", results, text)


if __name__ == "__main__":
    main()
