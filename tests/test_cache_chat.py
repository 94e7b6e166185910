"""The engine's API for front doors that call the model themselves (the HTTP gateway):
chat_prompt / lookup_chat / store_chat key entries exactly as complete() does, lookups may ask for
entries no older than max_age, an entry may carry a ttl of its own and a small `extra`, and a
refreshed answer may replace the entries of the very same prompt. In memory, with a bag-of-words
stand-in embedder and a stepped clock (no sleeping)."""

import zlib

import numpy as np
import pytest

from benchmarks.stand_in_llm import StandInLLM
from curator import InvalidArgumentError
from curator.cache import SemanticCache
from curator.cache.records import MemoryRecords
from curator.cache.upstream import Upstream


class Words:
    """A 64-d bag of words: the same words in any order embed to the same vector."""

    name, dim = "test-words", 64

    def embed(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        return out / np.linalg.norm(out, axis=1, keepdims=True)


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self):
        return self.now


def chat(text, system=None):
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def cache(clock):
    return SemanticCache(embedder=Words(), clock=clock)


def test_store_chat_then_lookup_chat_hits_with_extra(cache):
    prompt = cache.chat_prompt("acme", chat("what is the capital of france"), params={"model": "m"}, category="geo")
    assert (prompt.category, prompt.category_source, prompt.model) == ("geo", "caller", "test-words")
    assert not cache.lookup_chat(prompt).hit
    entry = cache.store_chat(prompt, "Paris", extra={"usage": {"completion_tokens": 1}, "finish_reason": "stop"})
    assert entry >= 0
    again = cache.chat_prompt("acme", chat("the capital of france is what"), params={"model": "m"}, category="geo")
    hit = cache.lookup_chat(again)
    assert hit.hit and hit.answer == "Paris" and hit.entry_id == entry
    assert hit.cached_prompt == prompt.text != again.text  # a similar prompt, not the same one
    assert hit.extra == {"usage": {"completion_tokens": 1}, "finish_reason": "stop"}
    assert cache.stats("acme")["categories"]["geo"]["hits"] == 1


def test_chat_prompts_are_keyed_as_complete_keys_them(clock):
    with StandInLLM() as llm:
        cache = SemanticCache(embedder=Words(), clock=clock, upstream=Upstream(llm.url, timeout=2))
        messages = chat("how do I sort a list", system="you are terse")
        done = cache.complete("acme", messages, params={"model": "m", "temperature": 0}, category="code")
        assert not done.cached and llm.calls == 1
        prompt = cache.chat_prompt("acme", messages, params={"model": "m", "temperature": 0}, category="code")
        assert cache.lookup_chat(prompt).answer == done.answer
        # other params or another system message are other entries
        for other in (cache.chat_prompt("acme", messages, params={"model": "m", "temperature": 1}, category="code"),
                      cache.chat_prompt("acme", chat("how do I sort a list", system="be verbose"),
                                        params={"model": "m", "temperature": 0}, category="code")):
            assert not cache.lookup_chat(other).hit
        # and what store_chat stores, complete() serves
        mine = cache.chat_prompt("acme", chat("how do I reverse a list"), params={"model": "m"}, category="code")
        cache.store_chat(mine, "reversed(xs)")
        served = cache.complete("acme", chat("how do I reverse a list"), params={"model": "m"}, category="code")
        assert served.cached and served.answer == "reversed(xs)" and llm.calls == 1


def test_another_tenant_never_sees_the_entry(cache):
    cache.store_chat(cache.chat_prompt("acme", chat("the secret plan"), category="c"), "acme's answer")
    other = cache.lookup_chat(cache.chat_prompt("globex", chat("the secret plan"), category="c"))
    assert not other.hit and other.reason == "empty" and other.answer is None


def test_max_age_accepts_only_younger_entries_and_keeps_the_older(cache, clock):
    prompt = cache.chat_prompt("acme", chat("what is the price of gold"), category="finance")
    cache.store_chat(prompt, "old answer")
    clock.now += 30
    assert cache.lookup_chat(prompt, max_age=30).hit  # exactly as old as allowed
    miss = cache.lookup_chat(prompt, max_age=29.5)
    assert not miss.hit and miss.reason == "empty"
    assert cache.lookup_chat(prompt).hit  # the entry is still there for callers without the limit
    cache.store_chat(prompt, "new answer")
    assert cache.lookup_chat(prompt, max_age=0).answer == "new answer"  # stored at this very moment


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "10", True])
def test_bad_max_age_and_ttl_are_refused(cache, bad):
    prompt = cache.chat_prompt("acme", chat("hello there"))
    with pytest.raises(InvalidArgumentError, match="max_age"):
        cache.lookup_chat(prompt, max_age=bad)
    with pytest.raises(InvalidArgumentError, match="ttl"):
        cache.store_chat(prompt, "hi", ttl=bad)
    with pytest.raises(InvalidArgumentError, match="ttl"):
        cache.store_chat(prompt, "hi", ttl=0)


