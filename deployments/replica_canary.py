"""A backend replica's canary supervision: it embeds fixed probes at load and at every
health check, judges the vectors against the space's reference (pinned, the cluster's,
or this replica's own first vectors), and stops the replica serving while they differ.

The checks judge; the replica embeds the probes (at load directly, at a health check
through its batch queue like any request) and refuses requests while `failure` is set.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace

import numpy as np
from ray import serve

from embedserve.backend import EmbedInput
from embedserve.config import ServerConfig
from embedserve.deployments.canary_registry import ClusterCanaryReferences
from embedserve.deployments.metrics import ReplicaMetrics
from embedserve.runtime.canary import CanaryConfig, CanaryReferences, CanaryResult

logger = logging.getLogger("ray.serve")


class CanarySupervisor:
    """One replica's canary checks: their probes, verdicts, and why it must not serve."""

    def __init__(
        self,
        backend_name: str,
        space_id: str,
        config: CanaryConfig,
        server: ServerConfig,
        metrics: ReplicaMetrics,
    ) -> None:
        self._name = backend_name
        self._space_id = space_id
        self._config = config
        self._metrics = metrics
        self._cluster = ClusterCanaryReferences(server)
        self._references = CanaryReferences.of(server.state_dir, server.canary, self._cluster)
        self.failure: str | None = None  # why the replica refuses requests now
        self.last: CanaryResult | None = None  # the last check, with when it ran

    @property
    def enabled(self) -> bool:
        """Whether this backend's config runs canary checks."""
        return self._config.enabled

    def probes(self) -> list[EmbedInput]:
        """The inputs every check embeds, each in a batch of its own."""
        return [EmbedInput(text) for text in self._config.probes]

    def judge(self, vectors: np.ndarray) -> None:
        """Judge the probes' vectors (one row per probe) against the space's reference."""
        self.record(self._references.evaluate(self._space_id, self._config, vectors))

    def raised(self, exc: Exception) -> None:
        """A check failed because embedding the probes raised."""
        self.record(CanaryResult("failed", f"the probes raised {type(exc).__name__}: {exc}"))

    def stop_serving(self, why: str) -> None:
        """Refuse requests until a later check passes (a batch gave non-finite vectors)."""
        self.failure = why
        logger.error("backend %s: %s", self._name, why)

    def record(self, result: CanaryResult) -> None:
        """Keep a check's result, count it, report it to the cluster and log a change."""
        self._metrics.canary(result.outcome)
        # Logged once per change of outcome, not at every health check.
        last = self.last
        changed = last is None or last.problem != result.problem
        passed_before = last is not None and last.outcome == "passed"
        if result.outcome == "recorded":
            logger.info("backend %s: canary reference recorded for %s", self._name, self._space_id)
        elif result.outcome == "failed" and changed:
            logger.error("backend %s failed its canary check: %s", self._name, result.problem)
        elif result.outcome == "passed" and (changed or not passed_before):
            logger.info("backend %s: canary passed against the %s", self._name, result.origin)
        self.failure = result.problem
        self.last = replace(result, checked_at=time.time())
        replica = serve.get_replica_context().replica_id.unique_id
        self._cluster.report(
            replica, {"backend": self._name, "space_id": self._space_id, **asdict(self.last)}
        )
