"""The model behind the server's semantic cache during a load test (for cache_complete).

When the harness starts the server itself, it first starts the stand-in LLM
(`stand_in_llm`: a real HTTP server on loopback answering after a fixed latency)
and gives the server a `--cache-config` whose upstream is that stand-in (`cache_config`). When
the harness is pointed at a running server (--target), that server's upstream is the operator's
to configure; the harness only checks, before loading, that there is one (`check`).
"""

import json

import numpy as np

from .stand_in_llm import EMBEDDING_DIM
from .workload import CACHE_MODEL


def cache_config(url: str, timeout: float, embeddings: bool = False) -> str:
    """The `curator serve --cache-config` file (TOML): the cache's upstream at `url`; with
    `embeddings`, its embedding model too (the stand-in's /v1/embeddings: the gateway embeds the
    prompts it is sent, where the gRPC operations send their own vectors)."""
    if not timeout > 0:
        raise ValueError(f"the upstream timeout must be > 0 seconds, got {timeout!r}")
    text = f"[cache.upstream]\nurl = {json.dumps(url)}\ntimeout = {float(timeout)!r}\n"
    if embeddings:
        text += (f"[cache.embedding]\nurl = {json.dumps(url)}\nmodel = \"stand-in-words\"\n"
                 f"dim = {EMBEDDING_DIM}\ntimeout = {float(timeout)!r}\n")
    return text


def check(db, tenant: str, model: str, dim: int) -> None:
    """One completion through the server's cache (a new question: it reaches the upstream);
    SystemExit saying what to configure when the server's cache fronts no model or cannot reach it."""
    import curator

    question = np.random.default_rng().standard_normal(dim).astype(np.float32)
    try:
        db.cache.complete(tenant, [{"role": "user", "content": "load test: is a model behind this cache?"}],
                          params={"model": model}, embedding=question, embedding_model=CACHE_MODEL)
    except curator.CuratorError as error:
        raise SystemExit(f"cache_complete needs the server's cache to front a model, and a completion failed: "
                         f"{error}\nStart the server with `curator serve --cache-config FILE` whose "
                         f"[cache.upstream] url is an OpenAI-compatible endpoint, or leave out --target so "
                         f"that the harness starts a server with a stand-in model itself.") from None
