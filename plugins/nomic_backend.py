"""`nomic`: Nomic Embed v1.5, text and vision towers in one space.

Texts get Nomic's task prefixes from the request's input type (`search_query: `,
`search_document: `, `clustering: `, `classification: `); text vectors are mean-pooled,
layer-normed, cut to the Matryoshka size and L2-normalised, as the model card does.
Images (with `vision_model`) are the normalised [CLS] state of the vision tower.

Both towers need the models' remote code, which breaks on transformers 5 (loading
crashes on `all_tied_weights_keys`, or rotary buffers silently become NaN). `load`
refuses an incompatible transformers with `BackendUnavailable`, so the router falls
back as configured; its replicas get `transformers<5` from an overlay environment
(`resources.runtime_env.embedserve_overlay`, see `embedserve.runtime.overlay_env`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from embedserve import (
    BackendCapabilities,
    BackendUnavailable,
    EmbeddingBatch,
    EmbedInput,
    InputType,
    Modality,
    hookimpl,
)
from embedserve.plugins.hf_common import (
    TransformersBackend,
    TransformersOptions,
    place,
)
from embedserve.plugins.model_files import model_id, resolve_model_path

logger = logging.getLogger(__name__)
NATIVE_DIMENSIONS = 768
MATRYOSHKA_DIMENSIONS = (512, 256, 128, 64)
TASK_PREFIXES = {
    InputType.QUERY: "search_query: ",
    InputType.DOCUMENT: "search_document: ",
    InputType.CLUSTERING: "clustering: ",
    InputType.CLASSIFICATION: "classification: ",
}


class NomicOptions(TransformersOptions):
    """Options of the `nomic` backend (`model` is the text model)."""

    model: str = Field(
        default="nomic-ai/nomic-embed-text-v1.5", description="The text model: folder or hub id."
    )
    model_id: str | None = "nomic-ai/nomic-embed-text-v1.5"
    vision_model: str | None = Field(
        default=None, description="nomic-embed-vision-v1.5 (folder or hub id) to embed images."
    )
    dimensions: int = Field(
        default=NATIVE_DIMENSIONS, description="Output size: 768 or a Matryoshka size (512..64)."
    )
    default_input_type: InputType = Field(
        default=InputType.DOCUMENT, description="Task prefix for requests without an input type."
    )
    max_seq_length: int = Field(default=8192, ge=1, description="Token limit of the text tower.")

    @field_validator("dimensions")
    @classmethod
    def _trained_size(cls, size: int) -> int:
        if size != NATIVE_DIMENSIONS and size not in MATRYOSHKA_DIMENSIONS:
            raise ValueError(f"must be {NATIVE_DIMENSIONS} or one of {MATRYOSHKA_DIMENSIONS}")
        return size


def check_transformers(version: str) -> None:
    """Refuse a transformers major version the Nomic remote code does not run on.

    Raises:
        BackendUnavailable: saying why and what to do.
    """
    major = int(version.split(".", 1)[0])
    if major >= 5:
        raise BackendUnavailable(
            f"Nomic Embed v1.5's remote code does not work with transformers {version}: "
            "loading crashes on `all_tied_weights_keys`, or its rotary buffers silently "
            "become NaN. Run this backend with transformers<5 in an overlay environment "
            "(resources.runtime_env: {embedserve_overlay: ['transformers>=4.44,<5', "
            "'einops']}, on nodes started with embedserve's runtime_env plugin in "
            "RAY_RUNTIME_ENV_PLUGINS: without it Ray ignores that field), or serve images "
            "and text with the `clip` backend and SigLIP 2 instead"
        )


def pool_text(states: Any, mask: Any, dimensions: int) -> np.ndarray:
    """Nomic's text pooling: mean over real tokens, layer norm, Matryoshka cut, L2."""
    import torch

    weights = mask.unsqueeze(-1).to(states.dtype)
    mean = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    normed = torch.nn.functional.layer_norm(mean.float(), normalized_shape=(mean.shape[1],))
    return torch.nn.functional.normalize(normed[:, :dimensions], dim=-1).cpu().numpy()


def pool_image(states: Any, dimensions: int) -> np.ndarray:
    """Nomic's image embedding: the [CLS] state, cut to `dimensions`, L2-normalised."""
    import torch

    cls = states[:, 0, :dimensions].float()
    return torch.nn.functional.normalize(cls, dim=-1).cpu().numpy()


