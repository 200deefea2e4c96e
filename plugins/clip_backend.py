"""`clip`: SigLIP 2 (the default image backbone), SigLIP and CLIP through transformers.

Texts and images are embedded into one space with the model's own text and image towers
(`get_text_features` / `get_image_features`), L2-normalised. The model, tokenizer and
image processor load with `AutoModel` / `AutoProcessor`; no remote code runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from embedserve import (
    BackendCapabilities,
    EmbeddingBatch,
    EmbedInput,
    InputType,
    Modality,
    hookimpl,
)
from embedserve.plugins.hf_common import (
    TransformersBackend,
    TransformersOptions,
    apply_prompt,
    place,
    prompt_dict,
)
from embedserve.plugins.model_files import model_folder, model_id

# SigLIP and SigLIP 2 were trained on texts padded to the full length; CLIP was not.
_PADDED_TO_MAX_LENGTH = ("siglip", "siglip2")


class ClipOptions(TransformersOptions):
    """Options of the `clip` backend."""

    prompts: dict[InputType, str] = Field(
        default_factory=dict,
        description="Text prompt per input type: a template with `{text}` (for example "
        "`a photo of {text}.`) or a prefix.",
    )
    max_text_tokens: int | None = Field(
        default=None, ge=1, description="Override the text tower's token limit."
    )
    text_padding: Literal["auto", "max_length", "longest"] = Field(
        default="auto", description="`auto`: `max_length` for SigLIP models, else `longest`."
    )


class ClipBackend(TransformersBackend):
    """A CLIP-family model: one space for texts and images."""

    kind = "clip"
    description = "SigLIP 2, SigLIP and CLIP (transformers): texts and images in one space."
    modalities = (Modality.TEXT, Modality.IMAGE)
    Options = ClipOptions
    options: ClipOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._model: Any = None
        self._processor: Any = None
        self._model_type: str | None = None
        self._max_tokens = self.options.max_text_tokens
        self._dimensions: int | None = None

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.capabilities_with(
            dimensions=self._dimensions,
            max_input_tokens=self._max_tokens,
            prompts=prompt_dict(self.options.prompts),
        )

    def space_identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": model_id(self.options),
            "revision": self.options.revision,
            "prompts": prompt_dict(self.options.prompts),
            "max_text_tokens": self.options.max_text_tokens,
        }

    def load_tokenizer(self) -> None:
        """The tokenizer and the text tower's token limit (no weights)."""
        from transformers import AutoConfig, AutoProcessor

        folder = model_folder(self.options)
        config = AutoConfig.from_pretrained(str(folder))
        self._model_type = config.model_type
        self._counter = AutoProcessor.from_pretrained(str(folder)).tokenizer
        self._max_tokens = self.options.max_text_tokens or _text_limit(config)
        self._image_tokens = _image_tokens(config)

    def load(self) -> None:
        """Load the model and its processor; the dimension is read from the model."""
        from transformers import AutoModel, AutoProcessor

        self.load_tokenizer()
        folder: Path = model_folder(self.options)
        self._processor = AutoProcessor.from_pretrained(str(folder))
        model = AutoModel.from_pretrained(str(folder))
        self._model = place(model, self.options.device, self.options.dtype)
        self._dimensions = int(self._embed_texts([EmbedInput("a")]).shape[1])

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        dense = np.empty((len(inputs), self._dimensions or 0), dtype=np.float32)
        text_rows = [i for i, item in enumerate(inputs) if item.image is None]
        image_rows = [i for i, item in enumerate(inputs) if item.image is not None]
        if text_rows:
            dense[text_rows] = self._embed_texts([inputs[i] for i in text_rows])
        if image_rows:
            dense[image_rows] = self._embed_images(
                [item.image for item in inputs if item.image is not None]
            )
        return EmbeddingBatch(dense=dense)

    def prompted_texts(self, inputs: Sequence[EmbedInput]) -> list[str]:
        """The texts with the prompt of their input type (template or prefix)."""
        prompts = prompt_dict(self.options.prompts)
        return [apply_prompt(prompts, item) for item in inputs]

    def _embed_texts(self, inputs: Sequence[EmbedInput]) -> np.ndarray:
        import torch

        tokenizer = self._processor.tokenizer
        padding = self.options.text_padding
        if padding == "auto":
            padding = "max_length" if self._model_type in _PADDED_TO_MAX_LENGTH else "longest"
        encoded = tokenizer(
            self.prompted_texts(inputs),
            padding=padding,
            truncation=True,
            max_length=self._max_tokens,
            return_tensors="pt",
        )
        # Only what the text tower takes (a BERT-style tokenizer adds token_type_ids).
        wanted = {"input_ids", "attention_mask"} & set(tokenizer.model_input_names)
        features = {k: v.to(self._model.device) for k, v in encoded.items() if k in wanted}
        with torch.inference_mode():
            return _normalized(self._model.get_text_features(**features))

    def _embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        pixels = self._processor.image_processor(images=list(images), return_tensors="pt")
        features = {
            k: v.to(self._model.device, dtype=self._model.dtype)
            if v.is_floating_point()
            else v.to(self._model.device)
            for k, v in pixels.items()
        }
        with torch.inference_mode():
            return _normalized(self._model.get_image_features(**features))


def _normalized(output: Any) -> np.ndarray:
    """Unit-length float32 rows from a features call (transformers 5 returns a model
    output whose `pooler_output` is the projected embedding; 4.x a tensor)."""
    import torch

    vectors = output if isinstance(output, torch.Tensor) else output.pooler_output
    vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
    return vectors.cpu().numpy()


def _text_limit(config: Any) -> int:
    """The text tower's position limit (77 for CLIP, 64 for SigLIP)."""
    return int(config.text_config.max_position_embeddings)


def _image_tokens(config: Any) -> int:
    """Patches the image tower sees: the token cost of one image."""
    vision = config.vision_config
    if getattr(vision, "num_patches", None):
        return int(vision.num_patches)
    return int((vision.image_size // vision.patch_size) ** 2)


@hookimpl
def register_backends(register) -> None:
    """Register the `clip` backend."""
    register(ClipBackend)
