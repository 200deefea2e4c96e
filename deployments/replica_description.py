"""What a backend replica says of itself (`BackendDeployment.describe`), one typed value
that the router's catalog, `embedserve status` and the tests read.

Pure Python (no Ray): it crosses the process boundary pickled, through a Serve handle,
and `embedserve.deployments.status` reads it without importing Ray at import.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from embedserve.backend import BackendCapabilities
from embedserve.config import BatchingConfig
from embedserve.deployments.backend_loading import LoadFailure
from embedserve.runtime.canary import CanaryResult


@dataclass(frozen=True)
class ReplicaDescription:
    """One replica's backend: its space, whether it can serve (and why not), its
    capabilities (as loaded, or as configured while the load fails), the batch limits it
    applies now (its `reconfigure`d `user_config`, `auto` resolved on its device) and its
    last canary check."""

    backend: str
    replica: str
    kind: str
    space_id: str
    # None: the replica did not answer the last time it was asked (the catalog keeps the
    # rest of its last description).
    available: bool | None
    reason: str | None
    load_failure: LoadFailure | None
    capabilities: BackendCapabilities
    batching: BatchingConfig
    canary: CanaryResult | None = None

    def unanswered(self, reason: str) -> ReplicaDescription:
        """This description when the replica no longer answers: the loaded capabilities
        and limits are kept, not the claim that it can serve."""
        return replace(self, available=None, reason=f"the backend did not answer: {reason}")
