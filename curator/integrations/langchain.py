"""LangChain over Curator: a `VectorStore` over a collection and an LLM cache over `db.cache`.

    pip install 'curator-db[langchain]'

    store = CuratorVectorStore(db.collection("docs"), embeddings, tenant="acme")
    store.add_texts(["..."], metadatas=[{"year": 2024}], ids=["a"])
    store.similarity_search("...", k=4, filter={"year": {"gte": 2020}})
    set_llm_cache(CuratorSemanticCache(db.cache, tenant="acme", category="support"))

`CuratorVectorStore`: one tenant per store (every search and write names it), `db` embedded or
remote. A document is one vector; its metadata is the payload (filters are ours,
`curator.filters`), beside two fields of the store's own: `_text` (the page content) and `_key`
(the document's string id, which is stored under a 63-bit hash of tenant and id:
`tenant_collection`). Scores from `similarity_search_with_score` are Curator's distances (smaller
is better: 1 - cos for cosine, squared Euclidean for l2, -inner product for ip); relevance scores
are similarities in [0, 1]. `delete` revokes the tenant's access, which deletes a vector no other
tenant sees.

`CuratorSemanticCache`: lookups and updates in `db.cache` for one tenant and one category
(None: the cache's classifier chooses), keyed by the LLM's settings (`llm_string`). A chat
model's prompt (its messages, serialized) is matched on the conversation without its system
messages, which key the entry with the settings, as `db.cache.complete` does. Embeddings come
from a LangChain `Embeddings` when one is given, else from the cache's own model.

Only LangChain's public API is used; this module never imports gRPC code.
"""

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

try:
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.outputs import Generation
    from langchain_core.vectorstores import VectorStore
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("curator.integrations.langchain needs langchain-core: pip install 'curator-db[langchain]'") from error

from ..errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from .mmr import mmr
from .tenant_collection import KEY_FIELD, TenantCollection

log = logging.getLogger("curator.integrations.langchain")

TEXT_FIELD = "_text"  # a document's page content, in its payload
RESERVED = (TEXT_FIELD, KEY_FIELD)
BATCH = 1_000  # documents per upsert


def _relevance(metric: str) -> Callable[[float], float]:
    """Distance -> similarity in [0, 1] (clipped), as LangChain's relevance scores are read:
    cosine similarity for cosine; the inner product for ip; for l2, 1 - Euclidean / sqrt(2), which
    for unit vectors spans [0, 1] over angles up to 90 degrees."""
    if metric == "cosine":
        return lambda d: min(1.0, max(0.0, 1.0 - d))
    if metric == "ip":
        return lambda d: min(1.0, max(0.0, -d))
    return lambda d: min(1.0, max(0.0, 1.0 - (max(d, 0.0) / 2.0) ** 0.5))


