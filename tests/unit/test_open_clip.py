"""The `open-clip` backend without weights: unavailable with the install command when
open_clip is missing, its options, space identity and hub use."""

from __future__ import annotations

import importlib.abc
import sys

import pytest
from pydantic import ValidationError

from embedserve import BackendUnavailable, Modality, space_id
from embedserve.plugins.open_clip_backend import INSTALL, OpenClipBackend

TAG = {"model": "ViT-H-14", "pretrained": "laion2b_s32b_b79k"}


def test_without_open_clip_the_backend_is_unavailable_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes `import open_clip` raise ImportError, as in a replica
    # where it is not installed, whether or not this environment has it.
    monkeypatch.setitem(sys.modules, "open_clip", None)
    backend = OpenClipBackend({"model": "ViT-L-14", "pretrained": "laion2b_s32b_b82k"})
    with pytest.raises(BackendUnavailable) as raised:
        backend.load()
    assert "pip install open-clip-torch" in str(raised.value) and INSTALL in str(raised.value)


class _TorchvisionOfAnotherTorch(importlib.abc.MetaPathFinder):
    """Fails `import open_clip` as a CUDA torchvision beside a CPU torch does."""

    def find_spec(self, name, path, target=None):
        if name == "open_clip":
            raise RuntimeError("operator torchvision::nms does not exist")
        return None


def test_a_torchvision_of_another_torch_makes_the_backend_unavailable_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_TorchvisionOfAnotherTorch(), *sys.meta_path])
    monkeypatch.setattr("embedserve.plugins.open_clip_backend.version", lambda name: "0.28.0")
    with pytest.raises(BackendUnavailable) as raised:
        OpenClipBackend(TAG).load()
    message = str(raised.value)
    assert "torchvision::nms does not exist" in message and "torchvision 0.28.0" in message
    assert f"torch {torch.__version__}" in message


def test_declared_capabilities_and_space() -> None:
    backend = OpenClipBackend(TAG)
    assert set(backend.capabilities.modalities) == {Modality.TEXT, Modality.IMAGE}
    other = OpenClipBackend({**TAG, "pretrained": "other"})
    assert space_id(backend.space_identity()) != space_id(other.space_identity())


def test_a_pretrained_tag_uses_the_hub_and_a_weights_file_does_not(tmp_path) -> None:
    weights = tmp_path / "open_clip_model.safetensors"
    weights.write_bytes(b"")
    assert OpenClipBackend(TAG).uses_model_hub is True
    assert OpenClipBackend({**TAG, "pretrained": str(weights)}).uses_model_hub is False


def test_the_model_config_file_names_the_architecture() -> None:
    with pytest.raises(ValidationError, match="set model to that name, not 'ViT-H-14'"):
        OpenClipBackend({**TAG, "model_config_file": "/models/tiny-clip.json"})
    custom = {"model": "tiny-clip", "pretrained": "/models/w.safetensors"}
    backend = OpenClipBackend({**custom, "model_config_file": "/models/tiny-clip.json"})
    assert backend.space_identity()["model_config_file"] == "/models/tiny-clip.json"
    # Without a config file the identity keeps its keys, so built-in models keep their ids.
    assert "model_config_file" not in OpenClipBackend(custom).space_identity()
