"""Fitting the cache's decision rule from calibration lookups, and the rule itself.

The rule (``decide``): a lookup hits its best entry when

    best >= threshold[category]  and  best - best_other_answer >= margin[category]

where ``best`` is the cosine similarity of the most similar entry and ``best_other_answer`` that of
the most similar entry whose answer differs from the best entry's (-inf when there is none). The
margin refuses a hit that is ambiguous between two different answers. The near-miss guard
(``curator.cache.guard.near_miss``) runs after this, on the hit only.

Calibration data, one row per calibration lookup (flat numpy arrays of equal length):

* ``category``: int category index of the lookup (0 .. n_categories-1);
* ``best``: top-1 similarity (``-inf`` when the category has no entry, or when something outside
  the rule, e.g. the guard, already refuses the top-1 entry);
* ``correct``: the top-1 entry's answer is right for this lookup (CLINC150: same intent);
* ``answerable``: some entry in the cache has a right answer (CLINC150: the lookup's intent has an
  entry). Lookups that must miss (out-of-scope) are ``answerable = correct = False``;
* ``other``: optional, the best similarity among entries with an answer other than the top-1's.

Definitions (exact; the benchmark and the tests use these):

* hit: the rule says yes; correct hit: a hit with ``correct``; false hit: a hit without it;
* precision = correct hits / hits (1.0 when there is no hit);
* hit rate = correct hits / answerable lookups;
* false-hit rate = false hits / all lookups (the share of requests served a wrong answer);
* F1 = 2 * precision * hit rate / (precision + hit rate) = 2 TP / (2 TP + FP + FN), FN = answerable - TP.

Fitting (``fit_policy``):

1. Global: the threshold (and optionally margin, from a grid) of best calibration F1. Thresholds
   are midpoints between consecutive calibration similarities.
2. Per category, jointly: F1 over all lookups is maximal exactly when each category maximises
   TP_c - lam * FP_c with lam = F1* / (2 - F1*) (Dinkelbach); we iterate lam from the global F1
   and raise it if needed until the total false hits are not above the global policy's
   (the constraint "false-hit rate no higher than the global threshold's").
3. Shrinkage: t_c = t_g + w_c (t_c_raw - t_g) with w_c = n_c / (n_c + k), n_c the category's
   calibration lookups. k = s2 / tau2 is an empirical-Bayes estimate: s2 / n_c is the sampling
   variance of a category's raw threshold (bootstrap), tau2 the spread of true category
   thresholds beyond sampling noise. Margins are shrunk the same way.
4. A category whose calibration hits, under the policy chosen, are all wrong gets a threshold
   just above its highest wrong hit (``ABOVE_WRONG`` over it; above 1.0 the category never hits
   unless the prompt is the same): one-sided evidence is not pulled back to the global threshold
   by shrinkage, and removing hits that are all false never lowers F1.

Plain functions over numpy arrays; no state, no I/O. It must never look at prompts or answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEG_INF = -np.inf
ABOVE_WRONG = 1e-3  # how far above a category's highest wrong hit its threshold goes (step 4)
DEFAULT_MARGINS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.10)


# ---------------------------------------------------------------------------
# The rule


def decide(similarities: np.ndarray, answer_ids: np.ndarray, threshold: float, margin: float = 0.0) -> int | None:
    """Index of the hit among the candidates, or None for a miss.

    ``similarities`` (m,) are cosine similarities of the category's top-m entries (any order),
    ``answer_ids`` (m,) identify their answers (entries with equal ids give the same answer).
    Hit: the best entry reaches ``threshold`` and beats every entry with a different answer by at
    least ``margin``. With top-m candidates, a different answer outside them counts as absent, so
    search m >= 10 when ``margin > 0``.
    """
    if len(similarities) == 0:
        return None
    i = int(np.argmax(similarities))
    best = float(similarities[i])
    if not best >= threshold:  # also refuses NaN
        return None
    if margin > 0.0:
        others = similarities[answer_ids != answer_ids[i]]
        if others.size and best - float(others.max()) < margin:
            return None
    return i


def hits(best: np.ndarray, threshold, other: np.ndarray | None = None, margin=0.0) -> np.ndarray:
    """The rule over many lookups: bool (n,). ``threshold``/``margin`` are scalars or per-lookup."""
    h = best >= threshold
    if other is not None:
        h &= (best - other) >= margin
    return h


# ---------------------------------------------------------------------------
# Metrics


def metrics(hit: np.ndarray, correct: np.ndarray, answerable: np.ndarray) -> dict:
    """hit rate, false-hit rate, precision, F1 (definitions in the module docstring)."""
    tp = int(np.sum(hit & correct))
    fp = int(np.sum(hit & ~correct))
    a = int(np.sum(answerable))
    n = int(hit.size)
    precision = tp / (tp + fp) if tp + fp else 1.0
    hit_rate = tp / a if a else 0.0
    f1 = 2 * tp / (2 * tp + fp + (a - tp)) if (tp + fp + a) else 0.0
    return {
        "lookups": n, "answerable": a, "hits": tp + fp, "correct_hits": tp, "false_hits": fp,
        "hit_rate": hit_rate, "false_hit_rate": fp / n if n else 0.0, "precision": precision, "f1": f1,
    }


# ---------------------------------------------------------------------------
# Threshold fitting


def _cuts(best: np.ndarray, correct: np.ndarray):
    """Candidate thresholds (descending) with the TP and FP counts of ``best >= t`` at each.

    The first candidate (+inf) hits nothing; then one per distinct finite similarity, placed
    midway to the next lower similarity so a fitted threshold does not sit on a sample.
    """
    finite = np.isfinite(best)
    s = best[finite]
    c = correct[finite]
    order = np.argsort(-s, kind="stable")
    s, c = s[order], c[order]
    tp = np.cumsum(c)
    fp = np.cumsum(~c)
    # last index of each run of equal similarities
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True]) if s.size else np.zeros(0, dtype=int)
    nxt = np.r_[s[last[:-1] + 1], s[-1] - 1e-3] if s.size else np.zeros(0)
    thr = (s[last] + nxt) / 2 if s.size else np.zeros(0)
    return (np.r_[np.inf, thr], np.r_[0, tp[last]], np.r_[0, fp[last]])


def fit_threshold(best: np.ndarray, correct: np.ndarray, answerable: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) of the single threshold with the best calibration F1."""
    thr, tp, fp = _cuts(best, correct)
    a = int(np.sum(answerable))
    f1 = 2 * tp / np.maximum(2 * tp + fp + (a - tp), 1)
    k = int(np.argmax(f1))  # first max: the highest threshold among ties
    return float(thr[k]), float(f1[k])


