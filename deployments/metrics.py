"""Metrics exported to the Ray dashboard (Prometheus) through `ray.util.metrics`.

Metric objects are created inside the replica that records them.
"""

from __future__ import annotations

from ray.util.metrics import Counter


class ReplicaMetrics:
    """The metrics a backend replica records."""

    def __init__(self, backend: str) -> None:
        self._backend = backend
        self._canary_checks = Counter(
            "embedserve_canary_checks",
            description="Canary checks of a backend replica, by outcome "
            "(recorded, passed, failed).",
            tag_keys=("backend", "outcome"),
        )

    def canary(self, outcome: str) -> None:
        """Count one canary check."""
        self._canary_checks.inc(tags={"backend": self._backend, "outcome": outcome})
