"""The `clip` backend on tiny SigLIP 2, SigLIP and CLIP models built from configs, loaded
through the backend's real loading code (AutoModel / AutoProcessor from a folder)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embedserve import EmbedInput, InputType, Modality, space_id
from embedserve.plugins.clip_backend import ClipBackend
from tests.models.tiny import CLIP_FAMILY, build_clip_family, photo

pytestmark = pytest.mark.models


@pytest.fixture(scope="module", params=CLIP_FAMILY)
def tiny(request, tmp_path_factory) -> tuple[str, Path, ClipBackend]:
    """A tiny model of each family, and the backend loaded from its folder."""
    folder = build_clip_family(request.param, tmp_path_factory.mktemp(request.param))
    backend = ClipBackend({"model": str(folder), "device": "cpu"})
    backend.load()
    return request.param, folder, backend


def reference_text(folder: Path, texts: list[str], padding: str) -> np.ndarray:
    """Normalised text features straight from transformers, outside the backend."""
    import torch
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    encoded = processor.tokenizer(texts, padding=padding, max_length=40, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
        ).pooler_output
    return torch.nn.functional.normalize(out, dim=-1).numpy()


def reference_image(folder: Path, images: list[np.ndarray]) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder)
    with torch.no_grad():
        pixels = processor.image_processor(images=images, return_tensors="pt")
        out = model.get_image_features(**pixels)
    return torch.nn.functional.normalize(out.pooler_output, dim=-1).numpy()


def test_dimensions_come_from_the_loaded_model(tiny) -> None:
    kind, _, backend = tiny
    # CLIP projects to projection_dim (24 here); SigLIP's towers end at hidden_size (32).
    assert backend.capabilities.dimensions == (24 if kind == "clip" else 32)
    assert backend.capabilities.max_input_tokens == 40
    assert set(backend.capabilities.modalities) == {Modality.TEXT, Modality.IMAGE}


def test_a_clip_projection_size_is_followed(tmp_path) -> None:
    folder = build_clip_family("clip", tmp_path, projection_dim=12)
    backend = ClipBackend({"model": str(folder)})
    backend.load()
    assert backend.capabilities.dimensions == 12


def test_texts_and_images_share_one_normalised_space(tiny) -> None:
    _, _, backend = tiny
    inputs = [EmbedInput("a photo of a cat"), EmbedInput(image=photo("chelsea"))]
    dense = backend.embed_batch(inputs).dense
    assert dense.dtype == np.float32 and dense.shape == (2, backend.capabilities.dimensions)
    assert np.allclose(np.linalg.norm(dense, axis=1), 1, atol=1e-5)


def test_vectors_match_transformers_directly(tiny) -> None:
    kind, folder, backend = tiny
    texts = ["a photo of a cat", "an astronaut", "coffee"]
    images = [photo("chelsea"), photo("astronaut"), photo("camera")]
    inputs = [EmbedInput(texts[0]), EmbedInput(image=images[0]), EmbedInput(texts[1])]
    inputs += [EmbedInput(image=image) for image in images[1:]] + [EmbedInput(texts[2])]
    dense = backend.embed_batch(inputs).dense
    padding = "longest" if kind == "clip" else "max_length"  # how each family was trained
    assert np.allclose(dense[[0, 2, 5]], reference_text(folder, texts, padding), atol=1e-5)
    assert np.allclose(dense[[1, 3, 4]], reference_image(folder, images), atol=1e-5)


def test_prompt_templates_and_prefixes_apply_per_input_type(tiny) -> None:
    _, folder, _ = tiny
    backend = ClipBackend(
        {"model": str(folder), "prompts": {"query": "a photo of {text}.", "document": "doc: "}}
    )
    backend.load()
    plain = ClipBackend({"model": str(folder)})
    plain.load()
    prompted = backend.embed_batch(
        [EmbedInput("cat", InputType.QUERY), EmbedInput("cat", InputType.DOCUMENT)]
    ).dense
    expected = plain.embed_batch([EmbedInput("a photo of cat."), EmbedInput("doc: cat")]).dense
    assert np.allclose(prompted, expected, atol=1e-6)
    assert backend.count_tokens([EmbedInput("cat", InputType.QUERY)]) == plain.count_tokens(
        [EmbedInput("a photo of cat.")]
    )
    assert space_id(backend.space_identity()) != space_id(plain.space_identity())


def test_token_counts_before_truncation_and_images_cost_their_patches(tiny) -> None:
    _, _, backend = tiny
    long_text = "word " * 100
    counts = backend.count_tokens([EmbedInput(long_text), EmbedInput(image=photo("camera"))])
    assert counts[0] > 100 and counts[1] == 16
    # Embedding an over-long text truncates it to the tower's limit instead of failing.
    assert backend.embed_batch([EmbedInput(long_text)]).dense.shape[0] == 1


# --- real weights (skipped here: no model hub on this machine) --------------------------
SIGLIP2_FOLDER = os.environ.get("EMBEDSERVE_SIGLIP2_MODEL")
PHOTOS = ("chelsea", "astronaut", "coffee", "camera", "rocket", "horse", "coins")


@pytest.mark.skipif(not SIGLIP2_FOLDER, reason="set EMBEDSERVE_SIGLIP2_MODEL to a SigLIP 2 folder")
def test_real_siglip2_ranks_the_cat_photo_first() -> None:
    backend = ClipBackend({"model": SIGLIP2_FOLDER})
    backend.load()
    images = [EmbedInput(image=photo(name)) for name in PHOTOS]
    dense = backend.embed_batch([EmbedInput("a photo of a cat"), *images]).dense
    scores = dense[1:] @ dense[0]
    assert PHOTOS[int(np.argmax(scores))] == "chelsea"


def test_the_token_budget_reads_the_loaded_text_model(tiny) -> None:
    from embedserve.plugins.model_files import CPU_TOKEN_BUDGET, TransformerShape

    _, _, backend = tiny
    assert backend.token_budget(0.25) == CPU_TOKEN_BUDGET  # on the CPU here
    # On a GPU the budget comes from this shape: the text model's config must give one.
    assert TransformerShape.of(backend._text_model().config) is not None
