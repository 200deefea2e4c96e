"""The `open-clip` backend on a tiny OpenCLIP model built from a registered config, loaded
through the backend's real path (`model_config_file` + a weights file as `pretrained`) and
checked against open_clip's own `encode_text` / `encode_image` on the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedserve import EmbedInput, InputType, Modality
from embedserve.config import parse_config
from embedserve.plugins.open_clip_backend import OpenClipBackend
from tests.models.tiny import OPEN_CLIP_TINY, build_open_clip, photo

pytestmark = pytest.mark.models

NAME = "tiny-open-clip"
PHOTOS = ("chelsea", "astronaut", "coffee")
TEXTS = ["a cat", "an astronaut in a white suit", "a cup of coffee on a table"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny model's config JSON and weights file."""
    return build_open_clip(tmp_path_factory.mktemp("open-clip"), NAME)


def options(files: tuple[Path, Path], **more) -> dict:
    config, weights = files
    return {
        "model": NAME,
        "pretrained": str(weights),
        "model_config_file": str(config),
        "device": "cpu",
        **more,
    }


@pytest.fixture(scope="module")
def backend(files) -> OpenClipBackend:
    loaded = OpenClipBackend(options(files))
    loaded.load()
    return loaded


def open_clip_reference(files: tuple[Path, Path]):
    """open_clip's own model, transforms and tokenizer on the saved weights, built without
    the backend: a random model of the architecture with the state dict loaded."""
    import open_clip
    from safetensors.torch import load_file

    open_clip.add_model_config(files[0])
    model = open_clip.create_model(NAME, pretrained=None)
    model.load_state_dict(load_file(files[1]))
    transform = open_clip.image_transform(model.visual.image_size, is_train=False)
    return model.eval(), transform, open_clip.get_tokenizer(NAME)


@pytest.fixture(scope="module")
def reference(files):
    return open_clip_reference(files)


def reference_texts(reference, texts: list[str]) -> np.ndarray:
    import torch

    model, _, tokenizer = reference
    with torch.no_grad():
        return model.encode_text(tokenizer(texts), normalize=True).numpy()


def reference_images(reference, names: tuple[str, ...]) -> np.ndarray:
    import torch
    from PIL import Image

    model, transform, _ = reference
    pixels = torch.stack([transform(Image.fromarray(photo(name))) for name in names])
    with torch.no_grad():
        return model.encode_image(pixels, normalize=True).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_text_vectors_match_open_clip_encode_text(backend, reference) -> None:
    served = backend.embed_batch([EmbedInput(text) for text in TEXTS]).dense
    assert cosines(served, reference_texts(reference, TEXTS)).min() >= 0.9999


def test_image_vectors_match_open_clip_encode_image(backend, reference) -> None:
    served = backend.embed_batch([EmbedInput(image=photo(name)) for name in PHOTOS]).dense
    assert cosines(served, reference_images(reference, PHOTOS)).min() >= 0.9999


def test_vectors_are_normalised_and_sized_from_the_loaded_model(backend) -> None:
    capabilities = backend.capabilities
    assert capabilities.dimensions == OPEN_CLIP_TINY["embed_dim"]
    assert capabilities.max_input_tokens == OPEN_CLIP_TINY["text_cfg"]["context_length"]
    assert set(capabilities.modalities) == {Modality.TEXT, Modality.IMAGE}
    dense = backend.embed_batch([EmbedInput("a cat"), EmbedInput(image=photo("chelsea"))]).dense
    assert dense.dtype == np.float32 and dense.shape == (2, OPEN_CLIP_TINY["embed_dim"])
    assert np.allclose(np.linalg.norm(dense, axis=1), 1.0, atol=1e-5)


def test_texts_and_images_share_the_space_open_clip_scores_in(backend, reference) -> None:
    import torch
    from PIL import Image

    # open_clip's contrastive forward scores images against texts: the backend's image
    # and text vectors must give the same similarities.
    model, transform, tokenizer = reference
    pixels = torch.stack([transform(Image.fromarray(photo(name))) for name in PHOTOS])
    with torch.no_grad():
        out = model(pixels, tokenizer(TEXTS))
    expected = (out[0] @ out[1].T).numpy()
    items = [EmbedInput(image=photo(name)) for name in PHOTOS] + [EmbedInput(t) for t in TEXTS]
    dense = backend.embed_batch(items).dense
    assert np.allclose(dense[:3] @ dense[3:].T, expected, atol=1e-4)


def test_a_mixed_batch_keeps_input_order(backend) -> None:
    items = [EmbedInput("a cat"), EmbedInput(image=photo("coffee")), EmbedInput("a cup")]
    mixed = backend.embed_batch(items).dense
    alone = np.vstack([backend.embed_batch([item]).dense for item in items])
    assert np.allclose(mixed, alone, atol=1e-5)


def test_a_query_prompt_is_applied_before_tokenising(files) -> None:
    prompted = OpenClipBackend(options(files, prompts={"query": "a photo of {text}."}))
    prompted.load()
    query = prompted.embed_batch([EmbedInput("cat", input_type=InputType.QUERY)]).dense
    written = prompted.embed_batch([EmbedInput("a photo of cat.")]).dense
    assert np.allclose(query, written, atol=1e-6)


def test_a_config_of_a_weights_file_runs_its_replicas_offline(files) -> None:
    config = parse_config(
        {
            "backends": {"clip": {"kind": "open-clip", "options": options(files)}},
            "models": {"clip": {"chain": ["clip"]}},
        }
    )
    assert config.offline and config.backend("clip").uses_model_hub is False


def test_a_file_that_is_not_a_model_config_is_refused(tmp_path, files) -> None:
    config = tmp_path / f"{NAME}.json"
    config.write_text('{"embed_dim": 24}')
    broken = OpenClipBackend({**options(files), "model_config_file": str(config)})
    with pytest.raises(ValueError, match="lacks text_cfg, vision_cfg"):
        broken.load()
