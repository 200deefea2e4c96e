"""One canary reference per space for the whole Ray cluster.

A named detached actor holds the references that replicas recorded: the first replica of
a space to record one wins, on whichever node it runs, and every later replica on any
node (a new pod with an empty state dir included) is checked against that reference
instead of recording what it computes itself.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import ray

from embedserve.config import ServerConfig
from embedserve.runtime.canary import CanaryReference

NAMESPACE = "embedserve"
REGISTRY_PREFIX = "canary-references-"


@ray.remote(num_cpus=0, max_restarts=-1)
class CanaryRegistry:
    """Canary references by space and probes; the first proposal of each wins."""

    def __init__(self) -> None:
        self._references: dict[tuple[str, tuple[str, ...]], CanaryReference] = {}
        self._replicas: dict[str, dict[str, Any]] = {}

    def get(self, space_id: str, probes: list[str]) -> CanaryReference | None:
        """The reference of a space for these probes, if one was recorded."""
        return self._references.get((space_id, tuple(probes)))

    def propose(self, reference: CanaryReference) -> CanaryReference:
        """Record `reference` unless its space has one; returns the one that holds."""
        key = (reference.space_id, tuple(reference.probes))
        return self._references.setdefault(key, reference)

    def report(self, replica: str, outcome: dict[str, Any]) -> None:
        """A replica's last canary outcome (for `embedserve status`)."""
        self._replicas[replica] = outcome

    def replica_outcomes(self) -> dict[str, dict[str, Any]]:
        """Each replica's last canary outcome, by replica id."""
        return dict(self._replicas)


def registry_name(server: ServerConfig) -> str:
    """The registry of a reference scope: the same state dir and pinned references (as
    configured, before `~` is expanded on each node) share one registry."""
    scope = json.dumps([server.state_dir, server.canary.references])
    return f"{REGISTRY_PREFIX}{hashlib.sha256(scope.encode()).hexdigest()[:12]}"


class ClusterCanaryReferences:
    """`ClusterReferences` through the registry actor, created by whoever asks first."""

    def __init__(self, server: ServerConfig) -> None:
        self._actor = CanaryRegistry.options(
            name=registry_name(server),
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
        ).remote()

    def get(self, space_id: str, probes: list[str]) -> CanaryReference | None:
        """The cluster's reference of a space for these probes."""
        return ray.get(self._actor.get.remote(space_id, probes))

    def propose(self, reference: CanaryReference) -> CanaryReference:
        """Record unless the space has a reference; the one that holds."""
        return ray.get(self._actor.propose.remote(reference))

    def report(self, replica: str, outcome: dict[str, Any]) -> None:
        """Tell the registry a replica's last canary outcome (not waited for)."""
        self._actor.report.remote(replica, outcome)


def replica_canaries() -> dict[str, dict[str, Any]]:
    """Every replica's last canary outcome, from every registry of the connected cluster."""
    outcomes: dict[str, dict[str, Any]] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == NAMESPACE and actor["name"].startswith(REGISTRY_PREFIX):
            registry = ray.get_actor(actor["name"], namespace=NAMESPACE)
            outcomes.update(ray.get(registry.replica_outcomes.remote(), timeout=5))
    return outcomes
