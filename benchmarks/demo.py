"""A first look at Curator, embedded: GloVe words shared between WordNet tenants.

    make run        (or: python -m benchmarks.demo)

Every noun category of WordNet ("mammal", "food", "vehicle", ...) is a tenant that may see the
words below it; a word is stored once and shared by all its categories. The same query asked
for by different tenants gets each tenant's own nearest neighbours, and nothing else.
"""

import time

import numpy as np

import curator
from curator_loadtest import data as D


def main() -> None:
    data = D.glove_wordnet()
    words = D.glove_words()
    row_of = {w: i for i, w in enumerate(words)}
    base_words = _base_words(data, words)
    tenant = {name.split(".")[0]: D.tenant_label(i) for i, name in enumerate(data.tenant_names)}

    db = curator.open(":memory:")
    col = db.create_collection("glove", dim=50, metric="cosine")
    start = time.perf_counter()
    D.load_into(col, data)
    col.train()
    stats = col.stats()
    print(f"loaded {stats['vectors']:,} words into {stats['tenants']} WordNet tenants "
          f"({stats['pairs']:,} grants) in {time.perf_counter() - start:.1f} s\n")

    glove = D.glove()
    for query in ("jaguar", "apple", "mercury"):
        print(f"nearest to {query!r}:")
        for category in ("mammal", "vehicle", "food", "fruit", "drug", "person"):
            if category not in tenant:
                continue
            ids, dists = col.search(glove[row_of[query]], k=5, tenant=tenant[category])
            print(f"  as {category:8s} -> {', '.join(base_words[i] for i in ids.tolist())}")
        print()
    try:
        col.search(glove[row_of["apple"]], k=5, tenant="no-such-tenant")
    except curator.NotFoundError as error:
        print(f"an unknown tenant is an error, not an empty answer: {error}")


def _base_words(data: D.MultiTenantData, words: list[str]) -> list[str]:
    """The word of each base vector (base rows are GloVe rows in order, those in some tenant)."""
    glove = D.glove()
    lookup = {glove[i].tobytes(): w for i, w in enumerate(words)}
    return [lookup[v.tobytes()] for v in np.ascontiguousarray(data.vectors)]


if __name__ == "__main__":
    main()
