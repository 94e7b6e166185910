"""The LangChain integration (curator.integrations.langchain) against the real langchain-core, in
memory and against a real server on loopback reached with tenant keys: the vector store (add,
search with scores and filters, delete, MMR, retrievers, tenants kept apart) and the semantic LLM
cache (a paraphrase served from the cache through a real LangChain model, another tenant's not)."""

import re

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.language_models import FakeListChatModel, FakeListLLM
from langchain_core.messages import HumanMessage, SystemMessage

import curator
from curator.integrations.langchain import CuratorSemanticCache, CuratorVectorStore, cache_key
from curator.integrations.tenant_collection import key_id
from curator_server.app import CuratorServer, ServerConfig
from tests.conftest import keys_file

KEYS = {"alice": "lc-key-alice-0123456789", "bob": "lc-key-bob-0123456789", "admin": "lc-key-admin-0123456789"}
DIM = 16


@pytest.fixture(params=["memory", "remote"])
def connect(request, tmp_path):
    """connect(tenant): a database as that tenant reaches it (embedded, or a server through the
    tenant's own key), with the collection "docs" (cosine, DIM) made by an admin."""
    if request.param == "memory":
        db = curator.open(":memory:")
        db.create_collection("docs", dim=DIM, metric="cosine")
        yield lambda tenant: db
        db.close()
        return
    keys = keys_file(tmp_path / "keys.toml",
                     {name: (key, None if name == "admin" else [name]) for name, key in KEYS.items()})
    server = CuratorServer(ServerConfig(data=":memory:", port=0, keys=keys)).start()
    opened = [curator.connect(server.address, api_key=KEYS["admin"])]
    opened[0].create_collection("docs", dim=DIM, metric="cosine")

    def as_tenant(tenant):
        opened.append(curator.connect(server.address, api_key=KEYS[tenant]))
        return opened[-1]
    yield as_tenant
    for db in opened:
        db.close()
    server.stop()


TEXTS = [f"note {i} about {('rivers', 'mountains', 'cities')[i % 3]}" for i in range(12)]
METADATAS = [{"year": 2000 + i, "topic": ("rivers", "mountains", "cities")[i % 3], "tags": [f"t{i % 2}"]}
             for i in range(12)]


def store_of(connect, tenant="alice", embedding=None):
    return CuratorVectorStore(connect(tenant).collection("docs"), embedding or DeterministicFakeEmbedding(size=DIM),
                              tenant=tenant)


def test_added_texts_are_found_with_their_scores_metadata_and_ids(connect):
    store = store_of(connect)
    ids = store.add_texts(TEXTS, METADATAS, ids=[f"n{i}" for i in range(12)])
    assert ids == [f"n{i}" for i in range(12)]
    found = store.similarity_search_with_score(TEXTS[4], k=3)
    first, distance = found[0]
    assert first == Document(id="n4", page_content=TEXTS[4], metadata=METADATAS[4])  # text, id, metadata back
    assert distance == pytest.approx(0.0, abs=1e-5)
    distances = [d for _, d in found]
    assert distances == sorted(distances) and len(found) == 3  # Curator's distances: smaller is better
    embedding = DeterministicFakeEmbedding(size=DIM)
    vectors = np.array(embedding.embed_documents(TEXTS))
    q = np.array(embedding.embed_query(TEXTS[4]))
    exact = 1 - vectors @ q / np.linalg.norm(vectors, axis=1) / np.linalg.norm(q)
    assert [doc.id for doc, _ in found] == [f"n{i}" for i in np.argsort(exact)[:3]]
    assert distances == pytest.approx(np.sort(exact)[:3], abs=1e-5)
    relevance = store.similarity_search_with_relevance_scores(TEXTS[4], k=3)
    assert [doc.id for doc, _ in relevance] == [doc.id for doc, _ in found]
    assert relevance[0][1] == pytest.approx(1.0, abs=1e-5) and all(0 <= s <= 1 for _, s in relevance)
    assert store.similarity_search_by_vector(embedding.embed_query(TEXTS[7]), k=1)[0].id == "n7"
    assert store.get_by_ids(["n2", "missing", "n5"]) == [Document(id=f"n{i}", page_content=TEXTS[i],
                                                                  metadata=METADATAS[i]) for i in (2, 5)]


