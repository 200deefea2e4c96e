"""`open-clip`: OpenCLIP models (ViT-L-14, ViT-H-14, ...) through
`open_clip.create_model_and_transforms`, texts and images in one normalised space.

open_clip is an optional extra: without it the replica reports itself unavailable with
the install command, and the router falls back as configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from embedserve import (
    Backend,
    BackendCapabilities,
    BackendOptions,
    BackendUnavailable,
    EmbeddingBatch,
    EmbedInput,
    InputType,
    Modality,
    hookimpl,
)
from embedserve.plugins.hf_common import apply_prompt, prompt_dict
from embedserve.plugins.model_files import resolve_device

INSTALL = "pip install open-clip-torch"


class OpenClipOptions(BackendOptions):
    """Options of the `open-clip` backend."""

    model: str = Field(description="An OpenCLIP architecture, for example `ViT-L-14`.")
    pretrained: str = Field(
        description="A pretrained tag (for example `laion2b_s32b_b82k`) or a weights file."
    )
    device: str = Field("auto", description="`auto`, `cpu`, `cuda:0`...")
    prompts: dict[InputType, str] = Field(
        default_factory=dict, description="Text prompt per input type: template or prefix."
    )


def import_open_clip() -> Any:
    """The open_clip module.

    Raises:
        BackendUnavailable: open_clip is not installed, with the command that installs it.
    """
    try:
        import open_clip
    except ImportError:
        raise BackendUnavailable(
            f"the open-clip backend needs the open_clip package, which is not installed in "
            f"this replica: run `{INSTALL}` where the replica runs (or add it to the "
            "backend's resources.runtime_env pip list)"
        ) from None
    return open_clip


class OpenClipBackend(Backend):
    """An OpenCLIP model: one space for texts and images."""

    kind = "open-clip"
    description = "OpenCLIP models (optional extra: open-clip-torch): texts and images."
    modalities = (Modality.TEXT, Modality.IMAGE)
    Options = OpenClipOptions
    options: OpenClipOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._dimensions: int | None = None

    @property
    def capabilities(self) -> BackendCapabilities:
        context = getattr(self._model, "context_length", None)
        return self.capabilities_with(
            dimensions=self._dimensions,
            max_input_tokens=context,
            prompts=prompt_dict(self.options.prompts),
        )

    def space_identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.options.model,
            "pretrained": self.options.pretrained,
            "prompts": prompt_dict(self.options.prompts),
        }

    @property
    def uses_model_hub(self) -> bool:
        return True  # pretrained tags download weights

    def load(self) -> None:
        """Create the model and its transforms; the dimension is read from the model."""
        open_clip = import_open_clip()
        device = resolve_device(self.options.device)
        model, _, preprocess = open_clip.create_model_and_transforms(
            self.options.model, pretrained=self.options.pretrained, device=device
        )
        self._model, self._preprocess = model.eval(), preprocess
        self._tokenizer = open_clip.get_tokenizer(self.options.model)
        self._dimensions = int(self._encode_texts([EmbedInput("a")]).shape[1])

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        dense = np.empty((len(inputs), self._dimensions or 0), dtype=np.float32)
        texts = [i for i, item in enumerate(inputs) if item.image is None]
        images = [i for i, item in enumerate(inputs) if item.image is not None]
        if texts:
            dense[texts] = self._encode_texts([inputs[i] for i in texts])
        if images:
            dense[images] = self._encode_images([inputs[i].image for i in images])
        return EmbeddingBatch(dense=dense)

    def _encode_texts(self, inputs: Sequence[EmbedInput]) -> np.ndarray:
        import torch

        prompts = prompt_dict(self.options.prompts)
        tokens = self._tokenizer([apply_prompt(prompts, item) for item in inputs])
        with torch.inference_mode():
            vectors = self._model.encode_text(tokens.to(self._device()), normalize=True)
        return vectors.float().cpu().numpy()

    def _encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        pixels = torch.stack([self._preprocess(Image.fromarray(image)) for image in images])
        with torch.inference_mode():
            vectors = self._model.encode_image(pixels.to(self._device()), normalize=True)
        return vectors.float().cpu().numpy()

    def _device(self) -> Any:
        return next(self._model.parameters()).device


@hookimpl
def register_backends(register) -> None:
    """Register the `open-clip` backend."""
    register(OpenClipBackend)
