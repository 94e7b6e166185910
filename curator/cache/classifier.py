"""Choosing a prompt's category when the caller gives none: the nearest category centroid.

Trained from labelled example prompts (their embeddings): each category's centroid is the unit
mean of its examples; a prompt goes to the category whose centroid is most similar. Below
`min_similarity` (no centroid is close) the prompt goes to the default category. Small and
exact: one matrix-vector product per lookup.
"""

import numpy as np

from ..errors import InvalidArgumentError
from .embedders import unit_rows


class CentroidClassifier:
    def __init__(self, categories: list[str], centroids: np.ndarray, min_similarity: float = 0.0):
        self.categories = list(categories)
        self.centroids = np.ascontiguousarray(centroids, np.float32)
        self.min_similarity = float(min_similarity)

    @classmethod
    def fit(cls, labels: list[str], embeddings: np.ndarray, min_similarity: float = 0.0) -> "CentroidClassifier":
        labels = np.asarray(labels)
        if labels.size == 0 or labels.size != len(embeddings):
            raise InvalidArgumentError(f"a classifier needs one category per example: "
                                       f"{labels.size} categories for {len(embeddings)} examples")
        categories, codes = np.unique(labels, return_inverse=True)
        sums = np.zeros((len(categories), embeddings.shape[1]), np.float64)
        np.add.at(sums, codes, embeddings)
        return cls([str(c) for c in categories], unit_rows(sums), min_similarity)

    def classify(self, embedding: np.ndarray) -> tuple[str | None, float]:
        """(category, similarity to its centroid); category None when no centroid is close enough."""
        similarities = self.centroids @ embedding
        best = int(np.argmax(similarities))
        score = float(similarities[best])
        return (self.categories[best] if score >= self.min_similarity else None), score

    def as_dict(self) -> dict:
        return {"categories": self.categories, "centroids": self.centroids.tolist(),
                "min_similarity": self.min_similarity}

    @classmethod
    def from_dict(cls, data: dict) -> "CentroidClassifier":
        return cls(data["categories"], np.asarray(data["centroids"], np.float32), data["min_similarity"])