class CuratorVectorStore(VectorStore):
    """A LangChain vector store over a Curator collection, as one tenant.

    `collection`: `db.collection(name)` of `curator.open(...)` or `curator.connect(...)` (a tenant
    key for `tenant` is enough); `embedding`: any LangChain `Embeddings` whose dimension is the
    collection's; `ef`: the recall knob of every search (None: the collection's default)."""

    def __init__(self, collection, embedding: Embeddings, *, tenant: str, ef: int | None = None):
        self._docs = TenantCollection(collection, tenant)
        self._embedding = embedding
        self.ef = ef

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def collection(self):
        return self._docs.collection

    @property
    def tenant(self) -> str:
        return self._docs.tenant

    # -- writes ----------------------------------------------------------------------------------

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        """Embed and store texts (an existing id of this store's is replaced); returns their ids
        (new UUIDs where none are given)."""
        texts = list(texts)
        return self._add(texts, self._embed_documents(texts), metadatas, ids, kwargs.get("batch_size", BATCH))

    def _embed_documents(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._embedding.embed_documents(texts), dtype=np.float32).reshape(len(texts), -1)

    def _add(self, texts: list[str], vectors: np.ndarray, metadatas, ids, batch: int) -> list[str]:
        n = len(texts)
        metadatas = [{} for _ in range(n)] if metadatas is None else list(metadatas)
        ids = [None] * n if ids is None else list(ids)
        if len(metadatas) != n or len(ids) != n:
            raise InvalidArgumentError(f"{n} texts need as many metadatas and ids; got {len(metadatas)} metadatas "
                                       f"and {len(ids)} ids")
        keys = [str(uuid.uuid4()) if key is None else key for key in ids]
        payloads = []
        for text, metadata in zip(texts, metadatas, strict=True):
            taken = [name for name in RESERVED if name in (metadata or {})]
            if taken:
                raise InvalidArgumentError(f"metadata field(s) {taken} are the store's own (the text and the id)")
            if not isinstance(text, str):
                raise InvalidArgumentError(f"texts are strings; got {type(text).__name__}")
            payloads.append({**(metadata or {}), TEXT_FIELD: text})
        for start in range(0, n, batch):
            part = slice(start, start + batch)
            self._docs.upsert(keys[part], vectors[part], payloads[part])
        return keys

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete these documents of the tenant's (unknown ids are skipped), or all of them (None)."""
        if ids is None:
            self._docs.revoke_all()
        else:
            self._docs.revoke(self._docs.ids(list(ids)))
        return True

    # -- reads -----------------------------------------------------------------------------------

    def get_by_ids(self, ids, /) -> list[Document]:
        seen = self._docs.visible(self._docs.ids(list(ids)))
        return [self._document(payload) for payload in self._docs.payloads(seen)]

    def _document(self, payload: dict) -> Document:
        metadata = {name: value for name, value in payload.items() if name not in RESERVED}
        return Document(id=payload.get(KEY_FIELD), page_content=payload.get(TEXT_FIELD, ""), metadata=metadata)

    def similarity_search(self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """The k nearest documents and their distances (smaller is better), `filter` in Curator's
        filter language over the metadata."""
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k, filter=filter,
                                                           **kwargs)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter, **kwargs)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4, filter: dict | None = None,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        ids, distances = self._docs.search(embedding, k, filter, kwargs.get("ef", self.ef))
        return [(self._document(p), float(d)) for p, d in zip(self._docs.payloads(ids), distances.tolist(),
                                                               strict=True)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return _relevance(self._docs.metric)

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict | None = None, **kwargs: Any) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(self._embedding.embed_query(query), k, fetch_k,
                                                            lambda_mult, filter=filter, **kwargs)

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict | None = None,
                                                **kwargs: Any) -> list[Document]:
        """The `fetch_k` nearest (matching `filter`), then `k` of them chosen near the query and
        far from each other (`lambda_mult`: 1 similarity only, 0 diversity only)."""
        ids, _ = self._docs.search(embedding, max(k, fetch_k), filter, kwargs.get("ef", self.ef))
        chosen = ids[mmr(embedding, self._docs.vectors(ids), k, lambda_mult)]
        return [self._document(payload) for payload in self._docs.payloads(chosen)]

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, database=None, collection_name: str = "langchain",
                   tenant: str | None = None, metric: str = "cosine", ef: int | None = None,
                   **kwargs: Any) -> "CuratorVectorStore":
        """A store over `database`'s collection `collection_name` (created with the embeddings'
        dimension and `metric` when it does not exist) for `tenant`, holding these texts."""
        if database is None or tenant is None:
            raise InvalidArgumentError("from_texts needs database= (curator.open(...) or curator.connect(...)) "
                                       "and tenant=")
        texts = list(texts)
        vectors = cls._embed(embedding, texts)
        try:
            collection = database.collection(collection_name)
        except NotFoundError:
            collection = database.create_collection(collection_name, dim=vectors.shape[1], metric=metric)
        store = cls(collection, embedding, tenant=tenant, ef=ef)
        store._add(texts, vectors, metadatas, ids, kwargs.get("batch_size", BATCH))
        return store

    @staticmethod
    def _embed(embedding: Embeddings, texts: list[str]) -> np.ndarray:
        if not texts:
            raise InvalidArgumentError("from_texts needs at least one text (its embedding gives the dimension)")
        return np.asarray(embedding.embed_documents(texts), dtype=np.float32).reshape(len(texts), -1)


# -- the LLM cache ---------------------------------------------------------------------------------

