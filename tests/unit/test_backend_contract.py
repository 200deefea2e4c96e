"""The backend base class, its value types, and the vector-space id rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from embedserve import (
    Backend,
    BackendCapabilities,
    BackendOptions,
    EmbeddingBatch,
    EmbedInput,
    Modality,
    OutputKind,
)
from embedserve.space import space_id, truncated_space_id

MINILM_IDENTITY: dict[str, Any] = {
    "kind": "sentence-transformers",
    "model": "sentence-transformers/all-MiniLM-L6-v2",
    "revision": None,
    "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "normalize": True,
    "truncate_dim": None,
    "prompts": {"query": "query: ", "document": "passage: "},
    "max_seq_length": None,
}


# -- space ids ------------------------------------------------------------------------------


def test_space_id_is_a_readable_slug_and_a_short_hash() -> None:
    slug, digest = space_id(MINILM_IDENTITY).rsplit("-", 1)
    assert slug == "all-minilm-l6-v2"
    assert len(digest) == 12
    assert int(digest, 16) >= 0


def test_space_id_is_stable_across_calls() -> None:
    assert space_id(MINILM_IDENTITY) == space_id(dict(MINILM_IDENTITY))


def test_space_id_ignores_key_order_at_every_level() -> None:
    reordered = dict(reversed(list(MINILM_IDENTITY.items())))
    reordered["prompts"] = {"document": "passage: ", "query": "query: "}
    assert list(reordered) != list(MINILM_IDENTITY)
    assert space_id(reordered) == space_id(MINILM_IDENTITY)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", "onnx"),
        ("model", "sentence-transformers/all-MiniLM-L12-v2"),
        ("revision", "8b3219a92973c328a8e22fadcfa821b5dc75636a"),
        ("sha256", "0" * 64),
        ("normalize", False),
        ("truncate_dim", 128),
        ("prompts", {"query": "search_query: ", "document": "passage: "}),
        ("max_seq_length", 128),
    ],
)
def test_space_id_changes_with_any_field(field: str, value: object) -> None:
    changed = {**MINILM_IDENTITY, field: value}
    assert space_id(changed) != space_id(MINILM_IDENTITY)


def test_space_id_changes_with_an_added_field() -> None:
    assert space_id({**MINILM_IDENTITY, "pooling": "cls"}) != space_id(MINILM_IDENTITY)


def test_space_id_distinguishes_types_of_equal_looking_values() -> None:
    assert space_id({"model": "m", "dim": 1}) != space_id({"model": "m", "dim": "1"})


@pytest.mark.parametrize(
    ("identity", "slug"),
    [
        ({"model": "BAAI/bge-m3"}, "bge-m3"),
        ({"model": "/models/E5 Large v2/"}, "e5-large-v2"),
        ({"model": "intfloat/multilingual-e5-small"}, "multilingual-e5-small"),
        ({"model": "org/Qwen3_Embedding.0.6B"}, "qwen3-embedding-0-6b"),
        ({"kind": "hash"}, "hash"),
        ({}, "space"),
        ({"model": "///"}, "space"),
        ({"model": "__"}, "space"),
    ],
)
def test_space_id_slug(identity: dict[str, Any], slug: str) -> None:
    assert space_id(identity).rsplit("-", 1)[0] == slug


def test_same_model_name_in_another_org_is_another_space() -> None:
    a, b = space_id({"model": "org-a/e5"}), space_id({"model": "org-b/e5"})
    assert a.startswith("e5-")
    assert b.startswith("e5-")
    assert a != b


def test_truncated_space_id_differs_from_base_and_per_size() -> None:
    base = space_id(MINILM_IDENTITY)
    assert truncated_space_id(base, 128) != base
    assert truncated_space_id(base, 128) != truncated_space_id(base, 64)
    assert truncated_space_id(base, 128).startswith(base)
    assert truncated_space_id(base, 128) == truncated_space_id(base, 128)


# -- the backend base class -----------------------------------------------------------------


class _Options(BackendOptions):
    size: int = 3


class _Constant(Backend):
    kind = "constant"
    Options = _Options
    options: _Options

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.capabilities_with(dimensions=self.options.size)

    def space_identity(self) -> dict:
        return {"kind": self.kind, "size": self.options.size}

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        return EmbeddingBatch(dense=np.ones((len(inputs), self.options.size), np.float32))


def test_backend_without_embed_batch_cannot_be_built() -> None:
    class Incomplete(Backend):
        kind = "incomplete"
        capabilities = BackendCapabilities()

        def space_identity(self) -> dict:
            return {}

    with pytest.raises(TypeError, match="embed_batch"):
        Incomplete()


@pytest.mark.parametrize("options", [None, {}, {"size": 3}, _Options(size=3)])
def test_options_from_mapping_model_or_nothing(options: object) -> None:
    assert _Constant(options).options == _Options(size=3)


def test_options_reject_unknown_keys_and_are_frozen() -> None:
    with pytest.raises(ValidationError, match="sise"):
        _Constant({"sise": 4})
    backend = _Constant({"size": 4})
    with pytest.raises(ValidationError):
        backend.options.size = 5


def test_base_defaults_of_a_backend() -> None:
    backend = _Constant()
    assert backend.uses_model_hub is False
    assert backend.token_budget(0.5) is None  # the server's default budget applies
    assert backend.load() is None
    assert backend.embed_batch([EmbedInput("a"), EmbedInput("b")]).dense.shape == (2, 3)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("hello", 1), ("Hello, world!", 4), ("naïve café", 2), ("a  b\tc\n", 3)],
)
def test_default_token_count_counts_words_and_punctuation(text: str, tokens: int) -> None:
    assert _Constant().count_tokens([EmbedInput(text)]) == [tokens]


def test_capabilities_defaults_describe_a_dense_text_model() -> None:
    capabilities = BackendCapabilities()
    assert [m.value for m in capabilities.modalities] == ["text"]
    assert [o.value for o in capabilities.outputs] == ["dense"]
    assert capabilities.normalized is True
    assert capabilities.semantic is True
    assert capabilities.dimensions is None


def test_capabilities_default_to_the_class_attributes() -> None:
    class Multimodal(_Constant):
        modalities = (Modality.TEXT, Modality.IMAGE)
        outputs = (OutputKind.DENSE, OutputKind.SPARSE)

    assert _Constant().capabilities == BackendCapabilities(dimensions=3)
    capabilities = Multimodal().capabilities
    assert capabilities.modalities == Multimodal.modalities
    assert capabilities.outputs == Multimodal.outputs
    assert capabilities.dimensions == 3
    narrowed = Multimodal().capabilities_with(modalities=(Modality.TEXT,), semantic=False)
    assert narrowed.modalities == (Modality.TEXT,)
    assert narrowed.outputs == Multimodal.outputs
    assert narrowed.semantic is False


@pytest.mark.parametrize("shape", [(3,), (1, 2, 3), ()])
def test_embedding_batch_must_be_two_dimensional(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="2-D"):
        EmbeddingBatch(dense=np.zeros(shape, np.float32))


def test_embed_input_defaults_to_no_input_type() -> None:
    assert EmbedInput("x").input_type is None


@pytest.mark.parametrize(
    ("dtype", "device", "bf16", "expected"),
    [
        ("auto", "cpu", False, "float32"),
        ("auto", "cuda", True, "bfloat16"),
        ("auto", "cuda:1", False, "float16"),
        ("float16", "cpu", False, "float16"),  # an explicit choice is kept
    ],
)
def test_dtype_auto_follows_the_device(
    monkeypatch: pytest.MonkeyPatch, dtype: str, device: str, bf16: bool, expected: str
) -> None:
    """There is no GPU here: only whether the GPU supports bfloat16 is stood in for."""
    torch = pytest.importorskip("torch")
    from embedserve.plugins.model_files import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert resolve_dtype(dtype, device) == expected
