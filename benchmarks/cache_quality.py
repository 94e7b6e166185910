"""Which semantic-cache decision rules beat one global cosine threshold, on CLINC150.

    python -m benchmarks.cache_quality [--splits 20] [--seed 0]

Data: CLINC150 (Larson et al., EMNLP-IJCNLP 2019, CC BY 3.0) with all-MiniLM-L6-v2 embeddings
(``benchmarks.clinc``). A domain is a category.

Per random split (seeded): for each of the 150 intents, 20 utterances become cache entries and 30
others are looked up, with 1 000 out-of-scope utterances that must miss. An in-scope lookup comes
with its domain as category (given by the caller); an out-of-scope one gets the category of the
nearest domain centroid of the entries (the classifier of the issue). A lookup searches only its
category's entries (exact, numpy matrix products: the rules are compared here, not the index).
The lookups are halved at random: the policies are fitted on the calibration half and scored on
the other half (definitions of hit rate, false-hit rate, precision and F1 in
``curator.cache.calibrate``). The same is repeated with a small calibration set (``--small``
lookups), where per-category fits see few examples, which is what shrinkage is for.

Ablation rows, each a mechanism alone and then stacked:
  global            best single threshold
  global+margin     + ambiguity margin (global)
  global+guard      + near-miss guard
  naive per-cat     each category's own best-F1 threshold
  joint per-cat     per-category thresholds maximising overall F1 (no shrinkage), FHR-constrained
  shrunk per-cat    + empirical-Bayes shrinkage toward the global threshold
  shrunk+margin     + per-category margin (shrunk)
  shrunk+margin+guard
The near-miss part scores the guard on ``clinc.near_miss_pairs()`` at the global threshold.

Writes benchmarks/results/cache_quality.md and cache_quality.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from curator.cache import calibrate as C
from curator.cache import guard as G

from . import clinc

RESULTS = Path(__file__).parent / "results"
ENTRIES_PER_INTENT = 20
LOOKUPS_PER_INTENT = 30
OOS_LOOKUPS = 1000

POLICIES = [
    "global", "global+margin", "global+guard", "global+margin+guard", "naive per-cat",
    "joint per-cat", "shrunk per-cat", "shrunk+margin", "shrunk+margin+guard",
]
CATEGORY_AWARE = "shrunk+margin"


# ---------------------------------------------------------------------------
# One split: entries, lookups, and per-lookup search results


def make_split(data: clinc.Clinc, rng: np.random.Generator):
    """Entry rows (grouped by intent, ENTRIES_PER_INTENT each) and lookup rows (in-scope + oos)."""
    in_scope = np.flatnonzero(data.intent >= 0)
    entries, lookups = [], []
    for k in range(len(data.intent_names)):
        rows = rng.permutation(in_scope[data.intent[in_scope] == k])
        entries.append(rows[:ENTRIES_PER_INTENT])
        lookups.append(rows[ENTRIES_PER_INTENT : ENTRIES_PER_INTENT + LOOKUPS_PER_INTENT])
    oos = np.flatnonzero(data.intent < 0)
    lookups.append(rng.choice(oos, size=min(OOS_LOOKUPS, oos.size), replace=False))
    return np.concatenate(entries), np.concatenate(lookups)


def search(data: clinc.Clinc, entries: np.ndarray, lookups: np.ndarray, labels: str = "clinc"):
    """Per lookup: category, top-1 similarity, best other-answer similarity, top-1 correct,
    answerable, guard refuses the top-1, and the top-1 entry's row."""
    emb = data.embeddings
    n_dom = len(data.domain_names)
    e_dom = data.domain[entries]
    centroids = np.stack([emb[entries[e_dom == d]].mean(0) for d in range(n_dom)])
    q = emb[lookups]
    category = np.where(data.domain[lookups] >= 0, data.domain[lookups], np.argmax(q @ centroids.T, axis=1))
    top_row = np.zeros(lookups.size, dtype=np.int64)
    best = np.full(lookups.size, -np.inf)
    other = np.full(lookups.size, -np.inf)
    for d in range(n_dom):
        sel = np.flatnonzero(category == d)
        ents = entries[e_dom == d]  # grouped by intent, ENTRIES_PER_INTENT each
        s = q[sel] @ emb[ents].T
        per_answer = s.reshape(sel.size, -1, ENTRIES_PER_INTENT)
        answer_best = per_answer.max(axis=2)  # (q, answers in category)
        top_answer = np.argmax(answer_best, axis=1)
        two = np.sort(answer_best, axis=1)[:, -2:]
        best[sel], other[sel] = two[:, 1], two[:, 0]
        within = np.argmax(per_answer[np.arange(sel.size), top_answer], axis=1)
        top_row[sel] = ents[top_answer * ENTRIES_PER_INTENT + within]
    correct = data.intent[top_row] == data.intent[lookups]
    correct &= data.intent[lookups] >= 0
    if labels == "details":  # same intent *and* the same numbers, dates, entities (clinc.details)
        correct &= np.array([clinc.details(data.texts[a]) == clinc.details(data.texts[b]) for a, b in zip(lookups, top_row)])
    answerable = data.intent[lookups] >= 0  # every in-scope intent has entries in this set-up
    guarded = np.array([G.near_miss(data.texts[a], data.texts[b]) is not None for a, b in zip(lookups, top_row)])
    return category, best, other, correct, answerable, guarded, top_row


