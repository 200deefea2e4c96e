"""The engine's one call, `EmbeddingEngine.embed`, without HTTP: a parsed request in, a
domain result out (vectors, metadata, usage), through in-process backend handles."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import embedserve.deployments.catalog
import embedserve.deployments.engine
from embedserve.backend import BackendCapabilities
from embedserve.deployments.catalog import BackendCatalog
from embedserve.deployments.engine import EmbeddingEngine, EmbeddingResult, ParsedRequest
from embedserve.errors import ModelNotFound, Overloaded
from embedserve.space import truncated_space_id
from tests.unit.fakes import (
    SPACE_A,
    TEXTS,
    A,
    B,
    BackendHandle,
    DyingReplicaHandle,
    MatryoshkaHandle,
    MatryoshkaHash,
    OverloadedHandle,
    RaisingHandle,
    hash_vectors,
    make_config,
    make_router,
)

ONE_MODEL = {"mini": {"chain": ["hash-a"]}}


def engine_for(
    config: dict[str, Any], handle_types: dict[str, type[BackendHandle]] | None = None
) -> tuple[EmbeddingEngine, dict[str, BackendHandle]]:
    router, handles = make_router(config, handle_types)
    return router.engine, handles


def embed(engine: EmbeddingEngine, **request: Any) -> EmbeddingResult:
    return asyncio.run(engine.embed(ParsedRequest(**request)))


class BrokenMatryoshkaHandle(RaisingHandle):
    """A Matryoshka backend whose batch fails."""

    backend_class = MatryoshkaHash


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Records each support check and the backend of each `dimensions` check."""
    seen: dict[str, list[Any]] = {"support": [], "dimensions": []}
    check_support = embedserve.deployments.engine.check_support
    loaded_capabilities = BackendCatalog.loaded_capabilities

    def spy_support(*args: Any) -> None:
        seen["support"].append(args[2])
        check_support(*args)

    async def spy_loaded(catalog: BackendCatalog, backend: str) -> Any:
        seen["dimensions"].append(backend)
        return await loaded_capabilities(catalog, backend)

    monkeypatch.setattr(embedserve.deployments.engine, "check_support", spy_support)
    monkeypatch.setattr(BackendCatalog, "loaded_capabilities", spy_loaded)
    return seen


def test_the_result_is_the_served_vectors_with_their_metadata() -> None:
    engine, _ = engine_for(make_config({"hash-a": A}, ONE_MODEL))
    result = embed(engine, model="mini", items=TEXTS)
    np.testing.assert_array_equal(result.dense, hash_vectors(A["options"], TEXTS))
    metadata = result.metadata
    assert (metadata.model, metadata.backend, metadata.space_id) == ("mini", "hash-a", SPACE_A)
    assert (metadata.dimensions, metadata.fallback) == (64, False)
    assert len(result.token_counts) == len(TEXTS) and all(result.token_counts)
    assert (result.truncated_tokens, result.failures) == (0, [])


def test_a_replica_lost_once_is_retried_once_on_the_same_backend() -> None:
    engine, handles = engine_for(
        make_config({"hash-a": A}, ONE_MODEL), {"hash-a": DyingReplicaHandle}
    )
    result = embed(engine, model="mini", items=TEXTS)
    assert handles["hash-a"].calls == 2, "one lost call, one retry"
    assert result.metadata.backend == "hash-a" and not result.metadata.fallback
    np.testing.assert_array_equal(result.dense, hash_vectors(A["options"], TEXTS))


def test_a_request_larger_than_a_batch_is_split_into_replica_calls() -> None:
    backend = {**A, "batching": {"max_batch_size": 2}}
    engine, handles = engine_for(make_config({"hash-a": backend}, ONE_MODEL))
    texts = [f"text number {i}" for i in range(5)]
    result = embed(engine, model="mini", items=texts)
    received = handles["hash-a"].received_counts
    assert [len(counts or []) for counts in received] == [2, 2, 1]
    np.testing.assert_array_equal(result.dense, hash_vectors(A["options"], texts))


def test_a_full_queue_on_every_backend_is_overloaded() -> None:
    engine, _ = engine_for(make_config({"hash-a": A}, ONE_MODEL), {"hash-a": OverloadedHandle})
    with pytest.raises(Overloaded) as raised:
        embed(engine, model="mini", items=TEXTS)
    assert raised.value.headers == {"Retry-After": "1"}
    assert raised.value.extra["backends"][0]["kind"] == "overloaded"


