"""The LlamaIndex integration (curator.integrations.llama_index) against the real llama-index-core,
in memory and against a real server on loopback reached with tenant keys: nodes added and queried
with similarities, every metadata filter operator mapped onto ours (and the ones without a
counterpart refused), deletes by document, node and filter, MMR, and a VectorStoreIndex built on
the store with llama-index's MockEmbedding."""

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

import curator
from curator.integrations.llama_index import CuratorVectorStore, to_filter
from curator_server.app import CuratorServer, ServerConfig
from tests.conftest import keys_file

KEYS = {"alice": "li-key-alice-0123456789", "bob": "li-key-bob-0123456789", "admin": "li-key-admin-0123456789"}
DIM = 8


@pytest.fixture(params=["memory", "remote"])
def collection(request, tmp_path):
    """collection(tenant, name="docs"): a collection (cosine, DIM) as that tenant reaches it:
    embedded, or on a server through the tenant's own key."""
    if request.param == "memory":
        db = curator.open(":memory:")
        yield lambda tenant, name="docs": (db.collection(name) if name in db.list_collections()
                                           else db.create_collection(name, dim=DIM, metric="cosine"))
        db.close()
        return
    keys = keys_file(tmp_path / "keys.toml",
                     {name: (key, None if name == "admin" else [name]) for name, key in KEYS.items()})
    server = CuratorServer(ServerConfig(data=":memory:", port=0, keys=keys)).start()
    admin = curator.connect(server.address, api_key=KEYS["admin"])
    opened = [admin]

    def as_tenant(tenant, name="docs"):
        if name not in admin.list_collections():
            admin.create_collection(name, dim=DIM, metric="cosine")
        opened.append(curator.connect(server.address, api_key=KEYS[tenant]))
        return opened[-1].collection(name)
    yield as_tenant
    for db in opened:
        db.close()
    server.stop()


def nodes(n: int = 12, seed: int = 0) -> list[TextNode]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        node = TextNode(id_=f"node-{i}", text=f"chunk {i}", embedding=rng.standard_normal(DIM).tolist(),
                        metadata={"year": 2000 + i, "topic": ("rivers", "mountains", "cities")[i % 3],
                                  "tags": [f"t{i % 2}", "all"], "score": i / 2, "extra": {"nested": i}})
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"doc-{i // 4}")
        out.append(node)
    return out


def query(node: TextNode, k: int = 12, filters=None, **options) -> VectorStoreQuery:
    return VectorStoreQuery(query_embedding=node.embedding, similarity_top_k=k, filters=filters, **options)


def found(store, q) -> list[str]:
    return [node.node_id for node in store.query(q).nodes]


def test_added_nodes_come_back_whole_with_their_similarities(collection):
    store = CuratorVectorStore(collection("alice"), tenant="alice")
    added = nodes()
    assert store.add(added) == [node.node_id for node in added]
    result = store.query(query(added[5], k=3))
    assert result.ids[0] == "node-5" and result.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert result.similarities == sorted(result.similarities, reverse=True)  # larger is better
    back = result.nodes[0]
    assert back.text == "chunk 5" and back.ref_doc_id == "doc-1"
    assert back.metadata == added[5].metadata  # the nested value too: it travels inside the node
    vectors = np.array([node.embedding for node in added])
    q = np.array(added[5].embedding)
    cosine = vectors @ q / np.linalg.norm(vectors, axis=1) / np.linalg.norm(q)
    assert result.ids == [f"node-{i}" for i in np.argsort(-cosine)[:3]]
    assert result.similarities == pytest.approx(np.sort(cosine)[::-1][:3], abs=1e-5)
    assert [node.node_id for node in store.get_nodes(["node-2", "nope", "node-9"])] == ["node-2", "node-9"]


