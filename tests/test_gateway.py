"""The OpenAI-compatible HTTP gateway (server/gateway.py), driven by the official `openai` client
against a real server on loopback whose cache fronts the stand-in LLM (curator_loadtest/stand_in_llm.py,
which also embeds: a bag of words, so prompts of the same words in another order are similar).

Each test asks its own questions (the server is shared by the module), so tests do not meet
each other's entries. No wall-clock assertions."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from curator_loadtest.stand_in_llm import EMBEDDING_DIM, StandInLLM
from curator_server.app import CuratorServer, ServerConfig
from curator_server.auth import key_entry
from curator_server.gateway import GatewayConfig
from curator_server.openai_wire import StreamReader, controls, upstream_body

KEYS = {"alice": ["alice"], "bob": ["bob"], "multi": ["alice", "carol"], "slow": ["slow"]}
MAX_BODY = 64 << 10


@pytest.fixture(scope="module")
def llm():
    with StandInLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def healthy(llm):
    llm.delay, llm.status, llm.break_stream, llm.finish_reason = 0.0, 200, False, "stop"


def cache_config(llm) -> dict:
    return {"embedding": {"url": llm.url, "model": "stand-in-words", "dim": EMBEDDING_DIM},
            "upstream": {"url": llm.url, "timeout": 5.0}}


@pytest.fixture(scope="module")
def server(llm, tmp_path_factory):
    directory = tmp_path_factory.mktemp("gateway")
    keys = directory / "keys.toml"
    entries = [key_entry(name, f"key-of-{name}", tenants, False) for name, tenants in KEYS.items()]
    entries[-1] += "writes_per_second = 0.001\nburst = 1\n"  # "slow": one request, then a long wait
    entries.append(key_entry("ops", "key-of-ops", [], True))
    keys.write_text("\n".join(entries))
    keys.chmod(0o600)
    config = ServerConfig(data=":memory:", port=0, metrics_port=0, keys=str(keys), cache=cache_config(llm),
                          gateway=GatewayConfig(port=0, max_body_bytes=MAX_BODY))
    running = CuratorServer(config).start()
    yield running
    running.stop()


def client(server, key="key-of-alice", **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.gateway.port}/v1", api_key=key, max_retries=0,
                         timeout=10, default_headers=headers or None)


def ask(openai_client, text, **options):
    """(the answer's text, X-Cache, the response headers, the parsed completion), not streamed."""
    raw = openai_client.chat.completions.with_raw_response.create(
        model="stand-in", messages=[{"role": "user", "content": text}], **options)
    completion = raw.parse()
    return completion.choices[0].message.content, raw.headers.get("x-cache"), raw.headers, completion


def ask_streamed(openai_client, text, **options):
    """(the answer's text, X-Cache, the response headers, the chunks), streamed."""
    raw = openai_client.chat.completions.with_raw_response.create(
        model="stand-in", messages=[{"role": "user", "content": text}], stream=True, **options)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, raw.headers.get("x-cache"), raw.headers, chunks


# -- hits and misses ---------------------------------------------------------------------------------


def test_a_miss_then_a_hit_with_the_headers_and_the_upstreams_shape(server, llm):
    alice = client(server)
    calls = llm.calls
    answer, cache, headers, first = ask(alice, "how many legs does a spider have")
    assert cache == "MISS" and answer.startswith("answer ") and llm.calls == calls + 1
    assert headers["x-cache-category"] == "default" and "x-cache-age" not in headers
    assert first.usage.completion_tokens == len(answer.split())
    again, cache, headers, second = ask(alice, "how many legs does a spider have")
    assert (again, cache) == (answer, "HIT") and llm.calls == calls + 1
    assert headers["x-cache-similarity"] == "1.0000" and headers["x-cache-category"] == "default"
    assert int(headers["x-cache-age"]) >= 0 and "prompt;dur=" in headers["server-timing"]
    assert second.object == "chat.completion" and second.model == first.model
    assert second.choices[0].finish_reason == "stop" and second.usage == first.usage and second.id != first.id
    # the same words in another order: a similar prompt, not the same one
    similar, cache, headers, _ = ask(alice, "does a spider have how many legs")
    assert (similar, cache) == (answer, "SEMANTIC_HIT") and llm.calls == calls + 1
    assert float(headers["x-cache-similarity"]) > 0.99


def test_a_streamed_miss_is_relayed_and_stored_then_replayed(server, llm):
    alice = client(server)
    calls = llm.calls
    answer, cache, headers, chunks = ask_streamed(alice, "name a colour of the rainbow",
                                                  stream_options={"include_usage": True})
    assert cache == "MISS" and answer.startswith("answer ") and llm.calls == calls + 1
    assert headers["content-type"].startswith("text/event-stream") and headers["x-cache-category"] == "default"
    assert len(chunks) > 3 and chunks[-1].usage.completion_tokens == len(answer.split())
    replayed, cache, headers, chunks = ask_streamed(alice, "name a colour of the rainbow",
                                                    stream_options={"include_usage": True})
    assert (replayed, cache) == (answer, "HIT") and llm.calls == calls + 1
    assert headers["x-cache-similarity"] == "1.0000" and int(headers["x-cache-age"]) >= 0
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == len(answer.split())
    # without include_usage, no usage chunk; and the whole answer serves a request not streamed
    _, _, _, chunks = ask_streamed(alice, "name a colour of the rainbow")
    assert all(c.usage is None for c in chunks)
    assert ask(alice, "of the rainbow name a colour")[:2] == (answer, "SEMANTIC_HIT")


def test_a_long_cached_answer_is_replayed_in_several_chunks(server, llm):
    alice = client(server)
    question = "tell me a long story about " + " ".join(f"w{i}" for i in range(60))
    answer, cache, _, _ = ask(alice, question)
    assert cache == "MISS" and len(answer) > 200
    replayed, cache, _, chunks = ask_streamed(alice, question)
    assert (replayed, cache) == (answer, "HIT") and len(chunks) >= 5


def test_the_category_comes_from_the_header_and_keys_the_entry(server, llm):
    alice = client(server)
    answer, cache, headers, _ = ask(alice, "what does grep do", extra_headers={"X-Cache-Category": "code"})
    assert cache == "MISS" and headers["x-cache-category"] == "code"
    assert ask(alice, "what does grep do", extra_headers={"X-Cache-Category": "code"})[:2] == (answer, "HIT")
    other, cache, headers, _ = ask(alice, "what does grep do", extra_headers={"X-Cache-Category": "chat"})
    assert cache == "MISS" and headers["x-cache-category"] == "chat" and other != answer


def test_params_and_system_messages_key_the_entry(server, llm):
    alice = client(server)
    answer, _, _, _ = ask(alice, "what is a monad", temperature=0)
    assert ask(alice, "what is a monad", temperature=0)[:2] == (answer, "HIT")
    assert ask(alice, "what is a monad", temperature=1)[1] == "MISS"
    raw = alice.chat.completions.with_raw_response.create(
        model="stand-in", temperature=0, messages=[{"role": "system", "content": "be brief"},
                                                   {"role": "user", "content": "what is a monad"}])
    assert raw.headers["x-cache"] == "MISS"


def test_requests_the_cache_cannot_answer_pass_through_as_bypass(server, llm):
    alice = client(server)
    calls = llm.calls
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    for _ in range(2):
        assert ask(alice, "call a tool please", tools=[tool])[1] == "BYPASS"
    assert ask(alice, "two answers please", n=2)[1] == "BYPASS"
    assert llm.calls == calls + 3


def test_identical_concurrent_misses_make_one_upstream_call(server, llm):
    llm.delay = 1.0  # the first is still waiting for the model when the others look up
    calls = llm.calls
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(client(server), "one question asked four times at once")[:2], range(4)))
    assert llm.calls == calls + 1
    assert len({answer for answer, _ in answers}) == 1 and {cache for _, cache in answers} <= {"MISS", "HIT"}