def test_an_unknown_model_is_refused_before_its_items() -> None:
    engine, _ = engine_for(make_config({"hash-a": A}, ONE_MODEL))
    with pytest.raises(ModelNotFound):
        embed(engine, model="nope", items=[])


def test_the_primary_is_checked_once(checks: dict[str, list[Any]]) -> None:
    engine, _ = engine_for(make_config({"hash-a": A}, ONE_MODEL), {"hash-a": MatryoshkaHandle})
    result = embed(engine, model="mini", items=TEXTS, dimensions=16)
    assert checks == {"support": ["mini"], "dimensions": ["hash-a"]}
    assert result.metadata.dimensions == result.dense.shape[1] == 16
    assert result.metadata.space_id == truncated_space_id(SPACE_A, 16)


def test_each_fallback_is_checked_once_and_one_lacking_the_size_fails(
    checks: dict[str, list[Any]],
) -> None:
    chain = {"mixed": {"chain": ["first", "other", "third"], "allow_cross_space": True}}
    engine, handles = engine_for(
        make_config({"first": A, "other": B, "third": A}, chain),
        {"first": BrokenMatryoshkaHandle, "third": MatryoshkaHandle},
    )
    result = embed(engine, model="mixed", items=TEXTS, dimensions=16)
    assert result.metadata.backend == "third" and result.metadata.fallback
    assert checks == {"support": ["mixed"] * 3, "dimensions": ["first", "other", "third"]}
    first, other = result.failures
    assert first.reason.startswith("RuntimeError")
    assert other.reason.startswith("InvalidRequest: dimensions=16 is not supported")
    assert handles["other"].calls == 0, "a backend that lacks the size is never called"


@pytest.mark.parametrize(
    ("server", "model", "request_", "truncates"),
    [
        (False, None, None, False),  # the default: refuse
        (True, None, None, True),  # the server's default
        (True, False, None, False),  # the model overrides the server
        (False, True, None, True),
        (True, False, True, True),  # the request overrides both
        (False, True, False, False),
    ],
)
def test_truncation_is_the_requests_else_the_models_else_the_servers(
    server: bool, model: bool | None, request_: bool | None, truncates: bool
) -> None:
    models = {"mini": {"chain": ["hash-a"], "truncate": model}}
    engine, _ = engine_for(make_config({"hash-a": A}, models, truncate=server))
    assert engine.truncates("mini", request_) is truncates


def test_requests_are_split_by_the_batch_size_the_replicas_report() -> None:
    """`reconfigure` changes a replica's batch size at run time: the router splits by
    the figure the replicas report (2, then 8), not by the config's (32)."""
    backend = {**A, "batching": {"max_batch_size": 32}}
    engine, handles = engine_for(make_config({"hash-a": backend}, ONE_MODEL))
    replica = handles["hash-a"]
    replica.batching = replica.batching.model_copy(update={"max_batch_size": 2})
    texts = [f"text number {i}" for i in range(5)]

    async def scenario() -> list[int]:
        await engine.embed(ParsedRequest(model="mini", items=texts))
        replica.batching = replica.batching.model_copy(update={"max_batch_size": 8})
        await engine.embed(ParsedRequest(model="mini", items=texts))  # asks again, aside
        await asyncio.sleep(0)  # the description's refresh lands
        await engine.embed(ParsedRequest(model="mini", items=texts))
        return [len(counts or []) for counts in replica.received_counts]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embedserve.deployments.catalog, "DESCRIPTION_MAX_AGE_S", 0.0)
        sizes = asyncio.run(scenario())
    assert sizes == [2, 2, 1, 2, 2, 1, 5]


def test_capabilities_are_parsed_once_per_description(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replica's description carries its parsed capabilities: requests read them,
    they do not validate them again."""
    engine, _ = engine_for(make_config({"hash-a": A}, ONE_MODEL))
    validated: list[Any] = []
    validate = BackendCapabilities.model_validate

    def spy(*args: Any, **kwargs: Any) -> BackendCapabilities:
        validated.append(args)
        return validate(*args, **kwargs)

    monkeypatch.setattr(BackendCapabilities, "model_validate", spy)
    for _ in range(3):
        embed(engine, model="mini", items=TEXTS, dimensions=64)
    assert validated == []