def _content_text(content) -> str:
    """A message's content as text: a string, or the text parts of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part if isinstance(part, str) else str(part.get("text", ""))
                         for part in content if isinstance(part, (str, dict)))
    return str(content)


def chat_messages(prompt: str) -> list[tuple[str, str]] | None:
    """(type, text) of each message when `prompt` is a chat model's messages as LangChain
    serializes them for its cache (a JSON list of {"lc": 1, ..., "kwargs": {"content", "type"}});
    None for any other prompt (an LLM's text)."""
    if not prompt.startswith("["):
        return None
    try:
        items = json.loads(prompt)
    except ValueError:
        return None
    messages = []
    for item in items:
        kwargs = item.get("kwargs") if isinstance(item, dict) and item.get("lc") == 1 else None
        if not isinstance(kwargs, dict) or "content" not in kwargs:
            return None
        kind = kwargs.get("type") or str(item.get("id", ["message"])[-1]).removesuffix("Message").lower()
        messages.append((kind, _content_text(kwargs["content"])))
    return messages or None


def cache_key(prompt: str, llm_string: str) -> tuple[str, dict]:
    """(the text matched, the settings that key the entry) for a LangChain cache call: a chat's
    conversation without its system messages (a human message as it is, others tagged with their
    type), the system messages joining the LLM's settings; an LLM's prompt as it is."""
    messages = chat_messages(prompt)
    if messages is None:
        return prompt, {"llm": llm_string}
    system = [text for kind, text in messages if kind == "system"]
    text = "\n".join(t if kind == "human" else f"[{kind}] {t}" for kind, t in messages if kind != "system")
    settings = {"llm": llm_string}
    if system:
        settings["system"] = "\n".join(system)
    return text or prompt, settings


class CuratorSemanticCache(BaseCache):
    """LangChain's LLM cache, semantic: a prompt meaning the same as a cached one (by the
    category's policy: min_similarity, ttl, the near-miss guard) gets its answer.

    `cache`: `db.cache` of an embedded or remote database; `tenant`: whose entries these are
    (another tenant's are never served); `category`: the policy that applies (None: the cache's
    classifier chooses, else its default category); `embedding`: a LangChain `Embeddings` for the
    prompts (None: the cache's own model, all-MiniLM-L6-v2), named `embedding_model` in the cache
    (default: its class name), whose entries it is matched against.

    A generation is cached as its text: an LLM gets it back as a `Generation`, a chat model as an
    AI message (LangChain converts). Only single answers (n=1) are cached; an update of several
    generations is left out. A tenant at its cache_entries quota is answered uncached."""

    def __init__(self, cache, *, tenant: str, category: str | None = None, embedding: Embeddings | None = None,
                 embedding_model: str | None = None):
        if not isinstance(tenant, str) or not tenant:
            raise InvalidArgumentError(f"a cache needs its tenant, a non-empty string; got {tenant!r}")
        self.cache, self.tenant, self.category = cache, tenant, category
        self.embedding = embedding
        self.embedding_model = embedding_model or (None if embedding is None else
                                                   f"langchain/{type(embedding).__name__}")

    def _where(self, text: str) -> dict:
        where = {"category": self.category}
        if self.embedding is not None:
            where["embedding"] = np.asarray(self.embedding.embed_query(text), dtype=np.float32)
            where["embedding_model"] = self.embedding_model
        return where

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        text, settings = cache_key(prompt, llm_string)
        found = self.cache.lookup(self.tenant, text, model_settings=settings, **self._where(text))
        return [Generation(text=found.answer)] if found.hit else None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        if len(return_val) != 1:
            log.debug("not caching %d generations: only single answers are cached", len(return_val))
            return
        text, settings = cache_key(prompt, llm_string)
        try:
            self.cache.store(self.tenant, text, return_val[0].text, model_settings=settings, **self._where(text))
        except ResourceExhaustedError as error:
            if error.limit != "cache_entries":
                raise
            log.debug("not caching: tenant %r is at its cache_entries quota", self.tenant)

    def clear(self, **kwargs: Any) -> None:
        """Drop the tenant's entries: of this cache's category, or all of them when it has none."""
        self.cache.invalidate(self.tenant, self.category)