def test_filters_are_curators_filter_language_over_the_metadata(connect):
    store = store_of(connect)
    store.add_texts(TEXTS, METADATAS, ids=[f"n{i}" for i in range(12)])
    recent = store.similarity_search(TEXTS[0], k=12, filter={"year": {"gte": 2006}})
    assert {doc.id for doc in recent} == {f"n{i}" for i in range(6, 12)} and len(recent) == 6
    either = store.similarity_search(TEXTS[0], k=12, filter={"or": [{"topic": "rivers"}, {"tags": "t1"}]})
    assert {doc.id for doc in either} == {f"n{i}" for i in range(12) if i % 3 == 0 or i % 2 == 1}
    scored = store.similarity_search_with_score(TEXTS[0], k=2, filter={"topic": {"in": ["cities"]}, "year": {"lt": 2006}})
    assert {doc.id for doc, _ in scored} == {"n2", "n5"}
    retriever = store.as_retriever(search_kwargs={"k": 3, "filter": {"topic": "mountains"}})
    assert {doc.metadata["topic"] for doc in retriever.invoke(TEXTS[1])} == {"mountains"}
    threshold = store.as_retriever(search_type="similarity_score_threshold",
                                   search_kwargs={"k": 5, "score_threshold": 0.99})
    assert [doc.id for doc in threshold.invoke(TEXTS[9])] == ["n9"]  # only the text itself is that close
    with pytest.raises(curator.InvalidArgumentError, match="unknown field 'colour'"):
        store.similarity_search(TEXTS[0], k=3, filter={"colour": "red"})


def test_deletes_take_documents_from_the_tenant_and_an_add_replaces(connect):
    store = store_of(connect)
    store.add_texts(TEXTS, METADATAS, ids=[f"n{i}" for i in range(12)])
    assert store.delete(["n4", "n5", "never-added"]) is True
    assert {"n4", "n5"}.isdisjoint(doc.id for doc in store.similarity_search(TEXTS[4], k=12))
    assert len(store.similarity_search(TEXTS[4], k=12)) == 10
    store.add_texts(["replaced text"], [{"year": 1999}], ids=["n6"])  # same id: replaced, not added
    again = store.get_by_ids(["n6"])
    assert again == [Document(id="n6", page_content="replaced text", metadata={"year": 1999})]
    assert len(store.similarity_search(TEXTS[0], k=12)) == 10
    store.delete()  # None: every document of the tenant
    assert store.similarity_search(TEXTS[0], k=12) == []


def test_generated_ids_documents_and_from_texts(connect):
    db = connect("admin")  # from_texts creates the collection: an admin's call on a server
    embedding = DeterministicFakeEmbedding(size=8)
    store = CuratorVectorStore.from_texts(["one", "two"], embedding, [{"n": 1}, {"n": 2}], database=db,
                                          collection_name="fresh", tenant="alice")
    assert db.collection("fresh").dim == 8 and db.collection("fresh").metric == "cosine"  # made to fit
    ids = store.add_documents([Document(page_content="three", metadata={"n": 3}, id="three"),
                               Document(page_content="four", metadata={"n": 4})])
    assert ids[0] == "three" and re.fullmatch(r"[0-9a-f-]{36}", ids[1])  # a UUID where none was given
    assert [doc.page_content for doc in store.similarity_search("four", k=1)] == ["four"]
    assert db.collection("fresh").get_payloads([key_id("alice", "three")])[0]["_key"] == "three"
    with pytest.raises(curator.InvalidArgumentError, match="the store's own"):
        store.add_texts(["x"], [{"_text": "mine"}])
    with pytest.raises(curator.InvalidArgumentError, match="not a payload value"):
        store.add_texts(["x"], [{"nested": {"a": 1}}])
    with pytest.raises(curator.InvalidArgumentError, match="repeated"):
        store.add_texts(["x", "y"], ids=["same", "same"])