def test_every_filter_operator_maps_onto_curators(collection):
    store = CuratorVectorStore(collection("alice"), tenant="alice")
    store.add(nodes())
    q = nodes()[0]

    def where(*filters, condition=FilterCondition.AND):
        return set(found(store, query(q, filters=MetadataFilters(filters=list(filters), condition=condition))))

    def ids(*numbers):
        return {f"node-{i}" for i in numbers}

    def f(key, value, operator):
        return MetadataFilter(key=key, value=value, operator=operator)

    assert where(f("topic", "rivers", FilterOperator.EQ)) == ids(0, 3, 6, 9)
    assert where(f("topic", "rivers", FilterOperator.NE)) == ids(1, 2, 4, 5, 7, 8, 10, 11)
    assert where(f("year", 2009, FilterOperator.GT)) == ids(10, 11)
    assert where(f("year", 2009, FilterOperator.GTE)) == ids(9, 10, 11)
    assert where(f("score", 1.0, FilterOperator.LT)) == ids(0, 1)
    assert where(f("score", 1.0, FilterOperator.LTE)) == ids(0, 1, 2)
    assert where(f("topic", ["cities", "rivers"], FilterOperator.IN)) == ids(0, 2, 3, 5, 6, 8, 9, 11)
    assert where(f("year", [2000, 2001, 2002], FilterOperator.NIN)) == ids(*range(3, 12))
    assert where(f("tags", ["t1", "nope"], FilterOperator.ANY)) == ids(1, 3, 5, 7, 9, 11)
    assert where(f("tags", ["t1", "all"], FilterOperator.ALL)) == ids(1, 3, 5, 7, 9, 11)
    assert where(f("tags", ["t0", "t1"], FilterOperator.ALL)) == set()
    assert where(f("tags", "t0", FilterOperator.CONTAINS)) == ids(0, 2, 4, 6, 8, 10)
    assert where(f("topic", None, FilterOperator.IS_EMPTY)) == set()
    assert where(f("topic", "rivers", FilterOperator.EQ), f("year", 2005, FilterOperator.GT)) == ids(6, 9)
    assert where(f("topic", "rivers", FilterOperator.EQ), f("year", 2010, FilterOperator.GTE),
                 condition=FilterCondition.OR) == ids(0, 3, 6, 9, 10, 11)
    assert where(f("topic", "rivers", FilterOperator.EQ), f("topic", "cities", FilterOperator.EQ),
                 condition=FilterCondition.NOT) == ids(1, 4, 7, 10)
    nested = MetadataFilters(filters=[f("topic", "mountains", FilterOperator.EQ),
                                      MetadataFilters(filters=[f("year", 2002, FilterOperator.LT),
                                                               f("year", 2009, FilterOperator.GT)],
                                                      condition=FilterCondition.OR)])
    assert set(found(store, query(q, filters=nested))) == ids(1, 10)
    assert set(found(store, query(q, doc_ids=["doc-0", "doc-2"]))) == ids(0, 1, 2, 3, 8, 9, 10, 11)
    assert set(found(store, query(q, node_ids=["node-4", "node-7"]))) == ids(4, 7)
    assert to_filter(MetadataFilters(filters=[f("topic", "rivers", FilterOperator.EQ),
                                              f("year", [1, 2], FilterOperator.NIN)])) == \
        {"and": [{"topic": "rivers"}, {"year": {"not_in": [1, 2]}}]}


def test_what_has_no_counterpart_is_refused_with_what_there_is(collection):
    store = CuratorVectorStore(collection("alice"), tenant="alice")
    store.add(nodes(3))
    q = nodes(1)[0]
    for bad, message in [(MetadataFilter(key="topic", value="riv", operator=FilterOperator.TEXT_MATCH),
                          r"operator TEXT_MATCH .* has no counterpart .*EQ, NE, GT"),
                         (MetadataFilter(key="topic", value="riv", operator=FilterOperator.TEXT_MATCH_INSENSITIVE),
                          "TEXT_MATCH_INSENSITIVE"),
                         (MetadataFilter(key="topic", value="rivers", operator=FilterOperator.GT),
                          "GT compares numbers"),
                         (MetadataFilter(key="year", value=[2000], operator=FilterOperator.EQ),
                          "EQ compares with one value")]:
        with pytest.raises(curator.InvalidArgumentError, match=message):
            store.query(query(q, filters=MetadataFilters(filters=[bad])))
    with pytest.raises(ValueError, match="query mode 'hybrid' has no counterpart"):
        store.query(query(q, mode=VectorStoreQueryMode.HYBRID))


