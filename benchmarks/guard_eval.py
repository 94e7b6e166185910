"""The near-miss guard before and after issue 19, on the labelled near-miss set and on CLINC150.

    python -m benchmarks.guard_eval [--old PATH_TO_OLD_guard.py]

Two pair sets, each (cached prompt, new prompt) labelled trap (must not hit) or paraphrase
(should hit): ``benchmarks/data/near_miss_pairs.tsv`` (six classes, its own calibration and
held-out halves; ``benchmarks.near_miss_set``) and CLINC150 pairs (``clinc.near_miss_pairs``:
real utterances edited in a number, date, negation or entity, against paraphrases; halved by
position), then again with 1 000 other-intent traps added (``other_intent_pairs``), as is the
near-miss set. Both prompts are embedded with all-MiniLM-L6-v2; a pair hits when its similarity
reaches the threshold and the guard lets it through. Policies: the cache's default threshold
(``Policy().min_similarity``) and one calibrated on the calibration half with
``calibrate.fit_policy`` (lookups the guard refuses count as misses there too). Scored on the
held-out half: trap false-hit rate (traps served / traps) and should-hit rate (paraphrases
served / paraphrases). "before" is the guard of ``--old`` (a worktree of the commit before), or
none when it is not given. A third set, ``benchmarks/data/near_miss_fresh.tsv`` (54 pairs written
after the guard's classes, then run once: the "after" guard got 50 of 54 right on that first run,
"before" 24; the four it missed led to general fixes), is scored whole at the thresholds
calibrated on the near-miss set.

Writes benchmarks/results/guard_eval.md and guard_eval.json.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import random
import time
from pathlib import Path

import numpy as np

from curator.cache import calibrate as C
from curator.cache import guard as G
from curator.cache.policy import Policy

from . import clinc, near_miss_set
from .cache_quality import pair_embeddings

RESULTS = Path(__file__).parent / "results"


def _old_guard(path: str | None):
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("guard_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.near_miss


def _similarities(pairs: list[tuple[str, str]]) -> np.ndarray:
    texts = sorted({t for p in pairs for t in p})
    index = {t: i for i, t in enumerate(texts)}
    emb = pair_embeddings(texts)
    return np.array([float(emb[index[a]] @ emb[index[b]]) for a, b in pairs])


def _rate(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def score(sim, trap, refused, cal, threshold) -> dict:
    held = ~cal
    hit = (sim >= threshold) & ~refused
    return {"threshold": round(float(threshold), 4),
            "trap_false_hit_rate": float(hit[held & trap].mean()),
            "should_hit_rate": float(hit[held & ~trap].mean()),
            "traps": int((held & trap).sum()), "paraphrases": int((held & ~trap).sum())}


def evaluate(name, pairs, trap, cal, guards: dict, classes=None, subset=None) -> dict:
    """Scores on the held-out part; with ``subset`` (bool mask) the scores count only those pairs,
    while the threshold is fitted on every calibration pair."""
    sim = _similarities(pairs)
    out = {"pairs": len(pairs), "calibration": int(cal.sum()), "held_out": int((~cal).sum()), "guards": {}}
    for guard_name, fn in guards.items():
        t0 = time.perf_counter()
        refused = np.array([fn is not None and fn(p, c) is not None for c, p in pairs])
        us = (time.perf_counter() - t0) / len(pairs) * 1e6
        best = np.where(refused, -np.inf, sim)
        correct = ~trap
        fitted = C.fit_policy(np.zeros(int(cal.sum()), np.int64), best[cal], correct[cal], correct[cal], 1)
        scored = cal if subset is None else cal | ~subset  # pairs outside the subset: not scored
        row = {"guard_us_per_pair": round(us, 1),
               "default": score(sim, trap, refused, scored, Policy().min_similarity),
               "calibrated": score(sim, trap, refused, scored, fitted.thresholds[0])}
        if classes is not None:
            row["by_class"] = {}
            for k in sorted(set(classes)):
                sel = np.array([c == k for c in classes])
                t = fitted.thresholds[0]
                hit = (sim >= t) & ~refused
                row["by_class"][k] = {
                    "trap_false_hit_rate": _rate(hit[~cal & sel & trap]),
                    "should_hit_rate": _rate(hit[~cal & sel & ~trap])}
        row["fitted_threshold"] = float(fitted.thresholds[0])
        out["guards"][guard_name] = row
    return out


def evaluate_fresh(pairs, trap, guards: dict, fitted: dict) -> dict:
    """All of a set at the default threshold and at each guard's threshold fitted elsewhere."""
    sim = _similarities(pairs)
    out = {"pairs": len(pairs), "calibration": 0, "held_out": len(pairs), "guards": {}}
    none = np.zeros(len(pairs), bool)
    for guard_name, fn in guards.items():
        refused = np.array([fn is not None and fn(p, c) is not None for c, p in pairs])
        out["guards"][guard_name] = {"guard_us_per_pair": "",
                                     "default": score(sim, trap, refused, none, Policy().min_similarity),
                                     "calibrated": score(sim, trap, refused, none, fitted[guard_name])}
    return out


