"""One canary reference per space for the whole Ray cluster, in Ray's internal KV.

The first replica of a space to record a reference wins, on whichever node it runs, and
every later replica on any node (a new pod with an empty state dir included) is checked
against that reference instead of recording what it computes itself.

The references live in the GCS's key-value store, not in an actor's memory: with GCS
fault tolerance (an external Redis, KubeRay's `gcsFaultToleranceOptions`) they outlive
the head, whose loss would restart an actor empty. A reference never changes once
recorded, so each replica keeps the ones it has seen and a health check needs no GCS.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from embedserve.config import ServerConfig
from embedserve.runtime.canary import CanaryReference

KV_NAMESPACE = b"embedserve"
KEY_PREFIX = "canary-references-"
# A GCS that is restarting answers nothing: a call gives up rather than wait for it.
KV_TIMEOUT_S = 10.0

logger = logging.getLogger(__name__)


def registry_name(server: ServerConfig) -> str:
    """The registry of a reference scope: the same state dir and pinned references (as
    configured, before `~` is expanded on each node) share one registry."""
    scope = json.dumps([server.state_dir, server.canary.references])
    return f"{KEY_PREFIX}{hashlib.sha256(scope.encode()).hexdigest()[:12]}"


def reference_key(registry: str, space_id: str, probes: list[str]) -> bytes:
    """The KV key of a space's reference for these probes."""
    digest = hashlib.sha256(json.dumps([space_id, list(probes)]).encode()).hexdigest()
    return f"{registry}/reference/{digest}".encode()


def outcome_key(registry: str, replica: str) -> bytes:
    """The KV key of a replica's last canary outcome."""
    return f"{registry}/replica/{replica}".encode()


def _gcs() -> Any:
    """This process's GCS client (a worker's or a driver's, set up by Ray at connect)."""
    from ray.experimental.internal_kv import internal_kv_get_gcs_client

    client = internal_kv_get_gcs_client()
    if client is None:
        raise RuntimeError("not connected to Ray: the canary registry needs its GCS")
    return client


class ClusterCanaryReferences:
    """`ClusterReferences` in the GCS's internal KV, scoped by `registry_name`."""

    def __init__(self, server: ServerConfig) -> None:
        self._registry = registry_name(server)
        self._known: dict[bytes, CanaryReference] = {}
        # Reports are not waited for: a health check must not stall while the GCS restarts.
        self._reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="canary-report")

    def get(self, space_id: str, probes: list[str]) -> CanaryReference | None:
        """The cluster's reference of a space for these probes."""
        key = reference_key(self._registry, space_id, probes)
        if key not in self._known:
            stored = _gcs().internal_kv_get(key, KV_NAMESPACE, timeout=KV_TIMEOUT_S)
            if stored is None:
                return None
            self._known[key] = CanaryReference(**json.loads(stored))
        return self._known[key]

    def propose(self, reference: CanaryReference) -> CanaryReference:
        """Record unless the space has a reference; the one that holds."""
        key = reference_key(self._registry, reference.space_id, reference.probes)
        value = json.dumps(asdict(reference)).encode()
        # Without overwrite the put is the GCS's compare-and-set: 1 when this one was added.
        added = _gcs().internal_kv_put(key, value, False, KV_NAMESPACE, timeout=KV_TIMEOUT_S)
        if added:
            self._known[key] = reference
            return reference
        held = self.get(reference.space_id, reference.probes)
        assert held is not None, "a reference is never deleted"
        return held

    def report(self, replica: str, outcome: dict[str, Any]) -> None:
        """Record a replica's last canary outcome (for `embedserve status`), not waited for."""
        self._reporter.submit(self._store_outcome, replica, outcome)

    def _store_outcome(self, replica: str, outcome: dict[str, Any]) -> None:
        value = json.dumps(outcome).encode()
        try:
            _gcs().internal_kv_put(
                outcome_key(self._registry, replica),
                value,
                True,
                KV_NAMESPACE,
                timeout=KV_TIMEOUT_S,
            )
        except Exception as exc:  # the next check reports again
            logger.warning("could not record replica %s's canary outcome: %s", replica, exc)


def replica_canaries() -> dict[str, dict[str, Any]]:
    """Every replica's last canary outcome, from every registry of the connected cluster."""
    gcs = _gcs()
    outcomes: dict[str, dict[str, Any]] = {}
    for key in gcs.internal_kv_keys(KEY_PREFIX.encode(), KV_NAMESPACE, timeout=KV_TIMEOUT_S):
        _, kind, replica = key.decode().split("/", 2)
        if kind == "replica":
            stored = gcs.internal_kv_get(key, KV_NAMESPACE, timeout=KV_TIMEOUT_S)
            if stored is not None:
                outcomes[replica] = json.loads(stored)
    return outcomes
