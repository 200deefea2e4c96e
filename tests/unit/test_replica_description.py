"""A replica's description crosses the process boundary pickled (a Serve handle returns
it): it must come back equal, with its typed capabilities, limits, load failure and
canary check, as the router's catalog and `embedserve status` read them."""

from __future__ import annotations

import pickle

from embedserve.config import BatchingConfig
from embedserve.deployments.backend_loading import LoadFailure
from embedserve.deployments.replica_description import ReplicaDescription
from embedserve.plugins.hash_backend import HashBackend
from embedserve.runtime.canary import CanaryResult


def _description() -> ReplicaDescription:
    backend = HashBackend({"dimensions": 64})
    backend.load()
    return ReplicaDescription(
        backend="hash",
        replica="hash#abc",
        kind="hash",
        space_id="hash-0123456789ab",
        available=False,
        reason="FileNotFoundError: no folder",
        load_failure=LoadFailure("FileNotFoundError: no folder", "/tmp/x.log", 2, 5.0),
        capabilities=backend.capabilities,
        batching=BatchingConfig(max_batch_size=8, max_batch_tokens=512),
        canary=CanaryResult("failed", "cosine 0.2", "pinned reference", checked_at=1.0),
    )


def test_a_description_pickles_unchanged() -> None:
    described = _description()
    returned = pickle.loads(pickle.dumps(described))
    assert returned == described
    assert returned.capabilities.dimensions == 64
    assert returned.batching.max_batch_size == 8
    assert returned.load_failure is not None and returned.load_failure.attempts == 2


def test_an_unanswered_replica_keeps_its_capabilities_not_its_availability() -> None:
    stale = _description().unanswered("TimeoutError")
    assert stale.available is None
    assert stale.reason == "the backend did not answer: TimeoutError"
    assert stale.capabilities.dimensions == 64 and stale.batching.max_batch_size == 8