# ---------------------------------------------------------------------------
# Fitting every policy on calibration, scoring on evaluation


def fit_all(cat, best, other, correct, answerable, guarded, n_cat: int, seed: int) -> dict[str, C.Policy]:
    b_guard = np.where(guarded, -np.inf, best)  # a guarded top-1 can never hit
    p = {}
    p["global"] = C.global_policy(best, correct, answerable, n_cat)
    p["global+margin"] = C.global_policy(best, correct, answerable, n_cat, other=other)
    p["global+guard"] = C.global_policy(b_guard, correct, answerable, n_cat)
    p["global+margin+guard"] = C.global_policy(b_guard, correct, answerable, n_cat, other=other)
    p["naive per-cat"] = C.naive_policy(cat, best, correct, answerable, n_cat)
    p["joint per-cat"] = C.fit_policy(cat, best, correct, answerable, n_cat, shrinkage=False, seed=seed)
    p["shrunk per-cat"] = C.fit_policy(cat, best, correct, answerable, n_cat, seed=seed)
    p["shrunk+margin"] = C.fit_policy(cat, best, correct, answerable, n_cat, other=other, seed=seed)
    p["shrunk+margin+guard"] = C.fit_policy(cat, b_guard, correct, answerable, n_cat, other=other, seed=seed)
    return p


def score_all(policies, cat, best, other, correct, answerable, guarded, n_cat: int) -> dict:
    out = {}
    for name, pol in policies.items():
        b = np.where(guarded, -np.inf, best) if "guard" in name else best
        h = pol.hits(cat, b, other)
        r = C.metrics(h, correct, answerable)
        r["per_category"] = [C.metrics(h[cat == c], correct[cat == c], answerable[cat == c]) for c in range(n_cat)]
        r["thresholds"] = pol.thresholds.round(4).tolist()
        r["margins"] = pol.margins.round(4).tolist()
        r["prior_count"] = None if not np.isfinite(pol.prior_count) else round(float(pol.prior_count), 1)
        out[name] = r
    return out


def run_splits(data, n_splits: int, seed: int, small: int | None, labels: str = "clinc") -> list[dict]:
    n_cat = len(data.domain_names)
    results = []
    for s in range(n_splits):
        rng = np.random.default_rng([seed, s])
        entries, lookups = make_split(data, rng)
        cat, best, other, correct, answerable, guarded, _ = search(data, entries, lookups, labels)
        perm = rng.permutation(lookups.size)
        cal, ev = perm[: lookups.size // 2], perm[lookups.size // 2 :]
        if small:
            cal = cal[:small]
        arrays = lambda idx: (cat[idx], best[idx], other[idx], correct[idx], answerable[idx], guarded[idx])
        pols = fit_all(*arrays(cal), n_cat, seed=s)
        results.append(score_all(pols, *arrays(ev), n_cat))
    return results


# ---------------------------------------------------------------------------
# Near-miss pairs


def pair_embeddings(texts: list[str]) -> np.ndarray:
    key = hashlib.sha256(("\n".join(texts) + clinc.MODEL_NAME).encode()).hexdigest()[:16]
    path = clinc.CACHE_DIR / f"pairs-{key}.npy"
    if path.exists():
        return np.load(path)
    e = clinc.embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, e)
    os.replace(tmp, path)
    return e