def fit_threshold_margin(best, correct, answerable, other, margins=DEFAULT_MARGINS) -> tuple[float, float, float]:
    """(threshold, margin, F1) of the best global pair; the smallest margin wins ties."""
    out = None
    for m in margins:
        eff = np.where(best - other >= m, best, NEG_INF)
        t, f1 = fit_threshold(eff, correct, answerable)
        if out is None or f1 > out[2] + 1e-12:
            out = (t, float(m), f1)
    return out


def _utility_threshold(best, correct, lam: float) -> tuple[float, float]:
    """(threshold, TP - lam * FP) maximising the linear utility within one category."""
    thr, tp, fp = _cuts(best, correct)
    u = tp - lam * fp
    k = int(np.argmax(u))
    return float(thr[k]), float(u[k])


def _raw_category_fit(category, best, correct, other, n_categories, lam, margins, default_t, default_m):
    """Unshrunk per-category (threshold, margin) maximising TP_c - lam FP_c each."""
    t = np.full(n_categories, default_t, dtype=np.float64)
    m = np.full(n_categories, default_m, dtype=np.float64)
    for c in range(n_categories):
        sel = category == c
        if not sel.any():
            continue
        b, y = best[sel], correct[sel]
        if other is None:
            t[c], _ = _utility_threshold(b, y, lam)
            continue
        o = other[sel]
        best_u = None
        for mm in margins:
            tt, u = _utility_threshold(np.where(b - o >= mm, b, NEG_INF), y, lam)
            if best_u is None or u > best_u + 1e-12:
                best_u, t[c], m[c] = u, tt, mm
    return t, m


