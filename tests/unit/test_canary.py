"""Canary references and their comparison (serve_app/runtime/canary.py): pinned references, the
cluster's first recording, the node's cache, strict mode."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from embedserve.runtime.canary import (
    CanaryConfig,
    CanaryReference,
    CanaryReferences,
    ReferenceStore,
    ServerCanaryConfig,
    canary_problem,
)

PROBES = ["one probe", "two probes"]
CONFIG = CanaryConfig(probes=PROBES, min_cosine=0.999)


class InMemoryCluster:
    """The cluster registry's contract (first proposal wins), in one process."""

    def __init__(self) -> None:
        self.references: dict[tuple[str, tuple[str, ...]], CanaryReference] = {}

    def get(self, space_id: str, probes: list[str]) -> CanaryReference | None:
        return self.references.get((space_id, tuple(probes)))

    def propose(self, reference: CanaryReference) -> CanaryReference:
        key = (reference.space_id, tuple(reference.probes))
        return self.references.setdefault(key, reference)


@pytest.fixture
def references(tmp_path: Path) -> CanaryReferences:
    return CanaryReferences(ReferenceStore.in_state_dir(str(tmp_path)))


def unit_rows(seed: int, rows: int = 2, dims: int = 8) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dims))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def drifted(seed: int, cosine: float = 0.99) -> np.ndarray:
    """Unit rows at about `cosine` to `unit_rows(seed)`: finite, plausible, wrong."""
    base, noise = unit_rows(seed), unit_rows(seed + 100)
    noise -= (noise * base).sum(axis=1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return cosine * base + np.sqrt(1 - cosine**2) * noise


def test_first_validation_records_then_the_same_vectors_pass(references) -> None:
    assert references.evaluate("space-1", CONFIG, unit_rows(0)).outcome == "recorded"
    result = references.evaluate("space-1", CONFIG, unit_rows(0))
    assert result.outcome == "passed" and result.origin.startswith("reference cached in")
    assert references.cache.load("space-1").probes == PROBES


def test_other_vectors_of_the_same_space_fail_naming_probe_cosine_and_origin(references) -> None:
    references.evaluate("space-1", CONFIG, unit_rows(0))
    result = references.evaluate("space-1", CONFIG, drifted(0))
    assert result.outcome == "failed"
    assert re.search(r"probe \d \('(one probe|two probes)'\) has cosine 0.99", result.problem)
    assert "reference cached in" in result.problem and "minimum 0.999" in result.problem


def test_a_small_numeric_drift_passes(references) -> None:
    references.evaluate("space-1", CONFIG, unit_rows(0))
    assert references.evaluate("space-1", CONFIG, drifted(0, 0.99999)).outcome == "passed"


def test_nan_is_never_recorded_and_always_fails(references) -> None:
    nan = np.full((2, 8), np.nan)
    assert references.evaluate("space-1", CONFIG, nan).outcome == "failed"
    assert references.cache.load("space-1") is None
    references.evaluate("space-1", CONFIG, unit_rows(0))
    assert "non-finite" in references.evaluate("space-1", CONFIG, nan).problem


def test_a_wrong_dimension_fails(references) -> None:
    references.evaluate("space-1", CONFIG, unit_rows(0, dims=8))
    assert "shape" in references.evaluate("space-1", CONFIG, unit_rows(0, dims=4)).problem


def test_changed_probes_record_a_new_reference(references) -> None:
    references.evaluate("space-1", CONFIG, unit_rows(0))
    other = CanaryConfig(probes=["a different probe", "and another"])
    assert references.evaluate("space-1", other, unit_rows(1)).outcome == "recorded"


def test_spaces_are_kept_apart_and_ids_with_slashes_are_safe(references) -> None:
    references.evaluate("space-1/d64", CONFIG, unit_rows(0))
    assert Path(references.cache.path("space-1/d64")).name == "space-1_d64.json"
    assert references.evaluate("space-2", CONFIG, unit_rows(1)).outcome == "recorded"
    stored = references.cache.load("space-1/d64")
    assert canary_problem(unit_rows(0), stored, 0.999, "cache") is None


def test_a_pinned_reference_judges_a_fresh_node(tmp_path: Path) -> None:
    """The KubeRay upgrade case: a new pod (empty state dir) whose image shifted the vectors
    is refused by the reference that ships with the config, instead of recording them."""
    pinned = ReferenceStore(str(tmp_path / "pinned"))
    pinned.save(CanaryReference.of("space-1", PROBES, unit_rows(0)))
    settings = ServerCanaryConfig(references=str(tmp_path / "pinned"))
    fresh = CanaryReferences.of(str(tmp_path / "empty-state"), settings, None)
    result = fresh.evaluate("space-1", CONFIG, drifted(0))
    assert result.outcome == "failed"
    assert f"the pinned reference {tmp_path / 'pinned' / 'space-1.json'}" in result.problem
    assert re.search(r"probe \d \('(one probe|two probes)'\) has cosine 0.99", result.problem)
    assert fresh.cache.load("space-1") is None, "nothing was recorded"
    assert fresh.evaluate("space-1", CONFIG, unit_rows(0)).outcome == "passed"


def test_a_strict_config_without_a_reference_refuses_and_says_how_to_record(tmp_path) -> None:
    settings = ServerCanaryConfig(references=str(tmp_path / "pinned"))
    assert settings.is_strict
    strict = CanaryReferences.of(str(tmp_path / "state"), settings, None)
    result = strict.evaluate("space-1", CONFIG, unit_rows(0))
    assert result.outcome == "failed"
    assert "no canary reference for space space-1" in result.problem
    assert "embedserve canary record --config CONFIG" in result.problem
    assert strict.cache.load("space-1") is None
    lenient = ServerCanaryConfig(references=str(tmp_path / "pinned"), strict=False)
    relaxed = CanaryReferences.of(str(tmp_path / "state"), lenient, None)
    assert relaxed.evaluate("space-1", CONFIG, unit_rows(0)).outcome == "recorded"
    assert ServerCanaryConfig(strict=True).is_strict and not ServerCanaryConfig().is_strict


def test_the_clusters_first_recording_wins_on_every_node(tmp_path: Path) -> None:
    cluster = InMemoryCluster()
    node_a = CanaryReferences(ReferenceStore.in_state_dir(str(tmp_path / "a")), cluster=cluster)
    node_b = CanaryReferences(ReferenceStore.in_state_dir(str(tmp_path / "b")), cluster=cluster)
    assert node_a.evaluate("space-1", CONFIG, unit_rows(0)).outcome == "recorded"
    refused = node_b.evaluate("space-1", CONFIG, drifted(0))
    assert refused.outcome == "failed" and "the cluster's reference" in refused.problem
    assert node_b.cache.load("space-1") is None
    agreeing = node_b.evaluate("space-1", CONFIG, unit_rows(0))
    assert (agreeing.outcome, agreeing.origin) == ("passed", "cluster's reference")


def test_a_race_to_record_is_decided_by_the_cluster(tmp_path: Path) -> None:
    """Two replicas with empty caches record at once: the second is judged by the first."""
    cluster = InMemoryCluster()
    cluster.propose(CanaryReference.of("space-1", PROBES, unit_rows(0)))  # won just before
    late = CanaryReferences(ReferenceStore.in_state_dir(str(tmp_path)), cluster=cluster)
    assert late.evaluate("space-1", CONFIG, drifted(0)).outcome == "failed"


def test_a_nodes_cache_seeds_a_restarted_cluster(tmp_path: Path) -> None:
    cache = ReferenceStore.in_state_dir(str(tmp_path))
    cache.save(CanaryReference.of("space-1", PROBES, unit_rows(0)))
    cluster = InMemoryCluster()
    node = CanaryReferences(cache, cluster=cluster)
    assert node.evaluate("space-1", CONFIG, drifted(0)).outcome == "failed"
    assert cluster.get("space-1", PROBES).vectors == unit_rows(0).tolist()


def test_references_on_a_uri_round_trip_through_fsspec() -> None:
    pytest.importorskip("fsspec")
    store = ReferenceStore("memory://embedserve-test/references")
    assert store.load("space-1") is None
    path = store.save(CanaryReference.of("space-1/d8", PROBES, unit_rows(3)))
    assert path == "memory://embedserve-test/references/space-1_d8.json"
    assert store.load("space-1/d8").vectors == unit_rows(3).tolist()
