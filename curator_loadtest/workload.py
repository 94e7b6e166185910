"""What the load is made of: the operations, their mix, and which tenant each call is for.

An operation is one small function of a client `Context`, registered with the server methods
(the `method` label of `curator_requests_total`) that one call of it is counted under, so a run's
counts can be checked against what the server says it served. Adding an operation, e.g. a
semantic cache lookup, is one more registered function:

    @operation("cache_lookup", "Lookup")
    def cache_lookup(ctx):
        ctx.db.cache.lookup(...)

An operation that needs a model behind the cache (`needs_upstream`: cache_complete, gateway_chat)
works only against a server whose cache has an upstream configured; the harness provides one when
it starts the server itself (`upstream.py`). One that goes through the OpenAI-compatible HTTP
gateway (`needs_gateway`: gateway_chat) is counted under the gateway's route (the `route` label of
`curator_http_requests_total`) and needs a server started with `--http-port`.

Tenants are drawn by a Zipf law over a fixed random order of the data set's tenants: a few hot
tenants take most calls, as in production. Writes go to ids that the calling client owns (its
`Ledger` range), so every acknowledged write can be read back exactly at the end of a run.
This module must never measure time or print: the driver does that.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .gateway_client import GatewayClient
from .ledger import Ledger
from .questions import Question, Questions

ID_BASE = 1 << 40  # load-test ids start here, far above any data set row
LANGS = ("en", "de", "fr", "es")
# Payload filters of searches: a range, a set, and both, from ~20% to ~3% of the vectors.
FILTERS = ({"year": {"gte": 2020}}, {"lang": {"in": ["de", "fr"]}}, {"year": {"lt": 2005}, "lang": "en"})


def payloads_of(ids) -> list[dict]:
    """The payload of each id: a function of the id alone, the same for loaded rows and upserts."""
    return [{"year": 2000 + (int(i) * 7919) % 25, "lang": LANGS[(int(i) * 31) % len(LANGS)]} for i in ids]


@dataclass
class WorkloadData:
    """The vectors and tenants every client draws from (picklable: sent to each worker process)."""

    name: str
    vectors: np.ndarray  # (n, dim) float32; row i is id i in the collection
    tenant_names: list[str]
    tenant_offsets: np.ndarray  # CSR offsets of each tenant's rows in tenant_members
    tenant_members: np.ndarray


@dataclass
class WorkloadSpec:
    mix: dict[str, float]  # operation name -> share of calls
    zipf: float = 1.0  # exponent of the tenant popularity law (0: uniform)
    k: int = 10
    write_batch: int = 10  # ids per upsert, grant or delete call
    id_slots: int = 256  # ids each client owns: bounds the live set, so a soak reaches a steady state
    query_noise: float = 0.1  # searches use a member vector of the tenant plus this much Gaussian noise
    cache_repeat: float = 0.4  # share of cache_complete calls repeating an earlier question (hits)
    upstream_model: str = "stand-in"  # the model cache_complete asks for (sent to the upstream)
    seed: int = 0
    run: int = 0  # tells this run's new cache questions from an earlier run's against the same server


class Skip(Exception):
    """The operation has nothing to act on yet (a delete before this client has written anything)."""


@dataclass(frozen=True)
class Operation:
    name: str
    run: Callable[["Context"], None]
    methods: tuple[str, ...]  # server methods one call is counted under (any one of them)
    needs_writes: bool = False  # acts on ids this client wrote: the mix must contain a write
    needs_upstream: bool = False  # the server's cache must front a model (an upstream)
    needs_gateway: bool = False  # sent to the server's HTTP gateway (--http-port), not over gRPC


OPERATIONS: dict[str, Operation] = {}


def operation(name: str, *methods: str, needs_writes: bool = False, needs_upstream: bool = False,
              needs_gateway: bool = False):
    def register(fn):
        OPERATIONS[name] = Operation(name, fn, methods, needs_writes, needs_upstream, needs_gateway)
        return fn
    return register


def needs_upstream(mix: dict[str, float]) -> bool:
    return any(OPERATIONS[name].needs_upstream for name, share in mix.items() if share > 0)


def needs_gateway(mix: dict[str, float]) -> bool:
    return any(OPERATIONS[name].needs_gateway for name, share in mix.items() if share > 0)


PRESETS = {
    "search": {"search": 0.8, "search_filtered": 0.2},
    "mixed": {"search": 0.45, "search_filtered": 0.1, "upsert": 0.15, "grant": 0.1, "delete": 0.05,
              "cache_lookup": 0.07, "cache_store": 0.03, "cache_complete": 0.05},
    # Applications mostly go through complete(); lookup + store is the path of those calling the model themselves.
    "cache": {"cache_complete": 0.5, "cache_lookup": 0.4, "cache_store": 0.1},
    # An application whose OpenAI client's base_url is the gateway, beside searches over gRPC.
    "gateway": {"gateway_chat": 0.7, "search": 0.3},
}


def parse_mix(text: str) -> dict[str, float]:
    """A preset name ("search", "mixed") or "op=weight,op=weight", normalised to shares."""
    if text in PRESETS:
        mix = dict(PRESETS[text])
    else:
        mix = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, weight = part.partition("=")
            try:
                mix[name.strip()] = float(weight) if weight else 1.0
            except ValueError:
                raise ValueError(f"mix entry {part!r}: the weight must be a number") from None
    unknown = sorted(set(mix) - set(OPERATIONS))
    if unknown:
        raise ValueError(f"unknown operation(s) {unknown}; known: {sorted(OPERATIONS)} or presets {sorted(PRESETS)}")
    if not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError("the mix needs at least one operation with a positive weight")
    if any(OPERATIONS[n].needs_writes for n, w in mix.items() if w) and not any(
            n == "upsert" and w > 0 for n, w in mix.items()):
        raise ValueError("grant and delete act on ids the client upserted: add upsert to the mix")
    total = sum(mix.values())
    return {name: weight / total for name, weight in mix.items() if weight > 0}


class ZipfTenants:
    """Tenant names drawn with probability proportional to 1 / rank**s over a seeded random ranking."""

    def __init__(self, names: list[str], s: float, seed: int):
        order = np.random.default_rng([seed, 7]).permutation(len(names))
        self.names = [names[i] for i in order]
        self.index = order  # rank -> tenant index in the data set
        weights = 1.0 / np.arange(1, len(names) + 1) ** s
        self.cdf = np.cumsum(weights / weights.sum())

    def draw(self, rng: np.random.Generator) -> tuple[int, str]:
        """(tenant index in the data set, its name)."""
        rank = min(int(np.searchsorted(self.cdf, rng.random())), len(self.names) - 1)
        return int(self.index[rank]), self.names[rank]


def error_code(error: Exception) -> str:
    """The gRPC status name of a failed call (the SDK re-raises the engine's classes)."""
    code = getattr(error, "code", None)
    if callable(code):  # a raw grpc.RpcError
        try:
            return code().name
        except Exception:  # noqa: BLE001
            return type(error).__name__
    if isinstance(code, str):
        # Statuses the engine has no class for (UNAVAILABLE, DEADLINE_EXCEEDED) arrive as "CODE: message".
        named = re.match(r"([A-Z_]+): ", str(error))
        return named.group(1) if named and type(error).__name__ == "CuratorError" else code
    return type(error).__name__


@dataclass
class Context:
    """One client thread: its connection, random stream, id range and ledger."""

    db: object
    collection: object
    data: WorkloadData
    spec: WorkloadSpec
    client: int  # unique over the run: owns ids ID_BASE + client * id_slots + [0, id_slots)
    tenants: ZipfTenants
    rng: np.random.Generator = None
    ledger: Ledger = field(default_factory=Ledger)
    questions: Questions = None
    gateway: "GatewayClient | None" = None  # this thread's HTTP connection to the server's gateway
    chats: Questions = None  # what gateway_chat asks (its own repeats)

    def __post_init__(self):
        if self.rng is None:
            self.rng = np.random.default_rng([self.spec.seed, self.client])
        if self.questions is None:
            self.questions = Questions(self.data.vectors.shape[1], self.client, self.spec.run, self.spec.seed)
        if self.chats is None:
            self.chats = Questions(1, self.client, self.spec.run, self.spec.seed + 1)
        names, shares = list(self.spec.mix), np.array(list(self.spec.mix.values()))
        self._ops = [OPERATIONS[n] for n in names]
        self._cdf = np.cumsum(shares)
        self._fallback = next(op for op in self._ops if not op.needs_writes)

    def draw(self) -> Operation:
        return self._ops[min(int(np.searchsorted(self._cdf, self.rng.random())), len(self._ops) - 1)]

    def step(self) -> tuple[str, str | None]:
        """Run one operation of the mix: (its name, None or the error's status code)."""
        op = self.draw()
        for _ in range(8):
            try:
                op.run(self)
                return op.name, None
            except Skip:
                op = self.draw()
            except Exception as error:  # noqa: BLE001 - every failure is counted by its status
                return op.name, error_code(error)
        op = self._fallback
        try:
            op.run(self)
            return op.name, None
        except Exception as error:  # noqa: BLE001
            return op.name, error_code(error)

    # Helpers for operations

    def tenant(self) -> tuple[int, str]:
        return self.tenants.draw(self.rng)

    def query_near(self, tenant: int) -> np.ndarray:
        """A query near the tenant's data: one of its vectors, moved a little."""
        d = self.data
        lo, hi = int(d.tenant_offsets[tenant]), int(d.tenant_offsets[tenant + 1])
        row = d.tenant_members[self.rng.integers(lo, hi)] if hi > lo else self.rng.integers(len(d.vectors))
        v = d.vectors[row]
        return (v + self.rng.standard_normal(v.shape[0]).astype(np.float32) * self.spec.query_noise).astype(np.float32)

    def own_ids(self, n: int) -> np.ndarray:
        slots = self.rng.choice(self.spec.id_slots, size=min(n, self.spec.id_slots), replace=False)
        return ID_BASE + self.client * self.spec.id_slots + slots

    def live_ids(self, n: int) -> list[int]:
        live = self.ledger.live()
        if not live:
            raise Skip
        picks = self.rng.choice(len(live), size=min(n, len(live)), replace=False)
        return [live[i] for i in picks]


@operation("search", "SearchGroups", "SearchStream", "Search")
def search(ctx: Context) -> None:
    t, name = ctx.tenant()
    ctx.collection.search(ctx.query_near(t), k=ctx.spec.k, tenant=name)


@operation("search_filtered", "SearchGroups", "SearchStream", "Search")
def search_filtered(ctx: Context) -> None:
    t, name = ctx.tenant()
    ctx.collection.search(ctx.query_near(t), k=ctx.spec.k, tenant=name,
                          filter=FILTERS[ctx.rng.integers(len(FILTERS))])


@operation("upsert", "Insert")
def upsert(ctx: Context) -> None:
    _, name = ctx.tenant()
    ids = ctx.ledger.writable_by(ctx.own_ids(ctx.spec.write_batch), name)  # only an owner overwrites
    if not ids.size:
        raise Skip
    rows = ctx.rng.integers(len(ctx.data.vectors), size=ids.size)
    try:
        ctx.collection.upsert(ids, ctx.data.vectors[rows], tenant=name, payloads=payloads_of(ids))
    except Exception:
        ctx.ledger.failed(ids.tolist())
        raise
    ctx.ledger.upserted(ids.tolist(), rows.tolist(), name)


@operation("grant", "Grant", needs_writes=True)
def grant(ctx: Context) -> None:
    ids = ctx.live_ids(ctx.spec.write_batch)
    _, name = ctx.tenant()
    ctx.collection.grant(ids, tenant=name)  # a failed grant leaves acknowledged state as it was
    ctx.ledger.granted(ids, name)


@operation("delete", "Delete", needs_writes=True)
def delete(ctx: Context) -> None:
    ids = ctx.live_ids(max(1, ctx.spec.write_batch // 2))
    try:
        ctx.collection.delete(ids)
    except Exception:
        ctx.ledger.failed(ids)
        raise
    ctx.ledger.deleted_ids(ids)


# The semantic cache: the data set's vectors stand in for prompt embeddings (their own model name,
# so they never meet real text embeddings); the category is drawn from a few fixed ones.
CACHE_MODEL = "loadtest-embeddings"
CACHE_CATEGORIES = ("faq", "code", "chat")


@operation("cache_store", "Store")
def cache_store(ctx: Context) -> None:
    t, name = ctx.tenant()
    row = int(ctx.rng.integers(len(ctx.data.vectors)))
    ctx.db.cache.store(name, f"prompt {row}", f"answer {row}", embedding=ctx.data.vectors[row],
                       category=CACHE_CATEGORIES[row % len(CACHE_CATEGORIES)], embedding_model=CACHE_MODEL)


@operation("cache_lookup", "Lookup")
def cache_lookup(ctx: Context) -> None:
    t, name = ctx.tenant()
    ctx.db.cache.lookup(name, embedding=ctx.query_near(t), embedding_model=CACHE_MODEL,
                        category=CACHE_CATEGORIES[int(ctx.rng.integers(len(CACHE_CATEGORIES)))])


@operation("cache_complete", "Complete", needs_upstream=True)
def cache_complete(ctx: Context) -> None:
    """A repeated question (a hit) with probability `cache_repeat`, else a new one (a miss: the
    upstream answers and the cache stores it, after which this client may repeat it)."""
    question = ctx.questions.repeat() if ctx.rng.random() < ctx.spec.cache_repeat else None
    new = question is None
    if new:
        _, name = ctx.tenant()
        question = ctx.questions.new(name, CACHE_CATEGORIES[int(ctx.rng.integers(len(CACHE_CATEGORIES)))])
    ctx.db.cache.complete(question.tenant, question.messages(), category=question.category,
                          params={"model": ctx.spec.upstream_model}, embedding=question.embedding,
                          embedding_model=CACHE_MODEL)
    if new:
        ctx.questions.remember(question)


# The gateway embeds prompts itself (the stand-in model's bag of words when the harness starts the
# server): a new question is words drawn at random, so it is far from every other question and
# misses; a repeat is the very same text (X-Cache: HIT).
GATEWAY_WORDS = tuple(f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "si", "tu")
                      for b in ("bar", "den", "fil", "gom", "hut", "jel", "kor", "lum"))


@operation("gateway_chat", "/v1/chat/completions", needs_upstream=True, needs_gateway=True)
def gateway_chat(ctx: Context) -> None:
    """A chat completion posted to the gateway; repeats an earlier question with probability
    `cache_repeat` (a hit), else asks a new one (a miss: the model answers, the gateway stores)."""
    if ctx.gateway is None:
        raise RuntimeError("gateway_chat needs the server's HTTP gateway: a server with --http-port")
    question = ctx.chats.repeat() if ctx.rng.random() < ctx.spec.cache_repeat else None
    new = question is None
    if new:
        _, name = ctx.tenant()
        words = ctx.rng.choice(len(GATEWAY_WORDS), size=10)
        question = ctx.chats.new(name, CACHE_CATEGORIES[int(ctx.rng.integers(len(CACHE_CATEGORIES)))])
        question = Question(question.tenant, question.category, " ".join(GATEWAY_WORDS[w] for w in words),
                            question.embedding)
    ctx.gateway.chat(question.messages(), ctx.spec.upstream_model, question.tenant, question.category)
    if new:
        ctx.chats.remember(question)
