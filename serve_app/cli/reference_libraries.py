"""What each built-in model backend's own library computes: the references of
`embedserve verify`.

Each reference loads the backend's model again, straight from its library, in float32 on
the CPU, and embeds as the model card does: sentence-transformers' `encode`; transformers'
`get_text_features` / `get_image_features` with the model's processor for CLIP and SigLIP;
open_clip's `encode_text` / `encode_image` with its tokenizer and transforms; BGE-M3's dense,
sparse and ColBERT heads computed from the checkpoint as FlagEmbedding does; Nomic Embed
with its task prefixes, mean pooling and layer norm as its model card does. None of them
calls backend code: the point is to compute the vectors a second, independent way. They
take from the backend only what its config says (model, revision, sizes, prompts).

Like the rest of the core, this module imports no plugin, and torch and the libraries only
when a reference is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np

from embedserve.backend import Backend, EmbeddingBatch, EmbedInput, SparseVector
from embedserve.runtime.locations import local_path

# SigLIP and SigLIP 2 were trained on texts padded to the full length (their model cards
# pad with `padding="max_length"`); CLIP's card pads to the longest text.
_PADDED_TO_MAX_LENGTH = ("siglip", "siglip2")


class ReferenceUnavailable(Exception):
    """The reference library cannot compute this backend's vectors in this environment."""


@dataclass(frozen=True)
class Reference:
    """A backend's reference: the library (name and version) and its embedding function."""

    library: str
    embed: Callable[[Sequence[EmbedInput]], EmbeddingBatch]


def reference_for(backend: Backend) -> Reference | None:
    """The reference of a configured backend, its model loaded; None for a backend kind
    without a reference library (`hash`, `openai-compatible`, third-party kinds).

    Raises:
        ReferenceUnavailable: the library cannot run the model here.
    """
    build = _REFERENCES.get(backend.kind)
    return None if build is None else build(backend)


def _location(model: str) -> str:
    """A model reference as the libraries take it: a `pkg:`, `~` or `file://` folder as
    a path, a hub id as it is."""
    return str(local_path(model))


def _prompted(backend: Backend, item: EmbedInput) -> str:
    """The item's text with the prompt the backend declares for its input type: a
    template with `{text}` or a prefix (the README's `prompts` convention)."""
    prompts = backend.capabilities.prompts
    prompt = prompts.get(item.input_type.value, "") if item.input_type else ""
    return prompt.replace("{text}", item.text) if "{text}" in prompt else prompt + item.text


def _normalized(vectors: Any) -> np.ndarray:
    import torch

    return torch.nn.functional.normalize(vectors.float(), dim=-1).numpy()


def _texts_and_images(
    inputs: Sequence[EmbedInput],
    embed_texts: Callable[[list[EmbedInput]], np.ndarray],
    embed_images: Callable[[list[np.ndarray]], np.ndarray] | None = None,
) -> EmbeddingBatch:
    """Dense vectors of mixed inputs, in order: texts and images embedded apart."""
    texts = [row for row, item in enumerate(inputs) if item.image is None]
    images = [row for row, item in enumerate(inputs) if item.image is not None]
    parts: dict[int, np.ndarray] = {}
    if texts:
        parts.update(zip(texts, embed_texts([inputs[row] for row in texts]), strict=True))
    if images:
        if embed_images is None:
            raise ReferenceUnavailable("this reference embeds texts only")
        vectors = embed_images([item.image for item in inputs if item.image is not None])
        parts.update(zip(images, vectors, strict=True))
    return EmbeddingBatch(dense=np.stack([parts[row] for row in range(len(inputs))]))


def _sentence_transformers(backend: Backend) -> Reference:
    """`SentenceTransformer(...).encode`, with the backend's prompt per input type."""
    from sentence_transformers import SentenceTransformer

    options: Any = backend.options
    model = SentenceTransformer(
        _location(options.model),
        device="cpu",
        revision=options.revision,
        trust_remote_code=options.trust_remote_code,
        truncate_dim=options.truncate_dim,
    )
    if options.max_seq_length is not None:
        model.max_seq_length = options.max_seq_length

    def embed_texts(items: list[EmbedInput]) -> np.ndarray:
        prompts = backend.capabilities.prompts
        return np.stack(
            [
                model.encode(
                    item.text,
                    prompt=prompts.get(item.input_type.value) if item.input_type else None,
                    normalize_embeddings=options.normalize,
                    convert_to_numpy=True,
                )
                for item in items
            ]
        )

    library = f"sentence-transformers {version('sentence-transformers')}"
    return Reference(library, lambda inputs: _texts_and_images(inputs, embed_texts))


