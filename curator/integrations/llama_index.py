"""LlamaIndex over Curator: a vector store over a collection, as one tenant.

    pip install 'curator-db[llama-index]'

    store = CuratorVectorStore(db.collection("docs"), tenant="acme")
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store))
    index.as_retriever(filters=MetadataFilters(filters=[MetadataFilter(key="year", value=2020, operator=">=")]))

A node is one vector, stored under a 63-bit hash of the tenant and its node id
(`tenant_collection`); its payload is what LlamaIndex's own `node_to_metadata_dict` makes of it
(the node as JSON in `_node_content`, `ref_doc_id`, its metadata fields) with `_key`, the node id.
Metadata values Curator's payloads hold (str, int, float, bool, list of str) are fields a filter
can read; others travel inside the node only. Deleting revokes the tenant's access, which deletes
a vector no other tenant sees.

LlamaIndex's metadata filters map onto ours (`to_filter`): EQ, NE, GT, GTE, LT, LTE, IN, NIN, ANY,
ALL, CONTAINS, IS_EMPTY, combined with AND, OR and NOT; TEXT_MATCH and TEXT_MATCH_INSENSITIVE have
no counterpart and are refused (InvalidArgumentError, a ValueError) rather than guessed. Query
modes: DEFAULT and MMR (`mmr_threshold` is the lambda, 0.5 by default); others are refused.
Similarities are cosine similarities for cosine, inner products for ip, and 1 / (1 + squared
distance) for l2: larger is better.

Only LlamaIndex's public API is used; this module never imports gRPC code.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.schema import BaseNode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("curator.integrations.llama_index needs llama-index-core: "
                      "pip install 'curator-db[llama-index]'") from error

from ..errors import InvalidArgumentError
from ..payloads import type_of
from .mmr import mmr
from .tenant_collection import KEY_FIELD, TenantCollection

_RANGES = {FilterOperator.GT: "gt", FilterOperator.GTE: "gte", FilterOperator.LT: "lt", FilterOperator.LTE: "lte"}
_MODES = (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.MMR)


def _values(f: MetadataFilter) -> list:
    if not isinstance(f.value, list) or not f.value:
        raise InvalidArgumentError(f"filter on {f.key!r}: {f.operator.name} needs a non-empty list of values, "
                                   f"got {f.value!r}")
    return f.value


def _condition(f: MetadataFilter) -> dict:
    op, key, value = f.operator, f.key, f.value
    if op in (FilterOperator.EQ, FilterOperator.NE, FilterOperator.CONTAINS):
        if value is None or isinstance(value, list):
            raise InvalidArgumentError(f"filter on {key!r}: {op.name} compares with one value, got {value!r}")
        # CONTAINS (a list field holds the value) is eq: on a list of keywords eq matches any element
        return {key: value} if op != FilterOperator.NE else {key: {"ne": value}}
    if op in _RANGES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgumentError(f"filter on {key!r}: {op.name} compares numbers; got {value!r} (Curator "
                                       "orders numbers only)")
        return {key: {_RANGES[op]: value}}
    if op in (FilterOperator.IN, FilterOperator.ANY):  # ANY: a list field holding any of them
        return {key: {"in": _values(f)}}
    if op == FilterOperator.NIN:
        return {key: {"not_in": _values(f)}}
    if op == FilterOperator.ALL:  # a list field holding every one of them
        return {"and": [{key: v} for v in _values(f)]}
    if op == FilterOperator.IS_EMPTY:  # no value, or an empty string
        return {"or": [{key: {"exists": False}}, {key: ""}]}
    raise InvalidArgumentError(f"filter on {key!r}: operator {op.name} ({op.value!r}) has no counterpart in "
                               "Curator's filters (EQ, NE, GT, GTE, LT, LTE, IN, NIN, ANY, ALL, CONTAINS, IS_EMPTY)")


def to_filter(filters: MetadataFilters | None) -> dict | None:
    """LlamaIndex's metadata filters as a Curator filter (`curator.filters`); None for none."""
    if filters is None or not filters.filters:
        return None
    parts = [to_filter(f) if isinstance(f, MetadataFilters) else _condition(f) for f in filters.filters]
    parts = [part for part in parts if part is not None]
    if not parts:
        return None
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return parts[0] if len(parts) == 1 else {"and": parts}
    if condition == FilterCondition.OR:
        return parts[0] if len(parts) == 1 else {"or": parts}
    if condition == FilterCondition.NOT:  # none of them holds
        return {"not": parts[0] if len(parts) == 1 else {"or": parts}}
    raise InvalidArgumentError(f"filter condition {condition!r} has no counterpart (and, or, not)")


def _similarity(metric: str, distances: np.ndarray) -> list[float]:
    if metric == "cosine":
        return (1.0 - distances).tolist()
    if metric == "ip":
        return (-distances).tolist()
    return (1.0 / (1.0 + np.maximum(distances, 0.0))).tolist()


class CuratorVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over a Curator collection, as one tenant.

    `collection`: `db.collection(name)` of `curator.open(...)` or `curator.connect(...)` (a tenant
    key for `tenant` is enough), of the embedding model's dimension; `ef`: the recall knob of every
    query (None: the collection's default)."""

    stores_text: bool = True
    flat_metadata: bool = False
    tenant: str
    ef: int | None = None

    _docs: TenantCollection = PrivateAttr()

    def __init__(self, collection, *, tenant: str, ef: int | None = None, **kwargs: Any):
        super().__init__(tenant=tenant, ef=ef, **kwargs)
        self._docs = TenantCollection(collection, tenant)

    @classmethod
    def class_name(cls) -> str:
        return "CuratorVectorStore"

    @property
    def client(self) -> Any:
        """The collection."""
        return self._docs.collection

    # -- writes ----------------------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store nodes with their embeddings (a node id this store holds is replaced)."""
        if not nodes:
            return []
        keys = [node.node_id for node in nodes]
        vectors = np.asarray([node.get_embedding() for node in nodes], dtype=np.float32)
        self._docs.upsert(keys, vectors, [self._payload(node) for node in nodes])
        return keys

    def _payload(self, node: BaseNode) -> dict:
        if KEY_FIELD in node.metadata:
            raise InvalidArgumentError(f"metadata field {KEY_FIELD!r} is the store's own (the node id)")
        fields = node_to_metadata_dict(node, remove_text=False, flat_metadata=self.flat_metadata)
        return {name: value for name, value in fields.items() if value is not None and type_of(value) is not None}

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete the nodes of a source document (those whose ref_doc_id is this)."""
        self._docs.revoke_matching({"ref_doc_id": ref_doc_id})

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        """Delete these nodes, those matching `filters`, or those that are both."""
        spec = to_filter(filters)
        if node_ids is None and spec is None:
            return
        if spec is None:
            self._docs.revoke(self._docs.ids(list(node_ids)))
            return
        if node_ids is not None:
            if not node_ids:
                return
            spec = {"and": [{KEY_FIELD: {"in": list(node_ids)}}, spec]}
        self._docs.revoke_matching(spec)

    def clear(self) -> None:
        """Delete every node of the tenant's."""
        self._docs.revoke_all()

    # -- reads -----------------------------------------------------------------------------------

    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        """The nodes of these ids that the store holds (filters: only with node_ids, applied to them)."""
        if node_ids is None:
            raise InvalidArgumentError("get_nodes needs node_ids (a search with filters finds nodes by metadata)")
        seen = self._docs.visible(self._docs.ids(list(node_ids)))
        spec = to_filter(filters)
        if seen.size and spec is not None:
            probe = np.ones(self._docs.dim, dtype=np.float32)  # every match is taken: any direction will do
            try:
                seen, _ = self._docs.search(probe, len(seen), {"and": [{KEY_FIELD: {"in": list(node_ids)}}, spec]},
                                            ef=4 * len(seen))
            except InvalidArgumentError:  # a field none of the tenant's nodes holds: none matches
                return []
        return [metadata_dict_to_node(payload) for payload in self._docs.payloads(seen)]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The `similarity_top_k` nearest nodes matching the query's filters (and its doc_ids /
        node_ids when given); MMR mode then picks them near the query and apart from each other."""
        if query.mode not in _MODES:
            raise InvalidArgumentError(f"query mode {query.mode.value!r} has no counterpart here; "
                                       f"modes: {[m.value for m in _MODES]}")
        if query.query_embedding is None:
            raise InvalidArgumentError("a query needs its query_embedding")
        parts = [part for part in (to_filter(query.filters),
                                   {"ref_doc_id": {"in": list(query.doc_ids)}} if query.doc_ids else None,
                                   {KEY_FIELD: {"in": list(query.node_ids)}} if query.node_ids else None) if part]
        spec = None if not parts else parts[0] if len(parts) == 1 else {"and": parts}
        k = query.similarity_top_k
        ef = kwargs.get("ef", self.ef)
        if query.mode == VectorStoreQueryMode.MMR:
            fetch_k = kwargs.get("mmr_prefetch_k") or max(20, 4 * k)
            ids, distances = self._docs.search(query.query_embedding, max(k, fetch_k), spec, ef)
            lambda_mult = 0.5 if query.mmr_threshold is None else query.mmr_threshold
            chosen = mmr(query.query_embedding, self._docs.vectors(ids), k, lambda_mult)
            ids, distances = ids[chosen], distances[chosen]
        else:
            ids, distances = self._docs.search(query.query_embedding, k, spec, ef)
        nodes = [metadata_dict_to_node(payload) for payload in self._docs.payloads(ids)]
        return VectorStoreQueryResult(nodes=nodes, similarities=_similarity(self._docs.metric, distances),
                                      ids=[node.node_id for node in nodes])