# -- tenants -------------------------------------------------------------------------------------------


def test_two_keys_never_share_an_entry(server, llm):
    alice, bob = client(server), client(server, "key-of-bob")
    question = "what is the secret launch code"
    mine, cache, _, _ = ask(alice, question)
    assert cache == "MISS"
    theirs, cache, _, _ = ask(bob, question)
    assert cache == "MISS" and theirs != mine
    assert ask(alice, question)[:2] == (mine, "HIT")
    assert ask(bob, question)[:2] == (theirs, "HIT")
    # streamed too, and whatever the body says about users or tenants
    assert ask_streamed(bob, question, user="alice")[:2] == (theirs, "HIT")
    assert ask(bob, question, extra_body={"tenant": "alice"})[0] not in (mine, theirs)  # another setting: a miss
    fresh = "what is the other secret code"
    mine, _, _, _ = ask_streamed(alice, fresh)
    assert ask_streamed(bob, fresh, user="alice")[1] == "MISS"


def test_a_key_of_several_tenants_or_admin_names_one_of_its_own(server, llm):
    question = "which tenant am I asking for"
    mine, _, _, _ = ask(client(server), question)
    multi = client(server, "key-of-multi")
    with pytest.raises(openai.BadRequestError) as refused:
        ask(multi, question)
    assert "X-Curator-Tenant" in refused.value.body["message"]
    assert ask(multi, question, extra_headers={"X-Curator-Tenant": "alice"})[:2] == (mine, "HIT")
    assert ask(multi, question, extra_headers={"X-Curator-Tenant": "carol"})[1] == "MISS"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        ask(multi, question, extra_headers={"X-Curator-Tenant": "bob"})
    assert refused.value.status_code == 403 and refused.value.body["code"] == "permission_denied"
    admin = client(server, "key-of-ops")
    with pytest.raises(openai.BadRequestError):
        ask(admin, question)
    assert ask(admin, question, extra_headers={"X-Curator-Tenant": "alice"})[:2] == (mine, "HIT")
    # a key bound to one tenant may name it, and only it
    assert ask(client(server, **{"X-Curator-Tenant": "alice"}), question)[1] == "HIT"
    with pytest.raises(openai.PermissionDeniedError):
        ask(client(server, **{"X-Curator-Tenant": "bob"}), question)