class Points(Embeddings):
    """Texts named in a table embed to the table's vectors: geometry a test controls."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def embed_documents(self, texts):
        return [self.table[t] for t in texts]

    def embed_query(self, text):
        return self.table[text]


def test_mmr_trades_a_near_duplicate_for_a_different_document(connect):
    table = {"query": [1.0, 0.0, 0.0], "a": [0.9, 0.1, 0.0], "a-again": [0.9, 0.11, 0.0],
             "b": [0.7, 0.0, 0.7], "far": [0.0, 0.0, -1.0]}
    connect("admin").create_collection("mmr", dim=3, metric="cosine")
    store = CuratorVectorStore.from_texts(["a", "a-again", "b", "far"], Points(table), ids=["a", "a2", "b", "far"],
                                          database=connect("alice"), collection_name="mmr", tenant="alice")
    assert [doc.id for doc in store.similarity_search("query", k=2)] == ["a", "a2"]
    assert [doc.id for doc in store.max_marginal_relevance_search("query", k=2, fetch_k=4)] == ["a", "b"]
    assert [doc.id for doc in store.max_marginal_relevance_search("query", k=2, fetch_k=4, lambda_mult=1.0)] == \
        ["a", "a2"]
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 4, "filter": {"_key": {"ne": "b"}}})
    assert [doc.id for doc in mmr.invoke("query")] == ["a", "far"]  # b filtered out: the most different left


def test_each_store_sees_its_own_tenants_documents_only(connect):
    alice, bob = store_of(connect, "alice"), store_of(connect, "bob")
    alice.add_texts(TEXTS[:6], METADATAS[:6], ids=[str(i) for i in range(6)])
    bob.add_texts(TEXTS[6:], METADATAS[6:], ids=[str(i) for i in range(6)])  # the same ids, other documents
    assert {doc.page_content for doc in alice.similarity_search(TEXTS[7], k=12)} == set(TEXTS[:6])
    assert {doc.page_content for doc in bob.similarity_search(TEXTS[1], k=12)} == set(TEXTS[6:])
    bob.delete(["1", "2"])
    assert len(alice.similarity_search(TEXTS[1], k=12)) == 6 and len(bob.similarity_search(TEXTS[1], k=12)) == 4
    assert alice.get_by_ids(["1"])[0].page_content == TEXTS[1]
    bob.delete()
    assert len(alice.similarity_search(TEXTS[1], k=12)) == 6


# -- the semantic LLM cache ------------------------------------------------------------------------

SYNONYMS = {"fee": "cost", "cost": "cost", "price": "cost", "charge": "cost", "wire": "wire", "transfer": "transfer",
            "password": "password", "reset": "reset", "change": "reset", "weather": "weather"}


class Concepts(Embeddings):
    """A small embedding a test controls: a text is the sum of its words' concepts (synonyms share
    one), other words ignored, so a paraphrase embeds to the same direction."""

    names = sorted(set(SYNONYMS.values()))

    def embed_query(self, text):
        vector = np.zeros(len(self.names) + 1)
        vector[-1] = 0.01  # never all zeros
        for word in re.findall(r"[a-z]+", text.lower()):
            if word in SYNONYMS:
                vector[self.names.index(SYNONYMS[word])] += 1.0
        return vector.tolist()

    def embed_documents(self, texts):
        return [self.embed_query(t) for t in texts]


def test_a_paraphrased_prompt_is_answered_from_the_tenants_cache_and_not_from_anothers(connect):
    alice_cache = CuratorSemanticCache(connect("alice").cache, tenant="alice", category="banking", embedding=Concepts())
    llm = FakeListLLM(responses=["$25 per wire transfer", "another answer", "a third answer"], cache=alice_cache)
    assert llm.invoke("What is the fee for a wire transfer?") == "$25 per wire transfer"  # the model answers
    assert llm.invoke("How much does a wire transfer cost?") == "$25 per wire transfer"  # the cache answers
    assert llm.i == 1  # the model was called once
    assert llm.invoke("How do I reset my password?") == "another answer"  # not alike: the model again
    bob_llm = FakeListLLM(responses=["bob's own answer"],
                          cache=CuratorSemanticCache(connect("bob").cache, tenant="bob", category="banking",
                                                     embedding=Concepts()))
    assert bob_llm.invoke("What is the fee for a wire transfer?") == "bob's own answer"  # alice's is not his
    assert connect("alice").cache.stats("alice")["categories"]["banking"]["hits"] == 1  # in its category
    alice_cache.clear()
    assert llm.invoke("How much does a wire transfer cost?") == "a third answer"  # cleared: the model again


def test_a_chat_models_conversation_is_matched_without_its_system_message_which_keys_it(connect):
    cache = CuratorSemanticCache(connect("alice").cache, tenant="alice", embedding=Concepts())
    chat = FakeListChatModel(responses=["$25", "costs vary", "unused"], cache=cache)
    polite = [SystemMessage("You are a polite bank assistant."), HumanMessage("What is the fee for a wire transfer?")]
    assert chat.invoke(polite).content == "$25"
    paraphrase = [polite[0], HumanMessage("How much does a wire transfer cost?")]
    assert chat.invoke(paraphrase).content == "$25"  # from the cache, as an AI message
    other_system = [SystemMessage("Answer in French."), paraphrase[1]]
    assert chat.invoke(other_system).content == "costs vary"  # another system message: another entry
    text, settings = cache_key(
        '[{"lc": 1, "type": "constructor", "id": ["langchain", "schema", "messages", "HumanMessage"], '
        '"kwargs": {"content": "hi", "type": "human"}}]', "llm")
    assert (text, settings) == ("hi", {"llm": "llm"})
    assert cache_key("plain prompt", "llm") == ("plain prompt", {"llm": "llm"})


def readme_example(index: int) -> str:
    """The README's code examples of "LangChain and LlamaIndex" (0: LangChain, 1: LlamaIndex)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## LangChain and LlamaIndex\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def test_the_readme_example_runs():
    exec(compile(readme_example(0), "README.md (LangChain)", "exec"), {})  # its asserts are the checks
