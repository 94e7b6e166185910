"""Building a semantic cache from its configuration (a mapping, or the [cache] table of a TOML file).

    [cache]
    embedding = "local"                 # all-MiniLM-L6-v2 on the CPU; or an endpoint table:
    # embedding = { url = "http://127.0.0.1:8001/v1", model = "text-embedding-3-small", dim = 1536 }
    [cache.upstream]                    # the OpenAI-compatible model the cache fronts (optional)
    url = "http://127.0.0.1:8000/v1"
    timeout = 30
    stream = false
    [cache.load]                        # when relaxable policies relax
    latency_target = 2.0
    inflight_target = 16
    [cache.policies.default]            # then [cache.policies.categories.<name>] and
    min_similarity = 0.9                # [cache.policies.tenants.<tenant>.<category>]
    [cache.limits]                      # each tenant's budget over all its categories (limits.py)
    tenant_entries = 100_000
    tenant_bytes = 268_435_456
    tenant_categories = 64
    answer_bytes = 1_048_576
"""

import tomllib
from pathlib import Path

from ..errors import InvalidArgumentError
from .embedders import EndpointModel, LocalModel
from .engine import SemanticCache
from .limits import Limits
from .load import LoadMonitor
from .policy import Policies
from .upstream import Upstream

SECTIONS = {"embedding", "upstream", "load", "policies", "limits"}


def read(path) -> dict:
    """The [cache] table of a TOML file."""
    try:
        return tomllib.loads(Path(path).read_text()).get("cache", {})
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise InvalidArgumentError(f"cannot read the cache configuration {path}: {error}") from None


def build(config: dict | None, records) -> SemanticCache:
    config = dict(config or {})
    unknown = set(config) - SECTIONS
    if unknown:
        raise InvalidArgumentError(f"unknown cache setting(s) {sorted(unknown)}; known: {sorted(SECTIONS)}")
    embedding = config.get("embedding", "local")
    if embedding == "local":
        embedder = LocalModel()
    elif isinstance(embedding, dict):
        embedder = EndpointModel(embedding["url"], embedding["model"], int(embedding["dim"]),
                                 embedding.get("api_key"), float(embedding.get("timeout", 10.0)))
    else:
        raise InvalidArgumentError(f"cache embedding {embedding!r}: expected \"local\" or {{url, model, dim}}")
    upstream = config.get("upstream")
    if upstream is not None:
        upstream = Upstream(upstream["url"], api_key=upstream.get("api_key"),
                            timeout=float(upstream.get("timeout", 30.0)), stream=bool(upstream.get("stream", False)))
    load = LoadMonitor(**config.get("load", {}))
    policies = Policies.from_dict(config["policies"]) if "policies" in config else None
    limits = config.get("limits")
    if limits is not None and not isinstance(limits, dict):
        raise InvalidArgumentError("cache limits must be a table ([cache.limits])")
    return SemanticCache(records, policies=policies, embedder=embedder, upstream=upstream, load=load,
                         limits=Limits.from_dict(limits))
