"""The semantic cache's public API, declared once for the embedded cache and the remote one.

`db.cache` is a `Cache` both from `curator.open(...)` and from `curator.connect(...)`; one test
suite runs against each. Similarities are cosine similarities (1 = the same direction).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Lookup:
    """What a lookup found, and why: enough for a caller to see why it hit or missed.

    reason: "hit", or for a miss: "empty" (no entry to compare with), "below_threshold",
    "expired" (the entry chosen outlived the ttl it was stored with, `store_chat`),
    "ambiguous" (an entry with a different answer is almost as close), "near_miss:<what>" (the
    guard saw a different number, date, negation, name or direction; `why` says what and
    `cached_prompt` names the prompt compared), "not_cacheable", "bypassed" (the category does
    not pay for lookups now).
    """

    hit: bool
    reason: str
    category: str
    category_source: str           # "caller", "classifier" or "default"
    threshold: float               # the min_similarity applied (after any relaxation)
    similarity: float | None = None  # of the best entry, when there was one
    answer: str | None = None      # on a hit
    cached_prompt: str | None = None  # the prompt the answer was stored for, on a hit
    age: float | None = None       # seconds since the hit entry was stored
    entry_id: int = -1             # the hit entry, for feedback
    relaxed: bool = False          # a hit only because the upstream's load relaxed the threshold
    extra: dict | None = None      # on a hit: what was stored beside the answer (`store_chat`'s extra)
    other_similarity: float | None = None  # of the best entry with another answer (what margins are fitted on)
    why: str | None = None         # on a near miss: what the guard saw differ


@dataclass(frozen=True, eq=False)
class ChatPrompt:
    """A chat request as the cache keys it, rendered, embedded and classified once, so that a front
    door calling the model itself (the HTTP gateway) looks up and later stores with the same key
    as complete(): tenant, category, embedding model, settings (params and system messages)."""

    tenant: str
    text: str                      # the conversation without its system messages: what is matched
    embedding: np.ndarray          # unit length
    model: str                     # the embedding model
    settings: str                  # the key of the params and system messages
    category: str
    category_source: str           # "caller", "classifier" or "default"
    seconds: float = 0.0           # spent rendering, embedding and classifying it


@dataclass(frozen=True)
class Completion:
    """The answer of complete(): from the cache, or from the upstream model (then stored)."""

    answer: str
    cached: bool
    lookup: Lookup
    entry_id: int = -1             # the entry that answered, or the new one; -1 when not stored
    upstream_seconds: float = 0.0  # the model's time (0 on a hit)
    shared: bool = False           # answered by an identical concurrent request's upstream call
    finish_reason: str = ""        # the upstream's (stop, length), when it answered


class Cache(ABC):
    """A semantic cache of LLM answers, partitioned by tenant, category, embedding model and
    model settings; policies per category (and per tenant)."""

    @abstractmethod
    def lookup(self, tenant: str, prompt: str | None = None, *, embedding: np.ndarray | None = None,
               category: str | None = None, model_settings: dict | None = None,
               embedding_model: str | None = None) -> Lookup:
        """The cached answer for a prompt meaning the same as an earlier one, or a miss.

        Give the prompt text (embedded by the cache), an embedding, or both (the text then serves
        the near-miss guard). No category: the classifier chooses one (see `train_classifier`)."""

    @abstractmethod
    def store(self, tenant: str, prompt: str, answer: str, *, embedding: np.ndarray | None = None,
              category: str | None = None, model_settings: dict | None = None,
              embedding_model: str | None = None) -> int:
        """Cache an answer; returns its entry id (-1 when the category is not cacheable)."""

    @abstractmethod
    def complete(self, tenant: str, messages: list[dict], *, category: str | None = None,
                 params: dict | None = None, embedding: np.ndarray | None = None,
                 embedding_model: str | None = None) -> Completion:
        """Answer chat messages from the cache, or from the upstream model (then cache the answer).

        `params`: the model settings sent upstream (model, temperature, max_tokens, ...); they and
        any system message key the entry. Identical concurrent misses make one upstream call."""

    @abstractmethod
    def invalidate(self, tenant: str, category: str | None = None) -> int:
        """Drop a tenant's entries (of one category, or all); returns how many."""

    @abstractmethod
    def feedback(self, tenant: str, entry_id: int, *, correct: bool) -> None:
        """Report whether a hit was right; a wrong one is counted as a false hit and dropped."""

    @abstractmethod
    def set_policy(self, category: str | None, tenant: str | None = None, **changes) -> dict:
        """Change the default policy (category None), a category's, or a tenant's override of one;
        returns the resulting policy. Fields: see `curator.cache.policy.Policy`."""

    @abstractmethod
    def policy(self, category: str, tenant: str | None = None) -> dict:
        """The policy of a category as configured and as in effect now (under the upstream's load)."""

    @abstractmethod
    def train_classifier(self, examples: dict[str, list[str]], *, min_similarity: float = 0.0) -> None:
        """Learn to choose a category for prompts that come without one, from example prompts."""

    @abstractmethod
    def classify(self, prompt: str | None = None, *, embedding: np.ndarray | None = None) -> tuple[str, float]:
        """The category the classifier gives a prompt, and its similarity to that category."""

    @abstractmethod
    def stats(self, tenant: str | None = None) -> dict:
        """Per category: lookups, hits, misses, relaxed hits, false hits, evictions, expirations,
        entries, bytes and the observed hit rate. For a tenant, only what its own lookups and
        stores made, and its limits (`limits.py`); for all (tenant None, an admin's), also each
        category's measured costs and break-even hit rate, and the upstream's load."""