def test_deletes_by_document_node_and_filter_and_clear(collection):
    store = CuratorVectorStore(collection("alice"), tenant="alice")
    store.add(nodes())
    q = nodes()[0]
    store.delete("doc-1")  # nodes 4..7
    assert set(found(store, query(q))) == {f"node-{i}" for i in (0, 1, 2, 3, 8, 9, 10, 11)}
    store.delete("doc-1")  # nothing left of it: nothing happens
    store.delete_nodes(["node-0", "node-11", "never"])
    assert len(found(store, query(q))) == 6
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="rivers")]))  # 3, 9
    assert set(found(store, query(q))) == {f"node-{i}" for i in (1, 2, 8, 10)}
    store.delete_nodes(["node-1", "node-2"], filters=MetadataFilters(filters=[
        MetadataFilter(key="year", value=2001, operator=FilterOperator.LTE)]))  # only node-1 is both
    assert set(found(store, query(q))) == {f"node-{i}" for i in (2, 8, 10)}
    store.clear()
    assert found(store, query(q)) == []
    store.delete("doc-0")  # an empty store: nothing happens


def test_mmr_mode_trades_a_near_duplicate_for_a_different_node(collection):
    store = CuratorVectorStore(collection("alice", "mmr"), tenant="alice")
    base = np.eye(DIM)
    points = {"a": base[0] + 0.1 * base[1], "a-again": base[0] + 0.11 * base[1], "b": base[0] + base[2],
              "far": -base[3]}
    store.add([TextNode(id_=name, text=name, embedding=vector.tolist()) for name, vector in points.items()])
    q = VectorStoreQuery(query_embedding=base[0].tolist(), similarity_top_k=2)
    assert found(store, q) == ["a", "a-again"]
    mmr = VectorStoreQuery(query_embedding=base[0].tolist(), similarity_top_k=2, mode=VectorStoreQueryMode.MMR,
                           mmr_threshold=0.5)
    result = store.query(mmr)
    assert result.ids == ["a", "b"] and len(result.similarities) == 2
    assert result.similarities[1] == pytest.approx(1 / np.sqrt(2), abs=1e-5)


def test_tenants_keep_their_own_nodes(collection):
    alice = CuratorVectorStore(collection("alice"), tenant="alice")
    bob = CuratorVectorStore(collection("bob"), tenant="bob")
    alice.add(nodes(6, seed=1))
    bob.add(nodes(6, seed=2))  # the same node ids, other vectors
    q = nodes(1, seed=1)[0]
    assert store_vectors(alice, q) != store_vectors(bob, q)
    bob.clear()
    assert len(found(alice, query(q))) == 6 and found(bob, query(q)) == []


def store_vectors(store, q) -> list[tuple[str, float]]:
    result = store.query(query(q, k=6))
    return [(i, round(s, 4)) for i, s in zip(result.ids, result.similarities, strict=True)]


def test_a_vector_store_index_on_the_store_retrieves_with_filters_and_deletes_documents(collection):
    store = CuratorVectorStore(collection("alice"), tenant="alice")
    documents = [Document(text=f"{topic} document {i}", doc_id=f"doc-{topic}-{i}", metadata={"topic": topic, "i": i})
                 for i in range(3) for topic in ("rivers", "cities")]
    index = VectorStoreIndex.from_documents(documents, storage_context=StorageContext.from_defaults(vector_store=store),
                                            embed_model=MockEmbedding(embed_dim=DIM))
    retriever = index.as_retriever(similarity_top_k=10, filters=MetadataFilters(filters=[
        MetadataFilter(key="topic", value="cities"), MetadataFilter(key="i", value=1, operator=FilterOperator.GTE)]))
    hits = retriever.retrieve("anything")
    assert sorted(hit.node.get_content() for hit in hits) == ["cities document 1", "cities document 2"]
    assert {hit.node.ref_doc_id for hit in hits} == {"doc-cities-1", "doc-cities-2"}
    index.delete_ref_doc("doc-cities-2")
    assert [hit.node.get_content() for hit in retriever.retrieve("anything")] == ["cities document 1"]


def test_the_readme_example_runs():
    from tests.test_langchain import readme_example

    exec(compile(readme_example(1), "README.md (LlamaIndex)", "exec"), {})  # its asserts are the checks