def near_miss_eval(threshold: float, seed: int = 0) -> dict:
    pairs = clinc.near_miss_pairs(seed=seed)
    texts = sorted({t for p in pairs for t in (p.cached, p.prompt)})
    index = {t: i for i, t in enumerate(texts)}
    emb = pair_embeddings(texts)
    sim = np.array([float(emb[index[p.cached]] @ emb[index[p.prompt]]) for p in pairs])
    t0 = time.perf_counter()
    reasons = [G.near_miss(p.prompt, p.cached) for p in pairs]
    guard_us = (time.perf_counter() - t0) / len(pairs) * 1e6
    kinds = [*clinc.MUST_MISS_KINDS, *clinc.MUST_HIT_KINDS, *clinc.INFO_KINDS]
    out = {"threshold": threshold, "guard_us_per_call_cold": guard_us, "kinds": {}}
    kind = np.array([p.kind for p in pairs])
    flagged = np.array([r is not None for r in reasons])
    for k in kinds:
        sel = kind == k
        passed = sim[sel] >= threshold
        out["kinds"][k] = {
            "pairs": int(sel.sum()),
            "mean_similarity": float(sim[sel].mean()),
            "hit_without_guard": float(passed.mean()),
            "hit_with_guard": float((passed & ~flagged[sel]).mean()),
            "flagged": float(flagged[sel].mean()),
            "reasons": {r: int(sum(1 for x, kk in zip(reasons, kind) if kk == k and x == r)) for r in G.REASONS},
        }
    miss = np.isin(kind, clinc.MUST_MISS_KINDS)
    hit = np.isin(kind, clinc.MUST_HIT_KINDS)
    out["false_hit_without_guard"] = float((sim[miss] >= threshold).mean())
    out["false_hit_with_guard"] = float(((sim >= threshold) & ~flagged)[miss].mean())
    out["paraphrase_hit_without_guard"] = float((sim[hit] >= threshold).mean())
    out["paraphrase_hit_with_guard"] = float(((sim >= threshold) & ~flagged)[hit].mean())
    sweep = []
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        sweep.append({
            "threshold": t,
            "false_hit_without_guard": float((sim[miss] >= t).mean()),
            "false_hit_with_guard": float(((sim >= t) & ~flagged)[miss].mean()),
            "paraphrase_hit_without_guard": float((sim[hit] >= t).mean()),
            "paraphrase_hit_with_guard": float(((sim >= t) & ~flagged)[hit].mean()),
        })
    out["sweep"] = sweep
    examples = {}
    for k in kinds:
        examples[k] = [
            {"cached": p.cached, "prompt": p.prompt, "similarity": round(float(s), 3), "guard": r}
            for p, s, r in zip(pairs, sim, reasons) if p.kind == k
        ][:3]
    out["examples"] = examples
    return out


# ---------------------------------------------------------------------------
# Report


def summarise(results: list[dict]) -> dict:
    summary = {}
    g_f1 = np.array([r["global"]["f1"] for r in results])
    g_fhr = np.array([r["global"]["false_hit_rate"] for r in results])
    for name in POLICIES:
        rows = [r[name] for r in results]
        f1 = np.array([x["f1"] for x in rows])
        fhr = np.array([x["false_hit_rate"] for x in rows])
        summary[name] = {
            **{k: float(np.mean([x[k] for x in rows])) for k in ("f1", "precision", "hit_rate", "false_hit_rate")},
            "f1_std": float(np.std(f1)),
            "delta_f1_vs_global": float(np.mean(f1 - g_f1)),
            "wins_f1": int(np.sum(f1 > g_f1 + 1e-12)),
            "ties_f1": int(np.sum(np.abs(f1 - g_f1) <= 1e-12)),
            "wins_f1_at_no_higher_fhr": int(np.sum((f1 > g_f1 + 1e-12) & (fhr <= g_fhr + 1e-12))),
            "mean_threshold": float(np.mean([np.mean(x["thresholds"]) for x in rows])),
            "mean_margin": float(np.mean([np.mean(x["margins"]) for x in rows])),
        }
    return summary


