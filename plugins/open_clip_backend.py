"""`open-clip`: OpenCLIP models (ViT-L-14, ViT-H-14, ...) through
`open_clip.create_model_and_transforms`, texts and images in one normalised space.

open_clip is an optional extra (`embedserve[open-clip]`): without it the replica reports
itself unavailable with the install command, and the router falls back as configured.
An architecture open_clip does not ship is given as a model config JSON
(`model_config_file`), registered in the replica before the model is created.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

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
from embedserve.plugins.model_files import resolve_device, resolve_model_path

INSTALL = "pip install open-clip-torch"
_MODEL_CONFIG_KEYS = {"embed_dim", "vision_cfg", "text_cfg"}


class OpenClipOptions(BackendOptions):
    """Options of the `open-clip` backend."""

    model: str = Field(description="An OpenCLIP architecture, for example `ViT-L-14`.")
    pretrained: str = Field(
        description="A pretrained tag (for example `laion2b_s32b_b82k`) or a weights file."
    )
    model_config_file: str | None = Field(
        default=None,
        description="An OpenCLIP model config JSON (`embed_dim`, `vision_cfg`, `text_cfg`) "
        "for an architecture open_clip does not ship; its file name without `.json` is the "
        "architecture, so `model` must be that name.",
    )
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda:0`...")
    prompts: dict[InputType, str] = Field(
        default_factory=dict, description="Text prompt per input type: template or prefix."
    )

    @model_validator(mode="after")
    def _model_names_its_config(self) -> OpenClipOptions:
        # open_clip registers a config under its file name, so any other `model` would
        # create a built-in architecture (or none) instead of the configured one.
        config = self.model_config_file
        if config is not None and Path(config).stem != self.model:
            raise ValueError(
                f"model_config_file {config} registers the architecture "
                f"{Path(config).stem!r}: set model to that name, not {self.model!r}"
            )
        return self


def import_open_clip() -> Any:
    """The open_clip module.

    Raises:
        BackendUnavailable: open_clip is not installed, with the command that installs it,
            or its torchvision is not built for the installed torch.
    """
    try:
        import open_clip
    except ImportError:
        raise BackendUnavailable(
            f"the open-clip backend needs the open_clip package, which is not installed in "
            f"this replica: run `{INSTALL}` where the replica runs (or add it to the "
            "backend's resources.runtime_env pip list), in one pip command with the "
            "torchvision build of this replica's torch"
        ) from None
    except RuntimeError as error:
        # A torchvision built for another torch (PyPI's CUDA build beside a CPU torch) fails
        # at import with `operator torchvision::nms does not exist`, naming neither build.
        if "torchvision" not in str(error):
            raise
        import torch

        raise BackendUnavailable(
            f"open_clip cannot import torchvision ({error}): the installed torchvision "
            f"{version('torchvision')} is not built for this replica's torch "
            f"{torch.__version__}; install the matching pair in one pip command"
        ) from error
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
        options = self.options
        identity = {
            "kind": self.kind,
            "model": options.model,
            "pretrained": options.pretrained,
            "prompts": prompt_dict(options.prompts),
        }
        # Only a custom architecture adds the key, so built-in models keep their space ids.
        if options.model_config_file is not None:
            identity["model_config_file"] = options.model_config_file
        return identity

    @property
    def uses_model_hub(self) -> bool:
        # A pretrained tag downloads its weights; a weights file does not.
        return resolve_model_path(self.options.pretrained) is None

    def load(self) -> None:
        """Create the model and its transforms; the dimension is read from the model.

        Raises:
            BackendUnavailable: open_clip is not installed.
            ValueError: `model_config_file` is not an OpenCLIP model config.
        """
        open_clip = import_open_clip()
        config = self.options.model_config_file
        if config is not None:
            self._register_model_config(open_clip, resolve_model_path(config) or Path(config))
        weights = resolve_model_path(self.options.pretrained)
        model, _, preprocess = open_clip.create_model_and_transforms(
            self.options.model,
            # open_clip tells a weights file from a tag by `os.path.isfile`: pass the file's
            # resolved path (`pkg:`, `~`), the tag as it is.
            pretrained=self.options.pretrained if weights is None else str(weights),
            device=resolve_device(self.options.device),
        )
        self._model, self._preprocess = model.eval(), preprocess
        self._tokenizer = open_clip.get_tokenizer(self.options.model)
        self._dimensions = int(self._encode_texts([EmbedInput("a")]).shape[1])

    def _register_model_config(self, open_clip: Any, config: Path) -> None:
        """Register `config` with open_clip after checking it is a model config."""
        # open_clip skips a JSON without these keys silently, and `model` would then name
        # a built-in architecture or none.
        missing = _MODEL_CONFIG_KEYS - json.loads(config.read_text()).keys()
        if missing:
            raise ValueError(
                f"model_config_file {config} is not an OpenCLIP model config: it lacks "
                f"{', '.join(sorted(missing))}"
            )
        open_clip.add_model_config(config)

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        dense = np.empty((len(inputs), self._dimensions or 0), dtype=np.float32)
        texts = [i for i, item in enumerate(inputs) if item.image is None]
        images = [i for i, item in enumerate(inputs) if item.image is not None]
        if texts:
            dense[texts] = self._encode_texts([inputs[i] for i in texts])
        if images:
            dense[images] = self._encode_images(
                [item.image for item in inputs if item.image is not None]
            )
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