def _features(output: Any) -> Any:
    """The embedding of a features call: transformers 5 returns a model output whose
    `pooler_output` is the projected embedding, 4.x a tensor."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _accepted(method: Callable[..., Any], encoded: Any) -> dict[str, Any]:
    """The processor outputs the model's method takes (a BERT-style tokenizer adds
    `token_type_ids`, which CLIP-family text towers do not take)."""
    parameters = inspect.signature(method).parameters
    return {key: value for key, value in encoded.items() if key in parameters}


def _clip(backend: Backend) -> Reference:
    """transformers' `get_text_features` / `get_image_features` with the processor."""
    import torch
    from transformers import AutoModel, AutoProcessor

    options: Any = backend.options
    location = _location(options.model)
    model = AutoModel.from_pretrained(location, revision=options.revision).eval()
    processor = AutoProcessor.from_pretrained(location, revision=options.revision)
    config = model.config
    padding = "max_length" if config.model_type in _PADDED_TO_MAX_LENGTH else True
    max_length = options.max_text_tokens or config.text_config.max_position_embeddings

    def embed_texts(items: list[EmbedInput]) -> np.ndarray:
        encoded = processor(
            text=[_prompted(backend, item) for item in items],
            padding=padding,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            features = model.get_text_features(**_accepted(model.get_text_features, encoded))
        return _normalized(_features(features))

    def embed_images(images: list[np.ndarray]) -> np.ndarray:
        # The image processor as saved with the model: Siglip2Processor's own call would
        # put its class defaults (16-pixel patches, 256 of them) over the saved settings;
        # they are the real checkpoints' settings, not a small test model's.
        encoded = processor.image_processor(images=images, return_tensors="pt")
        with torch.inference_mode():
            features = model.get_image_features(**_accepted(model.get_image_features, encoded))
        return _normalized(_features(features))

    library = f"transformers {version('transformers')}"
    return Reference(library, lambda inputs: _texts_and_images(inputs, embed_texts, embed_images))


def _open_clip(backend: Backend) -> Reference:
    """open_clip's `encode_text` / `encode_image`, with its tokenizer and transforms."""
    import open_clip
    import torch
    from PIL import Image

    options: Any = backend.options
    if options.model_config_file is not None:
        open_clip.add_model_config(_location(options.model_config_file))
    weights = local_path(options.pretrained)
    # Typed loosely by open_clip (a union over its model classes): called as its docs do.
    created: Any = open_clip.create_model_and_transforms(
        options.model, pretrained=str(weights) if weights.is_file() else options.pretrained
    )
    model, _, preprocess = created
    model.eval()
    tokenizer = open_clip.get_tokenizer(options.model)

    def embed_texts(items: list[EmbedInput]) -> np.ndarray:
        with torch.inference_mode():
            tokens = tokenizer([_prompted(backend, item) for item in items])
            return _normalized(model.encode_text(tokens))

    def embed_images(images: list[np.ndarray]) -> np.ndarray:
        pixels = torch.stack([preprocess(Image.fromarray(image)) for image in images])
        with torch.inference_mode():
            return _normalized(model.encode_image(pixels))

    library = f"open_clip {version('open_clip_torch')}"
    return Reference(library, lambda inputs: _texts_and_images(inputs, embed_texts, embed_images))


def _linear_head(location: str, filename: str, revision: str | None) -> Any:
    """A linear head saved as a state dict in the model folder (BGE-M3's heads)."""
    import torch
    from transformers.utils.hub import cached_file

    path = cached_file(location, filename, revision=revision)
    if path is None:
        raise ReferenceUnavailable(f"{location} has no {filename}")
    state = torch.load(path, weights_only=True)
    out_features, in_features = state["weight"].shape
    head = torch.nn.Linear(in_features, out_features)
    head.load_state_dict(state)
    return head.eval()


def _bge_m3(backend: Backend) -> Reference:
    """BGE-M3's three outputs from its checkpoint, as FlagEmbedding's BGEM3FlagModel
    computes them: [CLS] dense, ReLU sparse weights, ColBERT vectors after [CLS]."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    options: Any = backend.options
    location = _location(options.model)
    tokenizer = AutoTokenizer.from_pretrained(location, revision=options.revision)
    model = AutoModel.from_pretrained(location, revision=options.revision).eval()
    sparse_head = _linear_head(location, "sparse_linear.pt", options.revision)
    colbert_head = _linear_head(location, "colbert_linear.pt", options.revision)
    # FlagEmbedding drops [CLS], </s>, padding and unknown tokens; XLM-R's </s> is its
    # separator, which a BERT-style tokenizer names only as `sep`.
    unused = {
        getattr(tokenizer, f"{name}_token_id") for name in ("cls", "eos", "sep", "pad", "unk")
    }
    max_length = options.max_seq_length or tokenizer.model_max_length

    def embed(inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        encoded = tokenizer(
            [item.text for item in inputs],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        mask = encoded["attention_mask"]
        with torch.inference_mode():
            states = model(**encoded).last_hidden_state
            weights = torch.relu(sparse_head(states)).squeeze(-1)
            colbert = _normalized(colbert_head(states[:, 1:]) * mask[:, 1:, None])
        lengths = mask.sum(dim=1).tolist()
        ids = encoded["input_ids"].tolist()
        return EmbeddingBatch(
            dense=_normalized(states[:, 0]),
            sparse=[
                _lexical_weights(ids[row], weights[row].tolist(), unused)
                for row in range(len(inputs))
            ],
            multivector=[colbert[row, : lengths[row] - 1] for row in range(len(inputs))],
        )

    return Reference(f"transformers {version('transformers')}", embed)


def _lexical_weights(ids: list[int], weights: list[float], unused: set[int]) -> SparseVector:
    """Per token id its largest positive weight, the unused tokens left out."""
    best: dict[int, float] = {}
    for token, weight in zip(ids, weights, strict=True):
        if token not in unused and weight > best.get(token, 0.0):
            best[token] = weight
    indices = np.array(sorted(best), dtype=np.int64)
    return SparseVector(indices, np.array([best[i] for i in sorted(best)], dtype=np.float32))


def _nomic(backend: Backend) -> Reference:
    """Nomic Embed v1.5 as its model cards use transformers: the task prefix, mean pooling,
    layer norm, the Matryoshka cut and L2 for texts; the normalised [CLS] state for images.

    Raises:
        ReferenceUnavailable: transformers 5 or later, which the remote code breaks on.
    """
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    transformers_version = version("transformers")
    if int(transformers_version.split(".", 1)[0]) >= 5:
        raise ReferenceUnavailable(
            f"Nomic's remote code does not run on transformers {transformers_version}: run "
            "verify where transformers<5 is installed, as in the nomic replicas"
        )
    options: Any = backend.options
    dimensions = options.dimensions
    text_location = _location(options.model)
    # A BERT WordPiece tokenizer: no remote code (its config's would only be asked for).
    tokenizer = AutoTokenizer.from_pretrained(
        text_location, revision=options.revision, trust_remote_code=False
    )
    text_model = AutoModel.from_pretrained(
        text_location, revision=options.revision, trust_remote_code=True
    ).eval()

    def embed_texts(items: list[EmbedInput]) -> np.ndarray:
        encoded = tokenizer(
            [_prompted(backend, item) for item in items],
            padding=True,
            truncation=True,
            max_length=options.max_seq_length,
            return_tensors="pt",
        )
        with torch.inference_mode():
            states = text_model(**encoded)[0]
        mask = encoded["attention_mask"].unsqueeze(-1).expand(states.size()).float()
        pooled = torch.sum(states * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
        pooled = torch.nn.functional.layer_norm(pooled, normalized_shape=(pooled.shape[1],))
        return _normalized(pooled[:, :dimensions])

    embed_images = None
    if options.vision_model is not None:
        vision_location = _location(options.vision_model)
        processor: Any = AutoImageProcessor.from_pretrained(vision_location)
        vision_model = AutoModel.from_pretrained(vision_location, trust_remote_code=True).eval()

        def embed_vision(images: list[np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                states = vision_model(**processor(images, return_tensors="pt")).last_hidden_state
            # The vision card has no Matryoshka sizes: compare the served size's share.
            return _normalized(states[:, 0, :dimensions])

        embed_images = embed_vision

    library = f"transformers {transformers_version}"
    return Reference(library, lambda inputs: _texts_and_images(inputs, embed_texts, embed_images))


_REFERENCES: dict[str, Callable[[Backend], Reference]] = {
    "sentence-transformers": _sentence_transformers,
    "clip": _clip,
    "open-clip": _open_clip,
    "bge-m3": _bge_m3,
    "nomic": _nomic,
}
