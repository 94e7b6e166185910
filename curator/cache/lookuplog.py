"""A bounded log of the cache's own lookups and of the feedback given on their hits, for calibration.

`SemanticCache.calibrate()` fits per-category thresholds and margins (`calibrate.fit_policy`) from
what this log holds: one row per lookup that had a candidate entry (its category, the best
similarity, the best similarity of an entry with another answer, the entry), labelled by
`feedback()` on that entry. Only hits can be labelled (feedback names the entry that answered), so
calibration from the log can raise a threshold that served wrong answers, or keep one that served
right ones; it never sees what a lower threshold would have served.

Plain Python, thread-safe, bounded (the oldest rows go first); it keeps no prompt or answer.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

MAX_ROWS = 100_000  # lookups kept per cache
MAX_LABELS = 100_000  # feedback records kept


class LookupLog:
    def __init__(self, max_rows: int = MAX_ROWS, max_labels: int = MAX_LABELS):
        self._lock = threading.Lock()
        self._rows: collections.deque = collections.deque(maxlen=max_rows)
        self._labels: collections.OrderedDict = collections.OrderedDict()  # (tenant, entry id) -> correct
        self._max_labels = max_labels

    def record(self, tenant: str, category: str, hit: bool, similarity: float | None,
               other_similarity: float | None, entry_id: int) -> None:
        """One lookup; those without a candidate entry (empty, not cacheable, bypassed) are not kept."""
        if similarity is None:
            return
        other = -np.inf if other_similarity is None else float(other_similarity)
        with self._lock:
            self._rows.append((tenant, category, bool(hit), float(similarity), other, int(entry_id)))

    def feedback(self, tenant: str, entry_id: int, correct: bool) -> None:
        with self._lock:
            self._labels[(tenant, int(entry_id))] = bool(correct)
            self._labels.move_to_end((tenant, int(entry_id)))
            while len(self._labels) > self._max_labels:
                self._labels.popitem(last=False)

    def labelled(self, tenant: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(category names, category index, best, other, correct) of the hits that got feedback."""
        with self._lock:
            rows = [(r, self._labels[(r[0], r[5])]) for r in self._rows
                    if r[2] and (tenant is None or r[0] == tenant) and (r[0], r[5]) in self._labels]
        names = sorted({r[1] for r, _ in rows})
        index = {name: k for k, name in enumerate(names)}
        category = np.array([index[r[1]] for r, _ in rows], np.int64)
        best = np.array([r[3] for r, _ in rows], np.float64)
        other = np.array([r[4] for r, _ in rows], np.float64)
        correct = np.array([label for _, label in rows], bool)
        return names, category, best, other, correct

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)