def test_a_wrong_or_missing_key_is_401_in_openais_error_shape(server, llm):
    calls = llm.calls
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(client(server, "not-a-key"), "hello there")
    assert refused.value.status_code == 401
    assert set(refused.value.body) == {"message", "type", "param", "code"}
    assert refused.value.body["code"] == "invalid_api_key"
    request = urllib.request.Request(f"http://127.0.0.1:{server.gateway.port}/v1/chat/completions",
                                     json.dumps({"model": "m", "messages": []}).encode(),
                                     {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401 and set(json.load(refused.value)["error"]) == {"message", "type", "param",
                                                                                      "code"}
    with pytest.raises(openai.AuthenticationError):
        client(server, "not-a-key").models.list()
    assert llm.calls == calls


# -- controls ---------------------------------------------------------------------------------------


def test_no_cache_skips_the_lookup_and_refreshes_the_entry(server, llm):
    alice = client(server)
    old, _, _, _ = ask(alice, "what is the latest news")
    new, cache, _, _ = ask(alice, "what is the latest news", extra_headers={"Cache-Control": "no-cache"})
    assert cache == "MISS" and new != old
    assert ask(alice, "what is the latest news")[:2] == (new, "HIT")
    # LiteLLM's body object does the same, streamed too
    newer, cache, _, _ = ask_streamed(alice, "what is the latest news", extra_body={"cache": {"no-cache": True}})
    assert cache == "MISS" and newer not in (old, new)
    assert ask(alice, "what is the latest news")[:2] == (newer, "HIT")


def test_no_store_does_not_store(server, llm):
    alice = client(server)
    first, cache, _, _ = ask(alice, "roll a die for me", extra_headers={"Cache-Control": "no-store"})
    assert cache == "MISS"
    second, cache, _, _ = ask_streamed(alice, "roll a die for me", extra_body={"cache": {"no-store": True}})
    assert cache == "MISS" and second != first
    third, cache, _, _ = ask(alice, "roll a die for me")
    assert cache == "MISS" and third not in (first, second)
    assert ask(alice, "roll a die for me", extra_headers={"Cache-Control": "no-store"})[:2] == (third, "HIT")
    assert ask(alice, "roll a die for me", extra_headers={"Cache-Control": "no-cache, no-store"})[1] == "BYPASS"


def test_max_age_accepts_only_younger_entries(server, llm):
    alice = client(server)
    old, _, _, _ = ask(alice, "what time is it in lima")
    assert ask(alice, "what time is it in lima", extra_headers={"Cache-Control": "max-age=3600"})[:2] == (old, "HIT")
    new, cache, _, _ = ask(alice, "what time is it in lima", extra_headers={"Cache-Control": "max-age=0"})
    assert cache == "MISS" and new != old  # the entry was some milliseconds old
    assert ask(alice, "what time is it in lima")[:2] == (new, "HIT")  # and the new answer replaced it
    assert ask(alice, "what time is it in lima", extra_body={"cache": {"s-maxage": 3600}})[:2] == (new, "HIT")
    with pytest.raises(openai.BadRequestError) as refused:
        ask(alice, "what time is it in lima", extra_headers={"Cache-Control": "max-age=soon"})
    assert refused.value.body["param"] == "Cache-Control"


def test_litellm_cache_controls_are_checked_and_not_forwarded():
    assert controls("no-cache, max-age=5") == controls(None, {"no-cache": True, "s-maxage": 5})
    assert controls("max-age=50", {"s-maxage": 5, "ttl": 60, "no-store": True}).__dict__ == \
        {"lookup": True, "store": False, "max_age": 5.0, "ttl": 60.0}
    for bad in ({"namespace": "bob"}, {"ttl": -1}, {"no-cache": "yes"}, ["no-cache"]):
        with pytest.raises(ValueError):
            controls(None, bad)
    assert json.loads(upstream_body({"model": "m", "messages": [], "cache": {"ttl": 5}})) == {"model": "m",
                                                                                             "messages": []}


def test_a_ttl_of_litellms_cache_object_is_accepted(server, llm):
    alice = client(server)
    answer, cache, _, _ = ask(alice, "what is the pressure today", extra_body={"cache": {"ttl": 3600}})
    assert cache == "MISS"
    assert ask(alice, "what is the pressure today")[:2] == (answer, "HIT")


# -- failures and limits -----------------------------------------------------------------------------


def test_a_stream_that_breaks_off_is_never_stored(server, llm):
    alice = client(server)
    llm.break_stream = True
    with pytest.raises(openai.APIError):
        ask_streamed(alice, "explain quantum tunnelling briefly")
    llm.break_stream = False
    answer, cache, _, _ = ask(alice, "explain quantum tunnelling briefly")
    assert cache == "MISS"
    assert ask(alice, "explain quantum tunnelling briefly")[:2] == (answer, "HIT")


def test_a_stream_cut_short_is_relayed_but_not_stored(server, llm):
    alice = client(server)
    llm.finish_reason = "content_filter"
    _, cache, _, chunks = ask_streamed(alice, "say something filtered")
    assert cache == "MISS" and [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
    llm.finish_reason = "stop"
    assert ask(alice, "say something filtered")[1] == "MISS"


def test_upstream_errors_pass_through_with_their_status_and_are_not_stored(server, llm):
    alice = client(server)
    llm.status = 503
    for call in (ask, ask_streamed):
        with pytest.raises(openai.InternalServerError) as failed:
            call(alice, "is the model up")
        assert failed.value.status_code == 503 and "overloaded" in failed.value.body["message"]
    llm.status = 429
    with pytest.raises(openai.RateLimitError):
        ask(alice, "is the model up")
    llm.status = 200
    assert ask(alice, "is the model up")[1] == "MISS"


def test_an_oversized_body_is_413_in_openais_error_shape(server, llm):
    calls = llm.calls
    with pytest.raises(openai.APIStatusError) as refused:
        ask(client(server), "x " * MAX_BODY)
    assert refused.value.status_code == 413 and refused.value.body["code"] == "request_too_large"
    assert set(refused.value.body) == {"message", "type", "param", "code"}
    assert llm.calls == calls


def test_a_key_over_its_rate_is_429_with_retry_after(server, llm):
    slow = client(server, "key-of-slow")
    ask(slow, "one question")
    with pytest.raises(openai.RateLimitError) as refused:
        ask(slow, "one question")
    assert refused.value.body["code"] == "rate_limit_exceeded"
    assert int(refused.value.response.headers["retry-after"]) >= 1


def test_models_are_passed_through(server, llm):
    assert [m.id for m in client(server).models.list()] == ["stand-in"]


def test_other_routes_and_bad_requests_answer_in_openais_error_shape(server, llm):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{server.gateway.port}/v1/nothing", timeout=10)
    assert refused.value.code == 404 and set(json.load(refused.value)["error"]) == {"message", "type", "param",
                                                                                      "code"}
    alice = client(server)
    with pytest.raises(openai.BadRequestError) as refused:
        ask(alice, "hello there", extra_headers={"X-Cache-Category": "c" * 300})
    assert refused.value.body["param"] == "X-Cache-Category"
    # nothing to match (blank text): the model answers it, uncached
    raw = alice.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "  "}])
    assert raw.headers["x-cache"] == "BYPASS"


