"""The upstream's load, as seen from the cache, and how far relaxable policies follow it.

Pressure is a number in [0, 1] from two observations: the upstream's recent latency (an
exponentially weighted mean of completed calls) against `latency_target`, and the calls in flight
against `inflight_target`. Each reaches full pressure at twice its target. A relaxable policy's
threshold then moves from `min_similarity` down toward its floor, and its TTL up toward its
ceiling, in proportion; other policies never move.
"""

import dataclasses
import threading

from .policy import Policy


class LoadMonitor:
    def __init__(self, latency_target: float = 2.0, inflight_target: int = 16, smoothing: float = 0.2):
        self.latency_target, self.inflight_target, self.smoothing = latency_target, inflight_target, smoothing
        self._lock = threading.Lock()
        self._latency: float | None = None
        self._inflight = 0

    def started(self) -> None:
        with self._lock:
            self._inflight += 1

    def finished(self, seconds: float | None) -> None:
        """A call ended: with its latency, or None when it failed before answering."""
        with self._lock:
            self._inflight -= 1
            if seconds is not None:
                self._latency = seconds if self._latency is None else \
                    (1 - self.smoothing) * self._latency + self.smoothing * seconds

    def pressure(self) -> float:
        with self._lock:
            latency, inflight = self._latency, self._inflight
        by_latency = 0.0 if latency is None else latency / self.latency_target - 1.0
        by_inflight = inflight / self.inflight_target - 1.0
        return min(1.0, max(0.0, by_latency, by_inflight))

    def snapshot(self) -> dict:
        with self._lock:
            latency, inflight = self._latency, self._inflight
        return {"pressure": self.pressure(), "upstream_latency_s": latency, "upstream_in_flight": inflight,
                "latency_target_s": self.latency_target, "inflight_target": self.inflight_target}


def relaxed(policy: Policy, pressure: float) -> Policy:
    """The policy in effect at this pressure."""
    if not policy.relaxable or pressure <= 0.0:
        return policy
    changes = {}
    if policy.min_similarity_floor is not None:
        changes["min_similarity"] = policy.min_similarity - pressure * (policy.min_similarity - policy.min_similarity_floor)
    if policy.ttl_ceiling is not None and policy.ttl is not None:
        changes["ttl"] = policy.ttl + pressure * (policy.ttl_ceiling - policy.ttl)
    return dataclasses.replace(policy, **changes)