def test_an_entry_with_its_own_ttl_expires_and_is_removed(cache, clock):
    prompt = cache.chat_prompt("acme", chat("what is the weather"), category="chat")
    cache.store_chat(prompt, "sunny", ttl=5)
    clock.now += 5
    assert cache.lookup_chat(prompt).hit
    clock.now += 0.5
    late = cache.lookup_chat(prompt)
    assert not late.hit and late.reason == "expired"
    assert cache.stats("acme")["categories"]["chat"]["expirations"] == 1
    assert cache.stats("acme")["entries"] == 0


def test_the_expiry_sweep_removes_entries_past_their_own_ttl_never_looked_up(clock):
    """The background sweep (`expire`, every EXPIRY_SWEEP_EVERY stores) enforces an entry's own ttl
    as the category's: an entry nobody asks for again does not hold its bytes until it is chosen;
    a reopened cache knows each entry's own ttl from its record."""
    records = MemoryRecords()
    cache = SemanticCache(records, embedder=Words(), clock=clock)
    short = cache.chat_prompt("acme", chat("what is the weather"), category="chat")
    cache.store_chat(short, "sunny", ttl=5)
    cache.store_chat(cache.chat_prompt("acme", chat("a yearly report"), category="chat"), "report", ttl=1e6)
    cache.store_chat(cache.chat_prompt("acme", chat("the capital of france"), category="chat"), "Paris")
    clock.now += 5
    assert cache.expire() == 0
    reopened = SemanticCache(records, embedder=Words(), clock=clock)
    clock.now += 0.5
    for each in (cache, reopened):
        assert each.expire() == 1 and each.stats("acme")["entries"] == 2
        assert each.stats("acme")["categories"]["chat"]["expirations"] == 1
        assert each.expire() == 0
    assert not reopened.lookup_chat(short).hit


def test_the_category_ttl_still_bounds_an_entry_with_a_longer_one(cache, clock):
    cache.set_policy("news", ttl=10)
    prompt = cache.chat_prompt("acme", chat("latest headlines"), category="news")
    cache.store_chat(prompt, "headlines", ttl=1_000)
    clock.now += 11
    assert not cache.lookup_chat(prompt).hit


def test_extra_must_be_a_small_json_mapping(cache):
    prompt = cache.chat_prompt("acme", chat("hello there"))
    for bad, message in (([1], "mapping"), ({"x": object()}, "JSON"), ({"x": "y" * 5000}, "at most")):
        with pytest.raises(InvalidArgumentError, match=message):
            cache.store_chat(prompt, "hi", extra=bad)
    assert cache.stats("acme")["entries"] == 0


def test_replace_drops_the_entries_of_the_very_same_prompt_only(cache):
    first = cache.chat_prompt("acme", chat("how do I sort a list"), category="code")
    similar = cache.chat_prompt("acme", chat("a list how do I sort"), category="code")  # same words, other text
    cache.store_chat(first, "sorted(xs)")
    cache.store_chat(similar, "xs.sort()")
    cache.store_chat(first, "sorted(xs) again")  # without replace: both answers kept
    assert cache.stats("acme")["entries"] == 3
    cache.store_chat(first, "sorted(xs, key=f)", replace=True)
    assert cache.stats("acme")["entries"] == 2  # the two of `first` replaced; `similar`'s stays
    answers = set()
    for _ in range(2):
        answers.add(cache.lookup_chat(first).answer)
    assert "sorted(xs) again" not in answers and "sorted(xs)" not in answers


def test_store_chat_in_a_category_not_cacheable_stores_nothing(cache):
    cache.set_policy("private", cacheable=False)
    prompt = cache.chat_prompt("acme", chat("my password is"), category="private")
    assert cache.store_chat(prompt, "hunter2") == -1
    assert cache.lookup_chat(prompt).reason == "not_cacheable"


def test_an_answer_over_the_categorys_bytes_is_not_stored(cache):
    cache.set_policy("small", max_bytes=1_000)
    prompt = cache.chat_prompt("acme", chat("write an essay"), category="small")
    assert cache.store_chat(prompt, "x" * 2_000) == -1
    assert cache.store_chat(prompt, "short") >= 0
