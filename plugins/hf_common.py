"""Pieces shared by the transformers-based backends (sentence-transformers, clip, bge-m3,
nomic).

Nothing here imports torch or transformers at module import: the functions that need
them import them when called, inside the replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field

from embedserve import Backend, BackendOptions, EmbedInput, InputType, ModelAbout
from embedserve.plugins.model_card import model_about
from embedserve.plugins.model_files import (
    Dtype,
    model_id,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
    token_budget,
)


class TransformersOptions(BackendOptions):
    """Options every transformers-based backend has: where the model is and how it runs."""

    model: str = Field(
        description="A local folder, a hub id, or `pkg:PACKAGE/FOLDER` inside an installed "
        "Python package."
    )
    model_id: str | None = Field(
        default=None, description="The model's public id, used in the space id (default: `model`)."
    )
    revision: str | None = Field(default=None, description="Hub revision (commit, tag or branch).")
    device: str = Field(
        default="auto", description="`auto` (CUDA when present, else CPU), `cpu`, `cuda:0`..."
    )
    dtype: Dtype = Field(
        default="auto", description="`auto`: float32 on CPU, bfloat16 or float16 on a GPU."
    )


class TransformersBackend(Backend):
    """Base of the backends whose `model` option is a transformers model folder or hub id:
    hub use and attribution come from that option, token counts from its tokenizer."""

    citation: ClassVar[str | None] = None  # cited when the model card has no BibTeX
    _model: Any  # the loaded torch module that embeds texts, set by each kind's `load`
    options: TransformersOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        # Counting has a tokenizer of its own, set by `load_tokenizer`: it runs on the
        # replica's event loop while a batch is encoded in a worker thread, and a fast
        # tokenizer carries padding state.
        self._counter: Any = None
        self._image_tokens = 1  # an image's share of a batch's token budget

    @property
    def uses_model_hub(self) -> bool:
        return resolve_model_path(self.options.model) is None

    def about(self) -> ModelAbout:
        """Licence and BibTeX from the model folder's card; a hub link for a hub id."""
        folder = resolve_model_path(self.options.model)
        hub_id = self.options.model if folder is None else None
        return model_about(model_id(self.options), folder, hub_id, self.citation)

    def token_budget(self, gpu_fraction: float) -> int | None:
        """Tokens per batch from the text model's device and shape (see `token_budget`)."""
        return token_budget(self._text_model(), gpu_fraction)

    def _text_model(self) -> Any:
        """The loaded torch module that embeds texts (`_model`, set by `load`)."""
        return self._model

    def count_tokens(self, inputs: Sequence[EmbedInput]) -> list[int]:
        """Tokens per text as the model's tokenizer sees it, prompt and special tokens in,
        before truncation to `max_input_tokens`; an image costs `_image_tokens`."""
        rows = [row for row, item in enumerate(inputs) if item.image is None]
        counts = [self._image_tokens] * len(inputs)
        if rows:
            texts = self.prompted_texts([inputs[row] for row in rows])
            # verbose=False: an over-long input is expected here; it is refused or truncated.
            encoded = self._counter(texts, truncation=False, verbose=False)
            for row, ids in zip(rows, encoded["input_ids"], strict=True):
                counts[row] = len(ids)
        return counts

    def prompted_texts(self, inputs: Sequence[EmbedInput]) -> list[str]:
        """The texts the model encodes for text `inputs`, each with the prompt of its input
        type (the default: the texts as they are)."""
        return [item.text for item in inputs]

    def named_prompts(self) -> dict[str, str]:
        """Every prompt of the model by name, as TEI's `prompt_name` picks them: here
        those of the input types (a sentence-transformers model adds the others saved
        with it)."""
        return dict(self.capabilities.prompts)


def apply_prompt(prompts: dict[str, str], item: EmbedInput) -> str:
    """The item's text with the prompt of its input type: a template with `{text}`, or
    a prefix."""
    prompt = prompts.get(item.input_type.value, "") if item.input_type else ""
    return prompt.replace("{text}", item.text) if "{text}" in prompt else prompt + item.text


def prompt_dict(prompts: dict[InputType, str]) -> dict[str, str]:
    """Configured prompts keyed by input type name, sorted (for the space identity)."""
    return {key.value: value for key, value in sorted(prompts.items())}


def place(model: Any, device: str, dtype: Dtype) -> Any:
    """The model on its device and dtype, in eval mode."""
    import torch

    device = resolve_device(device)
    return model.to(device, dtype=getattr(torch, resolve_dtype(dtype, device))).eval()
