"""The questions one load client puts to the cache's `complete`: some repeat one of its earlier
questions (answered from the cache: hits), the others are new (they miss and reach the model).

A new question's embedding is a random direction in the data set's dimension, so it is far from
every entry in the cache (cosine ~0, spread 1/sqrt(dim)): it cannot hit by chance, nor make a
later repeat ambiguous. A repeat is the same tenant, category, text and vector as before, so it
hits as long as its entry lives (the harness sets no quota; entries live a day by default).
A client remembers its last `REMEMBERED` answered questions, the vectors in one flat array.
New questions differ between runs (`run`), so a second run against the same server misses as
the first did. This module never talks to a server.
"""

from dataclasses import dataclass

import numpy as np

REMEMBERED = 64  # answered questions a client may repeat


@dataclass(frozen=True)
class Question:
    tenant: str
    category: str
    text: str
    embedding: np.ndarray  # (dim,) float32

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.text}]


class Questions:
    def __init__(self, dim: int, client: int, run: int, seed: int):
        self.client, self.run = client, run
        self.rng = np.random.default_rng([seed, client, run, 11])
        self.embeddings = np.zeros((REMEMBERED, dim), np.float32)
        self.tenants: list[str] = [""] * REMEMBERED
        self.categories: list[str] = [""] * REMEMBERED
        self.texts: list[str] = [""] * REMEMBERED
        self.asked = 0  # new questions drawn so far
        self.answered = 0  # of them remembered (each overwrites the oldest once REMEMBERED are kept)

    def new(self, tenant: str, category: str) -> Question:
        self.asked += 1
        embedding = self.rng.standard_normal(self.embeddings.shape[1]).astype(np.float32)
        return Question(tenant, category, f"load test question {self.asked} of client {self.client} "
                                          f"in run {self.run}", embedding)

    def remember(self, question: Question) -> None:
        """Keep an answered question for repeats (its answer is in the cache now)."""
        slot = self.answered % REMEMBERED
        self.answered += 1
        self.embeddings[slot] = question.embedding
        self.tenants[slot], self.categories[slot], self.texts[slot] = question.tenant, question.category, question.text

    def repeat(self) -> Question | None:
        """One of the remembered questions, or None before the first was answered."""
        kept = min(self.answered, REMEMBERED)
        if kept == 0:
            return None
        slot = int(self.rng.integers(kept))
        return Question(self.tenants[slot], self.categories[slot], self.texts[slot], self.embeddings[slot])