def test_requests_are_counted_by_route_status_and_outcome(server, llm):
    alice = client(server)
    ask(alice, "count me in")
    ask(alice, "count me in")
    with pytest.raises(openai.AuthenticationError):
        ask(client(server, "not-a-key"), "count me in")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    chat = 'route="/v1/chat/completions"'
    for labels in ('cache="HIT"', 'cache="MISS"', 'cache="none"'):
        assert any(line.startswith("curator_http_requests_total{") and chat in line and labels in line
                   for line in text.splitlines()), labels
    assert "curator_http_request_seconds_bucket" in text


# -- the shapes, without a server ----------------------------------------------------------------------


def test_the_stream_reader_stores_only_a_whole_answer():
    def events(*chunks, done=True):
        out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
        return out + (b"data: [DONE]\n\n" if done else b"")

    def piece(text, finish=None):
        return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}

    whole = events(piece("hel"), piece("lo", "stop"))
    reader = StreamReader(limit=100)
    relayed = []
    for i in range(0, len(whole), 7):  # events split anywhere on the way
        relayed += reader.feed(whole[i:i + 7])
    assert b"".join(relayed) == whole and reader.whole and reader.text == "hello"
    for unfit in (events(piece("hel"), piece("lo", "stop"), done=False),  # broke off
                  events(piece("hel"), piece("lo", "length"), {"error": {"message": "x"}}),
                  events(piece("hel"), {"choices": [{"index": 1, "delta": {"content": "x"}}]}, piece("", "stop")),
                  events(piece("x" * 101, "stop")),  # over the limit
                  events(piece("hel"))):  # no finish reason
        reader = StreamReader(limit=100)
        reader.feed(unfit)
        assert not reader.whole