def shrinkage_weights(counts: np.ndarray, prior_count: float) -> np.ndarray:
    """w_c = n_c / (n_c + prior_count): 0 for an empty category, -> 1 as it grows (monotone)."""
    counts = np.asarray(counts, dtype=np.float64)
    if not np.isfinite(prior_count):
        return np.zeros_like(counts)
    return counts / (counts + max(prior_count, 0.0)) if prior_count > 0 else (counts > 0).astype(np.float64)


def shrink(raw: np.ndarray, global_value: float, counts: np.ndarray, prior_count: float) -> np.ndarray:
    """Per-category values pulled toward the global one, the more the fewer calibration lookups."""
    w = shrinkage_weights(counts, prior_count)
    raw = np.where(np.isfinite(raw), raw, global_value)  # a category with no hit candidates
    return global_value + w * (raw - global_value)


def estimate_prior_count(category, best, correct, other, n_categories, lam, margins, default_t, default_m,
                         boots: int = 30, seed: int = 0) -> float:
    """Empirical-Bayes k = s2 / tau2 for ``shrink`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    raw_t, _ = _raw_category_fit(category, best, correct, other, n_categories, lam, margins, default_t, default_m)
    counts = np.bincount(category, minlength=n_categories)
    present = np.flatnonzero((counts > 1) & np.isfinite(raw_t))
    if present.size < 2:
        return np.inf
    var_c = np.zeros(n_categories)
    for c in present:
        idx = np.flatnonzero(category == c)
        samples = []
        for _ in range(boots):
            j = rng.choice(idx, size=idx.size, replace=True)
            o = None if other is None else other[j]
            tt, _ = _raw_category_fit(np.zeros(j.size, dtype=np.int64), best[j], correct[j], o, 1, lam, margins,
                                      default_t, default_m)
            samples.append(tt[0] if np.isfinite(tt[0]) else default_t)
        var_c[c] = np.var(samples)
    s2 = float(np.mean(var_c[present] * counts[present]))  # sampling variance x n, pooled
    tau2 = float(np.var(raw_t[present]) - np.mean(var_c[present]))
    if tau2 <= 1e-8:
        return np.inf  # no spread beyond noise: everything shrinks to the global value
    return s2 / tau2


@dataclass(frozen=True)
class Policy:
    """A fitted decision rule: per-category threshold and margin (index = category)."""

    thresholds: np.ndarray  # float64 (n_categories,)
    margins: np.ndarray  # float64 (n_categories,)
    global_threshold: float
    global_margin: float
    prior_count: float  # k of the shrinkage (inf: all global; 0: no shrinkage)
    lam: float  # the Dinkelbach weight of a false hit relative to a correct hit

    def hits(self, category: np.ndarray, best: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
        o = None if other is None or not np.any(self.margins > 0) else other
        return hits(best, self.thresholds[category], o, self.margins[category])


def global_policy(best, correct, answerable, n_categories: int, other=None, margins=DEFAULT_MARGINS) -> Policy:
    """One threshold (and margin when ``other`` is given) for every category."""
    if other is None:
        t, f1 = fit_threshold(best, correct, answerable)
        m = 0.0
    else:
        t, m, f1 = fit_threshold_margin(best, correct, answerable, other, margins)
    return Policy(np.full(n_categories, t), np.full(n_categories, m), t, m, np.inf, f1 / (2 - f1))


def naive_policy(category, best, correct, answerable, n_categories: int) -> Policy:
    """Each category its own best-F1 threshold, fitted alone (what the issue calls naive)."""
    g = global_policy(best, correct, answerable, n_categories)
    t = g.thresholds.copy()
    for c in range(n_categories):
        sel = category == c
        if sel.any() and answerable[sel].any():
            t[c], _ = fit_threshold(best[sel], correct[sel], answerable[sel])
    return Policy(t, np.zeros(n_categories), g.global_threshold, 0.0, 0.0, g.lam)


def fit_policy(category: np.ndarray, best: np.ndarray, correct: np.ndarray, answerable: np.ndarray,
               n_categories: int, other: np.ndarray | None = None, shrinkage: bool = True,
               margins=DEFAULT_MARGINS, iterations: int = 8, seed: int = 0) -> Policy:
    """The category-aware policy: joint per-category thresholds (and margins), shrunk, constrained.

    Never more false hits on the calibration lookups than the global policy fitted the same way
    (threshold only, or threshold + margin when ``other`` is given). See the module docstring.
    """
    category = np.asarray(category, dtype=np.int64)
    correct = np.asarray(correct, dtype=bool)
    answerable = np.asarray(answerable, dtype=bool)
    g = global_policy(best, correct, answerable, n_categories, other, margins)
    budget = int(np.sum(g.hits(category, best, other) & ~correct))
    counts = np.bincount(category, minlength=n_categories)
    ms = margins if other is not None else (0.0,)

    def build(lam: float, k: float) -> Policy:
        raw_t, raw_m = _raw_category_fit(category, best, correct, other, n_categories, lam, ms,
                                         g.global_threshold, g.global_margin)
        if shrinkage:
            t = shrink(raw_t, g.global_threshold, counts, k)
            m = shrink(raw_m, g.global_margin, counts, k)
        else:
            t = np.where(np.isfinite(raw_t), raw_t, g.global_threshold)
            m = raw_m
        return Policy(t, m, g.global_threshold, g.global_margin, k if shrinkage else 0.0, lam)

    def score(p: Policy) -> tuple[float, int]:
        h = p.hits(category, best, other)
        r = metrics(h, correct, answerable)
        return r["f1"], r["false_hits"]

    lam = g.lam
    k = estimate_prior_count(category, best, correct, other, n_categories, lam, ms, g.global_threshold,
                             g.global_margin, seed=seed) if shrinkage else 0.0
    best_p, best_f1 = g, score(g)[0]
    for _ in range(iterations):  # Dinkelbach: lam <- F1 / (2 - F1) of the last policy
        p = build(lam, k)
        f1, fp = score(p)
        if fp <= budget and f1 > best_f1 + 1e-12:
            best_p, best_f1 = p, f1
        new_lam = f1 / (2 - f1)
        if fp > budget:
            new_lam = max(new_lam, lam) * 1.25  # too many false hits: weigh them more
        if abs(new_lam - lam) < 1e-6:
            break
        lam = new_lam
    return refuse_all_wrong(best_p, category, best, correct, n_categories, other)


def refuse_all_wrong(p: Policy, category, best, correct, n_categories: int, other=None) -> Policy:
    """``p`` with the threshold of each category whose hits under ``p`` are all wrong raised just
    above its highest wrong hit (step 4 of ``fit_policy``)."""
    category = np.asarray(category, dtype=np.int64)
    correct = np.asarray(correct, dtype=bool)
    h = p.hits(category, best, other)
    n_hits = np.bincount(category[h], minlength=n_categories)
    n_right = np.bincount(category[h & correct], minlength=n_categories)
    wrong_only = np.flatnonzero((n_hits > 0) & (n_right == 0))
    if wrong_only.size == 0:
        return p
    t = p.thresholds.copy()
    for c in wrong_only:
        t[c] = max(t[c], float(np.max(best[h & (category == c)])) + ABOVE_WRONG)
    return Policy(t, p.margins, p.global_threshold, p.global_margin, p.prior_count, p.lam)