def per_category(results: list[dict], names: list[str], policies=("global", CATEGORY_AWARE, "shrunk+margin+guard")):
    out = {}
    for pol in policies:
        out[pol] = []
        for c, cname in enumerate(names):
            rows = [r[pol]["per_category"][c] for r in results]
            out[pol].append({
                "category": cname,
                **{k: float(np.mean([x[k] for x in rows])) for k in ("f1", "precision", "hit_rate", "false_hit_rate")},
                "threshold": float(np.mean([r[pol]["thresholds"][c] for r in results])),
                "margin": float(np.mean([r[pol]["margins"][c] for r in results])),
            })
    return out


def _table(summary: dict, n: int) -> list[str]:
    lines = [
        "| policy | F1 | precision | hit rate | false-hit rate | ΔF1 vs global | F1 wins / ties | wins at FHR ≤ global | mean threshold | mean margin |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in POLICIES:
        s = summary[name]
        lines.append(
            f"| {name} | {s['f1']:.4f} ± {s['f1_std']:.4f} | {s['precision']:.4f} | {s['hit_rate']:.4f} | "
            f"{s['false_hit_rate']:.4f} | {s['delta_f1_vs_global']:+.4f} | {s['wins_f1']}/{n} · {s['ties_f1']} | "
            f"{s['wins_f1_at_no_higher_fhr']}/{n} | {s['mean_threshold']:.3f} | {s['mean_margin']:.3f} |"
        )
    return lines


def write_report(report: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache_quality.json").write_text(json.dumps(report, indent=1))
    n = report["config"]["splits"]
    L = [
        "# Semantic-cache decision rules on CLINC150",
        "",
        f"Data: {clinc.CREDIT} Embeddings: all-MiniLM-L6-v2 (unit, cosine).",
        "",
        f"`python -m benchmarks.cache_quality` — {n} random splits (seed {report['config']['seed']}); per split "
        f"{ENTRIES_PER_INTENT} entries per intent (3 000), {LOOKUPS_PER_INTENT} in-scope lookups per intent (4 500) "
        f"+ {OOS_LOOKUPS} out-of-scope lookups; lookups halved into calibration and evaluation; a lookup searches "
        "its category (domain; out-of-scope lookups: nearest domain centroid). Mean over splits of the evaluation "
        "half. Hit rate = correct hits / in-scope lookups; false-hit rate = false hits / all lookups; precision = "
        "correct hits / hits. Wins: splits where the policy's F1 beats the global threshold's (ties: equal), and "
        "where it does so at a false-hit rate no higher. Category-aware fits are constrained to no more "
        "calibration false hits than the global fit they are compared with. "
        f"Run time {report['seconds']:.0f} s.",
        "",
        f"## Full calibration half (~2 750 lookups, ~275 per category)",
        "",
        *_table(report["summary"], n),
        "",
        f"## Small calibration set ({report['config']['small']} lookups, ~{report['config']['small'] // 10} per category)",
        "",
        *_table(report["summary_small"], n),
        "",
        "## Detail-aware labels (full calibration)",
        "",
        "CLINC150 counts any two utterances of one intent as paraphrases, so \"transfer 50 dollars\" served "
        "for \"transfer 500 dollars\" is a correct hit above. Here a hit is correct only when the intent is the "
        "same *and* the numbers, dates/times and entities agree, as extracted by `benchmarks.clinc.details` "
        "(written separately from the guard, but with overlapping word lists).",
        "",
        *_table(report["summary_details"], n),
        "",
        f"## Per category (full calibration), mean over {n} splits",
        "",
        "| category | global F1 | global FHR | global t | cat-aware F1 | cat-aware FHR | t | margin | + guard F1 | + guard FHR |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pc = report["per_category"]
    for g, a, ag in zip(pc["global"], pc[CATEGORY_AWARE], pc["shrunk+margin+guard"]):
        L.append(
            f"| {g['category']} | {g['f1']:.3f} | {g['false_hit_rate']:.3f} | {g['threshold']:.3f} | {a['f1']:.3f} | "
            f"{a['false_hit_rate']:.3f} | {a['threshold']:.3f} | {a['margin']:.3f} | {ag['f1']:.3f} | {ag['false_hit_rate']:.3f} |"
        )
    nm = report["near_miss"]
    L += [
        "",
        f"## Near-miss guard on constructed pairs (threshold {nm['threshold']:.3f} = mean global fit)",
        "",
        "Pairs from `benchmarks.clinc.near_miss_pairs()`: a real utterance (cached) and an edit of it (new prompt). "
        "Must miss: a different number, date/time, negation, entity. Must hit: two real utterances of one intent "
        "with the same details (paraphrase), a meaning-preserving rewrite (paraphrase_form). "
        "`same_intent_other_details` (one intent, different details) is shown for information: CLINC counts them "
        "as paraphrases, a cache should not serve one for the other. The guard's entity lexicon and the pair "
        "builder's word lists were written separately but overlap, so the entity row is optimistic.",
        "",
        "| pairs | n | mean cosine | hit without guard | hit with guard | guard flags |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in nm["kinds"].items():
        reasons = ", ".join(f"{r} {c}" for r, c in v["reasons"].items() if c)
        L.append(f"| {k} | {v['pairs']} | {v['mean_similarity']:.3f} | {v['hit_without_guard']:.3f} | "
                 f"{v['hit_with_guard']:.3f} | {v['flagged']:.3f} ({reasons}) |")
    L += [
        "",
        f"Overall: false-hit rate on must-miss pairs {nm['false_hit_without_guard']:.3f} → {nm['false_hit_with_guard']:.3f} "
        f"with the guard; paraphrase hit rate {nm['paraphrase_hit_without_guard']:.3f} → {nm['paraphrase_hit_with_guard']:.3f}. "
        f"Guard cost {nm['guard_us_per_call_cold']:.1f} µs per call (both texts new).",
        "",
        "| threshold | false hits, no guard | false hits, guard | paraphrase hits, no guard | paraphrase hits, guard |",
        "|---|---|---|---|---|",
    ]
    for s in nm["sweep"]:
        L.append(f"| {s['threshold']:.2f} | {s['false_hit_without_guard']:.3f} | {s['false_hit_with_guard']:.3f} | "
                 f"{s['paraphrase_hit_without_guard']:.3f} | {s['paraphrase_hit_with_guard']:.3f} |")
    (RESULTS / "cache_quality.md").write_text("\n".join(L) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", type=int, default=500, help="calibration lookups in the small-calibration run")
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = clinc.load()
    results = run_splits(data, args.splits, args.seed, None)
    results_small = run_splits(data, args.splits, args.seed, args.small)
    summary = summarise(results)
    report = {
        "config": {"splits": args.splits, "seed": args.seed, "small": args.small, "entries_per_intent": ENTRIES_PER_INTENT,
                   "lookups_per_intent": LOOKUPS_PER_INTENT, "oos_lookups": OOS_LOOKUPS, "model": clinc.MODEL_NAME},
        "credit": clinc.CREDIT,
        "summary": summary,
        "summary_small": summarise(results_small),
        "summary_details": summarise(run_splits(data, args.splits, args.seed, None, labels="details")),
        "per_category": per_category(results, data.domain_names),
        "near_miss": near_miss_eval(summary["global"]["mean_threshold"], seed=args.seed),
        "splits": [{k: {kk: vv for kk, vv in v.items() if kk != "per_category"} for k, v in r.items()} for r in results],
    }
    report["seconds"] = time.perf_counter() - t0
    write_report(report)
    print((RESULTS / "cache_quality.md").read_text())


if __name__ == "__main__":
    main()
