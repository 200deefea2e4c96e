"""Canary references and their comparison (serve_app/canary.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedserve.canary import CanaryConfig, ReferenceStore, canary_problem, evaluate_canary

PROBES = ["one probe", "two probes"]


@pytest.fixture
def store(tmp_path: Path) -> ReferenceStore:
    return ReferenceStore(str(tmp_path))


def unit_rows(seed: int, rows: int = 2, dims: int = 8) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, dims))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_first_validation_records_then_the_same_vectors_pass(store: ReferenceStore) -> None:
    config = CanaryConfig(probes=PROBES)
    assert evaluate_canary(store, "space-1", config, unit_rows(0)).outcome == "recorded"
    assert evaluate_canary(store, "space-1", config, unit_rows(0)).outcome == "passed"
    assert store.load("space-1").probes == PROBES


def test_other_vectors_of_the_same_space_fail_with_the_cosine(store: ReferenceStore) -> None:
    config = CanaryConfig(probes=PROBES, min_cosine=0.999)
    evaluate_canary(store, "space-1", config, unit_rows(0))
    result = evaluate_canary(store, "space-1", config, unit_rows(1))
    assert result.outcome == "failed"
    assert "cosine" in result.problem and "0.999" in result.problem


def test_a_small_numeric_drift_passes(store: ReferenceStore) -> None:
    config = CanaryConfig(probes=PROBES, min_cosine=0.999)
    evaluate_canary(store, "space-1", config, unit_rows(0))
    drifted = unit_rows(0) + 1e-4 * unit_rows(1)
    assert evaluate_canary(store, "space-1", config, drifted).outcome == "passed"


def test_nan_is_never_recorded_and_always_fails(store: ReferenceStore) -> None:
    config = CanaryConfig(probes=PROBES)
    nan = np.full((2, 8), np.nan)
    assert evaluate_canary(store, "space-1", config, nan).outcome == "failed"
    assert store.load("space-1") is None
    evaluate_canary(store, "space-1", config, unit_rows(0))
    assert "non-finite" in evaluate_canary(store, "space-1", config, nan).problem


def test_a_wrong_dimension_fails(store: ReferenceStore) -> None:
    config = CanaryConfig(probes=PROBES)
    evaluate_canary(store, "space-1", config, unit_rows(0, dims=8))
    problem = evaluate_canary(store, "space-1", config, unit_rows(0, dims=4)).problem
    assert "shape" in problem


def test_changed_probes_record_a_new_reference(store: ReferenceStore) -> None:
    evaluate_canary(store, "space-1", CanaryConfig(probes=PROBES), unit_rows(0))
    other = CanaryConfig(probes=["a different probe", "and another"])
    assert evaluate_canary(store, "space-1", other, unit_rows(1)).outcome == "recorded"


def test_spaces_are_kept_apart_and_ids_with_slashes_are_safe(store: ReferenceStore) -> None:
    config = CanaryConfig(probes=PROBES)
    evaluate_canary(store, "space-1/d64", config, unit_rows(0))
    assert store.path("space-1/d64").parent == store.folder
    assert evaluate_canary(store, "space-2", config, unit_rows(1)).outcome == "recorded"
    assert canary_problem(unit_rows(0), store.load("space-1/d64"), 0.999) is None
