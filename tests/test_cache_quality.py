"""Unit tests of the cache's near-miss guard and of the decision-rule calibration (fast, no model)."""

import numpy as np
import pytest

from curator.cache import calibrate as C
from curator.cache.guard import near_miss


@pytest.mark.parametrize(
    "cached, prompt, reason",
    [
        ("transfer 50 dollars to savings", "transfer 500 dollars to savings", "number"),
        ("book a table for two people", "book a table for four people", "number"),
        ("set an alarm for 6pm", "set an alarm for 7 pm", "date"),
        ("what do i have on march 2nd", "what do i have on march 3rd", "date"),
        ("what is on my calendar for monday", "what is on my calendar for friday", "date"),
        ("what is the weather tomorrow", "what is the weather", "date"),
        ("i want to cancel my reservation", "i do not want to cancel my reservation", "negation"),
        ("my card was declined", "my card wasn't declined", "negation"),
        ("how do i say hello in french", "how do i say hello in spanish", "entity"),
        ("convert 20 dollars to euros", "convert 20 dollars to yen", "entity"),
        ("send money from chase to wells fargo", "send money from chase to bank of america", "entity"),
    ],
)
def test_guard_flags_each_reason(cached, prompt, reason):
    assert near_miss(prompt, cached) == reason


@pytest.mark.parametrize(
    "cached, prompt",
    [
        ("transfer fifty dollars to savings", "transfer $50 to savings"),
        ("set an alarm for 6pm", "please set an alarm for 6:00 p.m."),
        ("what do i have on march 2nd", "what do i have on the 2nd of march"),
        ("book a table for two at olive garden", "book a table for 2 at olive garden"),
        ("flight from nyc to paris", "flight from new york to paris"),
        ("what is the weather today", "what is the weather"),
        ("i don't know how to spell mississippi", "how do i spell mississippi"),
        ("i lost my phone", "i can't find my phone do you know where it is"),
        ("i need to rollover my 401k", "how do i roll over my 401k"),
        ("twenty five hundred dollars", "2500 dollars"),
        ("what is my credit card's apr", "what's the annual percentage rate for my card"),
    ],
)
def test_guard_lets_paraphrases_through(cached, prompt):
    assert near_miss(prompt, cached) is None


def test_guard_is_symmetric_on_examples():
    a, b = "transfer 50 dollars", "transfer 500 dollars"
    assert near_miss(a, b) == near_miss(b, a) == "number"


def test_shrinkage_weights_monotone_in_counts():
    counts = np.array([0, 1, 5, 20, 100, 1000])
    w = C.shrinkage_weights(counts, prior_count=30.0)
    assert w[0] == 0.0 and np.all(np.diff(w) > 0) and w[-1] < 1.0
    shrunk = C.shrink(np.full(6, 0.9), 0.5, counts, 30.0)
    assert np.all(np.diff(np.abs(shrunk - 0.5)) > 0)  # more data, closer to its own value
    assert np.allclose(C.shrink(np.full(3, 0.9), 0.5, np.array([1, 10, 100]), np.inf), 0.5)


def test_fit_threshold_finds_the_f1_optimum():
    # 6 answerable lookups with correct top-1 at 0.9..0.65, 2 false at 0.7 and 0.5, one oos at 0.8.
    best = np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.7, 0.5, 0.8])
    correct = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)
    answerable = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
    t, f1 = C.fit_threshold(best, correct, answerable)
    # brute force over every cut
    brute = max(C.metrics(best >= s, correct, answerable)["f1"] for s in np.r_[best, 2.0])
    assert f1 == pytest.approx(brute)
    assert C.metrics(best >= t, correct, answerable)["f1"] == pytest.approx(brute)
    assert 0.5 < t <= 0.65  # hits down to 0.65: TP 6, FP 2 -> F1 = 12 / (12 + 2 + 2) = 0.75
    assert f1 == pytest.approx(12 / 16)


