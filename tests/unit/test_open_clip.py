"""The `open-clip` backend without open_clip installed: unavailable, with the command."""

from __future__ import annotations

import importlib.util

import pytest

from embedserve import BackendUnavailable, Modality, space_id
from embedserve.plugins.open_clip_backend import INSTALL, OpenClipBackend


@pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed"
)
def test_without_open_clip_the_backend_is_unavailable_with_the_install_command() -> None:
    backend = OpenClipBackend({"model": "ViT-L-14", "pretrained": "laion2b_s32b_b82k"})
    with pytest.raises(BackendUnavailable) as raised:
        backend.load()
    assert "pip install open-clip-torch" in str(raised.value) and INSTALL in str(raised.value)


def test_declared_capabilities_and_space() -> None:
    backend = OpenClipBackend({"model": "ViT-H-14", "pretrained": "laion2b_s32b_b79k"})
    assert set(backend.capabilities.modalities) == {Modality.TEXT, Modality.IMAGE}
    other = OpenClipBackend({"model": "ViT-H-14", "pretrained": "other"})
    assert space_id(backend.space_identity()) != space_id(other.space_identity())