def other_intent_pairs(n: int = 1000, seed: int = 0, candidates: int = 50) -> list[tuple[str, str]]:
    """Hard traps from CLINC150: an utterance and, among ``candidates`` random utterances of another
    intent of its domain, the one sharing the most words with it ("what is my credit score" /
    "what is my credit limit"). A threshold alone has to stop these; the guard is not meant to."""
    rng = random.Random(seed)
    texts, intents, _, domains = clinc._read()
    domain_of = {i: d for d, names in domains.items() for i in names}
    by_domain: dict[str, list[tuple[str, str]]] = {}
    for t, i in sorted(set(zip(texts, intents))):
        if i in domain_of:
            by_domain.setdefault(domain_of[i], []).append((t, i))
    names = sorted(by_domain)
    pairs = []
    while len(pairs) < n:
        pool = by_domain[rng.choice(names)]
        text, intent = rng.choice(pool)
        words = set(text.split())
        others = [c for c in rng.sample(pool, candidates) if c[1] != intent]
        if others:
            best = max(others, key=lambda c: len(words & set(c[0].split())) / len(words | set(c[0].split())))
            pairs.append((best[0], text))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", default=None, help="the guard.py of the commit before (a git worktree)")
    args = ap.parse_args()
    guards = {"no guard": None, "before": _old_guard(args.old), "after": G.near_miss}
    if guards["before"] is None:
        del guards["before"]
    report = {}
    rows = near_miss_set.load()
    pairs = [(r["cached"], r["prompt"]) for r in rows]
    report["near_miss_set"] = evaluate(
        "near-miss set", pairs, np.array([r["label"] == "trap" for r in rows]),
        np.array([r["split"] == "calibration" for r in rows]), guards, classes=[r["class"] for r in rows])
    fresh = list(csv.DictReader((Path(__file__).parent / "data" / "near_miss_fresh.tsv").open(encoding="utf-8"),
                                delimiter="\t"))
    report["fresh_pairs"] = evaluate_fresh(
        [(r["cached"], r["prompt"]) for r in fresh], np.array([r["label"] == "trap" for r in fresh]), guards,
        {g: row["fitted_threshold"] for g, row in report["near_miss_set"]["guards"].items()})
    cp = clinc.near_miss_pairs()
    keep = [p for p in cp if p.kind in clinc.MUST_MISS_KINDS or p.kind in clinc.MUST_HIT_KINDS]
    report["clinc150"] = evaluate(
        "CLINC150", [(p.cached, p.prompt) for p in keep], np.array([p.kind in clinc.MUST_MISS_KINDS for p in keep]),
        np.arange(len(keep)) % 2 == 0, guards)
    hard = other_intent_pairs()
    n = len(rows)
    report["near_miss_set_with_other_intent_traps"] = evaluate(
        "near-miss set + other-intent traps", pairs + hard,
        np.r_[np.array([r["label"] == "trap" for r in rows]), np.ones(len(hard), bool)],
        np.r_[np.array([r["split"] == "calibration" for r in rows]), np.arange(len(hard)) % 2 == 0], guards,
        classes=[r["class"] for r in rows] + ["other intent"] * len(hard), subset=np.arange(n + len(hard)) < n)
    both = [(p.cached, p.prompt) for p in keep] + hard
    report["clinc150_with_other_intent_traps"] = evaluate(
        "CLINC150 + other-intent traps", both,
        np.r_[np.array([p.kind in clinc.MUST_MISS_KINDS for p in keep]), np.ones(len(hard), bool)],
        np.arange(len(both)) % 2 == 0, guards)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guard_eval.json").write_text(json.dumps(report, indent=1))
    lines = ["# The near-miss guard before and after (issue 19 items 2-3)", "",
             "`python -m benchmarks.guard_eval --old /tmp/guard_old/curator/cache/guard.py` (before: the guard "
             "at the commit before issue 19's guard work). Held-out halves; trap false-hit rate = traps served / "
             "traps, should-hit = paraphrases served / paraphrases; the calibrated threshold is fitted on the "
             "calibration half (`calibrate.fit_policy`) with that guard in place (fresh_pairs: at the near-miss "
             "set's calibrated threshold). CLINC150 pairs: `clinc.near_miss_pairs()` (number, date, negation, entity "
             "traps; paraphrase and paraphrase_form should hit); with other-intent traps: 1 000 pairs more, an "
             "utterance and the most word-sharing utterance of another intent of its domain (among 50 drawn), "
             "which only the threshold can stop: there the calibrated threshold means something. "
             "near_miss_set_with_other_intent_traps: the threshold is calibrated on the near-miss set's "
             "calibration half plus half of those 1 000 pairs, and scored on the near-miss set's held-out half "
             "(the by-class table adds the other-intent traps' held-out half).", ""]
    for set_name, r in report.items():
        lines += [f"## {set_name}: {r['pairs']} pairs ({r['calibration']} calibration, {r['held_out']} held out)", "",
                  "| guard | policy | threshold | trap false-hit rate | should-hit rate | guard µs/pair |",
                  "|---|---|---|---|---|---|"]
        for g, row in r["guards"].items():
            for pol in ("default", "calibrated"):
                s = row[pol]
                lines.append(f"| {g} | {pol} | {s['threshold']:.3f} | {s['trap_false_hit_rate']:.1%} | "
                             f"{s['should_hit_rate']:.1%} | {row['guard_us_per_pair']} |")
        lines.append("")
        if "by_class" in r["guards"].get("after", {}):
            lines += ["By class, calibrated policy (held out):", "",
                      "| class | " + " | ".join(f"{g} trap FHR | {g} should-hit" for g in r["guards"]) + " |",
                      "|---|" + "---|---|" * len(r["guards"])]
            for k in r["guards"]["after"]["by_class"]:
                cells = []
                for g in r["guards"]:
                    c = r["guards"][g]["by_class"][k]
                    rates = (c["trap_false_hit_rate"], c["should_hit_rate"])
                    cells += ["-" if v is None else f"{v:.0%}" for v in rates]
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
            lines.append("")
    (RESULTS / "guard_eval.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