def test_per_category_fit_recovers_two_optima_and_beats_global():
    # Category 0 is dense (false hits up to 0.8), category 1 sparse (paraphrases down to 0.4).
    rng = np.random.default_rng(0)
    n = 400
    cat = np.repeat([0, 1], n)
    correct = rng.random(2 * n) < 0.6
    best = np.where(
        cat == 0,
        np.where(correct, rng.uniform(0.82, 1.0, 2 * n), rng.uniform(0.3, 0.8, 2 * n)),
        np.where(correct, rng.uniform(0.4, 1.0, 2 * n), rng.uniform(0.0, 0.38, 2 * n)),
    )
    answerable = correct.copy()
    g = C.global_policy(best, correct, answerable, 2)
    p = C.fit_policy(cat, best, correct, answerable, 2)
    assert 0.8 <= p.thresholds[0] <= 0.82 and 0.38 <= p.thresholds[1] <= 0.4
    mg = C.metrics(g.hits(cat, best), correct, answerable)
    mp = C.metrics(p.hits(cat, best), correct, answerable)
    assert mp["f1"] > mg["f1"] and mp["false_hits"] <= mg["false_hits"]
    assert mp["f1"] == pytest.approx(1.0)


def test_fit_policy_never_more_false_hits_than_global():
    rng = np.random.default_rng(1)
    n = 600
    cat = rng.integers(0, 5, n)
    correct = rng.random(n) < 0.5
    best = np.clip(rng.normal(0.6, 0.15, n) + 0.15 * correct, 0, 1)
    other = best - np.abs(rng.normal(0.05, 0.05, n)) * (1 + correct)
    answerable = correct | (rng.random(n) < 0.3)
    for oth in (None, other):
        g = C.global_policy(best, correct, answerable, 5, other=oth)
        p = C.fit_policy(cat, best, correct, answerable, 5, other=oth)
        mg = C.metrics(g.hits(cat, best, oth), correct, answerable)
        mp = C.metrics(p.hits(cat, best, oth), correct, answerable)
        assert mp["false_hits"] <= mg["false_hits"] and mp["f1"] >= mg["f1"] - 1e-12


def test_decide_threshold_and_margin():
    sims = np.array([0.70, 0.91, 0.88, 0.60])
    answers = np.array([3, 1, 2, 1])
    assert C.decide(sims, answers, threshold=0.9) == 1
    assert C.decide(sims, answers, threshold=0.95) is None
    assert C.decide(sims, answers, threshold=0.9, margin=0.05) is None  # 0.91 vs 0.88 (answer 2)
    assert C.decide(sims, answers, threshold=0.9, margin=0.03) == 1
    same = np.array([1, 1, 1, 1])  # one answer only: no ambiguity
    assert C.decide(sims, same, threshold=0.9, margin=0.5) == 1
    assert C.decide(np.array([]), np.array([]), threshold=0.0) is None
    assert C.decide(np.array([0.0]), np.array([7]), threshold=0.0) == 0  # 0 is a real threshold
    assert C.decide(np.array([np.nan]), np.array([7]), threshold=0.0) is None


def test_vectorised_rule_matches_decide():
    rng = np.random.default_rng(2)
    for _ in range(200):
        sims = rng.uniform(0, 1, 6)
        answers = rng.integers(0, 3, 6)
        i = int(np.argmax(sims))
        other = sims[answers != answers[i]].max(initial=-np.inf)
        t, m = rng.uniform(0.3, 0.9), rng.uniform(0, 0.2)
        expect = C.decide(sims, answers, t, m) is not None
        assert bool(C.hits(np.array([sims[i]]), t, np.array([other]), m)[0]) == expect


def test_metrics_definitions():
    hit = np.array([1, 1, 1, 0, 0, 1], dtype=bool)
    correct = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    answerable = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    m = C.metrics(hit, correct, answerable)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["hit_rate"] == pytest.approx(2 / 4)
    assert m["false_hit_rate"] == pytest.approx(2 / 6)
    assert m["f1"] == pytest.approx(0.5)