class NomicBackend(TransformersBackend):
    """Nomic Embed v1.5: task-prefixed text and (optionally) images in one space."""

    kind = "nomic"
    description = "Nomic Embed v1.5 text and vision (needs transformers<5 in its replica)."
    modalities = (Modality.TEXT, Modality.IMAGE)
    Options = NomicOptions
    options: NomicOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._text: Any = None
        self._vision: Any = None
        self._tokenizer: Any = None
        self._image_processor: Any = None

    @property
    def capabilities(self) -> BackendCapabilities:
        size = self.options.dimensions
        return self.capabilities_with(
            modalities=self.modalities if self.options.vision_model else (Modality.TEXT,),
            dimensions=size,
            matryoshka_dimensions=tuple(d for d in MATRYOSHKA_DIMENSIONS if d < size),
            max_input_tokens=self.options.max_seq_length,
            prompts={key.value: value for key, value in TASK_PREFIXES.items()},
        )

    def space_identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": model_id(self.options),
            "revision": self.options.revision,
            "vision_model": self.options.vision_model,
            "dimensions": self.options.dimensions,
            "default_input_type": self.options.default_input_type.value,
            "max_seq_length": self.options.max_seq_length,
        }

    @property
    def uses_model_hub(self) -> bool:
        models = [self.options.model, self.options.vision_model]
        return any(m is not None and resolve_model_path(m) is None for m in models)

    def prompted_texts(self, inputs: Sequence[EmbedInput]) -> list[str]:
        """The texts with the task prefix of their input type (the default when none)."""
        default = self.options.default_input_type
        return [TASK_PREFIXES[item.input_type or default] + item.text for item in inputs]

    def load_tokenizer(self) -> None:
        """The text tokenizer, for counting (the router loads it on any transformers)."""
        self._counter = self._text_tokenizer()

    def _text_tokenizer(self) -> Any:
        """The text model's BERT WordPiece tokenizer. It needs no remote code: refusing it
        keeps transformers from asking for the config's (and from waiting for an answer
        at a prompt, in a process that has a terminal)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            self._folder(self.options.model), trust_remote_code=False
        )

    def load(self) -> None:
        """Refuse an incompatible transformers, then load the towers with their code."""
        import transformers
        from transformers import AutoImageProcessor, AutoModel

        check_transformers(transformers.__version__)
        self.load_tokenizer()
        self._tokenizer = self._text_tokenizer()
        text_folder = self._folder(self.options.model)
        model = AutoModel.from_pretrained(text_folder, trust_remote_code=True)
        self._text = place(model, self.options.device, self.options.dtype)
        if self.options.vision_model:
            vision_folder = self._folder(self.options.vision_model)
            self._image_processor = AutoImageProcessor.from_pretrained(vision_folder)
            vision = AutoModel.from_pretrained(vision_folder, trust_remote_code=True)
            self._vision = place(vision, self.options.device, self.options.dtype)
        # Which transformers runs the remote code matters (see check_transformers), and in
        # a replica with its own overlay environment it is not the one the app runs.
        logger.info(
            "nomic: %s loaded with its remote code on transformers %s",
            type(self._text).__name__,
            transformers.__version__,
        )

    def _folder(self, model: str) -> str:
        from embedserve.plugins.model_files import model_folder

        return str(model_folder(self.options.model_copy(update={"model": model})))

    def _text_model(self) -> Any:
        """The text tower: its device and config set the batch token budget."""
        return self._text

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        import torch

        dense = np.empty((len(inputs), self.options.dimensions), dtype=np.float32)
        texts = [i for i, item in enumerate(inputs) if item.image is None]
        images = [i for i, item in enumerate(inputs) if item.image is not None]
        with torch.inference_mode():
            if texts:
                dense[texts] = self._embed_texts([inputs[i] for i in texts])
            if images:
                pixels = self._image_processor(
                    [inputs[i].image for i in images], return_tensors="pt"
                )
                states = self._vision(**pixels.to(self._vision.device)).last_hidden_state
                dense[images] = pool_image(states, self.options.dimensions)
        return EmbeddingBatch(dense=dense)

    def _embed_texts(self, inputs: Sequence[EmbedInput]) -> np.ndarray:
        encoded = self._tokenizer(
            self.prompted_texts(inputs),
            padding=True,
            truncation=True,
            max_length=self.options.max_seq_length,
            return_tensors="pt",
        ).to(self._text.device)
        states = self._text(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
        ).last_hidden_state
        return pool_text(states, encoded["attention_mask"], self.options.dimensions)


@hookimpl
def register_backends(register) -> None:
    """Register the `nomic` backend."""
    register(NomicBackend)