def test_the_gateway_stops_gracefully_in_open_mode(llm, tmp_path):
    config = ServerConfig(data=":memory:", port=0, cache=cache_config(llm), gateway=GatewayConfig(port=0))
    running = CuratorServer(config).start()
    try:
        anyone = openai.OpenAI(base_url=f"http://127.0.0.1:{running.gateway.port}/v1", api_key="anything",
                               max_retries=0, timeout=10)
        answer, cache, headers, _ = ask(anyone, "open mode question")
        assert cache == "MISS" and headers["x-cache-category"] == "default"
        assert ask(anyone, "open mode question", extra_headers={"X-Curator-Tenant": "other"})[1] == "MISS"
        assert ask(anyone, "open mode question")[:2] == (answer, "HIT")
        assert running.db.cache.stats("default")["entries"] == 1
    finally:
        running.stop()
    with pytest.raises(openai.APIConnectionError):
        ask(anyone, "open mode question")


def test_without_an_upstream_v1_answers_503_saying_why():
    server = CuratorServer(ServerConfig(data=":memory:", port=0, gateway=GatewayConfig(port=0))).start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.gateway.port}/v1", api_key="open mode", max_retries=0)
        with pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert raised.value.status_code == 503 and "fronts no model" in str(raised.value)
    finally:
        server.stop()
