"""`sentence-transformers`: any sentence-transformers model, by local path or hub id.

torch and sentence-transformers are imported in `load`, inside the replica.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from embedserve import (
    BackendCapabilities,
    EmbeddingBatch,
    EmbedInput,
    InputType,
    ModelAbout,
    hookimpl,
)
from embedserve.plugins import onnx_runtime
from embedserve.plugins.hf_common import TransformersBackend, TransformersOptions
from embedserve.plugins.model_card import model_about
from embedserve.plugins.model_files import (
    model_folder,
    model_id,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)
from embedserve.runtime.canary import DEFAULT_PROBES

# The sentence-transformers library asks users of its models to cite this paper.
SBERT_CITATION = """@inproceedings{reimers-2019-sentence-bert,
  title     = {Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks},
  author    = {Reimers, Nils and Gurevych, Iryna},
  booktitle = {Proceedings of the 2019 Conference on Empirical Methods in Natural
               Language Processing},
  year      = {2019},
  url       = {https://arxiv.org/abs/1908.10084}
}"""
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_INPUT_TYPES = {t.value for t in InputType}
Runtime = Literal["torch", "auto", "onnx", "onnx-int8"]
# Texts per forward pass on a CPU. Padding to the longest text of a pass costs more there
# than small passes do: MiniLM on 2 threads, 32-text batches of ~64-token texts (56-174
# tokens), 98 docs/s in one pass against 125-132 in sorted passes of 4-8 (onnx), 61
# against 79-80 (torch); 256-token texts gain 7-8%.
CPU_ENCODE_BATCH = 8
_ONNX_RECIPES = {"onnx": onnx_runtime.FLOAT32_RECIPE, "onnx-int8": onnx_runtime.INT8_RECIPE}


class SentenceTransformersOptions(TransformersOptions):
    """Options of the `sentence-transformers` backend."""

    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Expected sha256 of the weights file, verified before loading.",
    )
    normalize: bool = True
    truncate_dim: int | None = Field(
        default=None, ge=1, description="Output dimension (Matryoshka)."
    )
    matryoshka_dimensions: list[int] = Field(
        default_factory=list,
        description="Sizes the model was trained to be truncated to; enables `dimensions`.",
    )
    prompts: dict[InputType, str] = Field(
        default_factory=dict, description="Prompt prepended per input type (query/document)."
    )
    max_seq_length: int | None = Field(
        default=None, ge=1, description="Override the model's limit."
    )
    trust_remote_code: bool = False
    runtime: Runtime = Field(
        default="torch",
        description="`onnx`: the transformer exported to ONNX and run by ONNX Runtime on "
        "the CPU in float32 (the torch vectors, faster); `onnx-int8`: the same with int8 "
        "weights (a space of its own); `auto`: `onnx` when the model runs on the CPU, else "
        "torch. The ONNX runtimes need the `onnx` extra.",
    )
    encode_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Texts per forward pass. A replica's batch is sorted by length and run "
        "in passes of this many, so each text is padded only to its neighbours' length. "
        f"Default: {CPU_ENCODE_BATCH} on a CPU, the whole batch on a GPU.",
    )
    onnx_cache_dir: str | None = Field(
        default=None, description="Where ONNX exports are kept (default ~/.cache/embedserve/onnx)."
    )

    @model_validator(mode="after")
    def _runtime_device(self) -> SentenceTransformersOptions:
        if self.runtime in _ONNX_RECIPES:
            if self.device not in ("auto", "cpu"):
                raise ValueError(
                    f"runtime {self.runtime} runs on the CPU: set device to auto or cpu"
                )
            if self.dtype not in ("auto", "float32"):
                raise ValueError(f"runtime {self.runtime} computes in float32: set dtype to auto")
        return self

    def resolved_runtime(self) -> str:
        """The runtime that computes the vectors: `auto` chooses by the device."""
        if self.runtime != "auto":
            return self.runtime
        return (
            "onnx"
            if resolve_device(self.device) == "cpu" and self.dtype in ("auto", "float32")
            else "torch"
        )

    @field_validator("matryoshka_dimensions")
    @classmethod
    def _sorted_unique(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("Matryoshka dimensions must be positive")
        return sorted(set(sizes), reverse=True)


def weights_sha256(folder: Path) -> tuple[Path, str]:
    """The weights file in `folder` and its sha256."""
    for name in _WEIGHT_FILES:
        candidate = folder / name
        if candidate.is_file():
            digest = hashlib.sha256()
            with candidate.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
            return candidate, digest.hexdigest()
    raise FileNotFoundError(f"no weights file ({', '.join(_WEIGHT_FILES)}) in {folder}")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


class SentenceTransformersBackend(TransformersBackend):
    """A sentence-transformers model."""

    kind = "sentence-transformers"
    description = "Any sentence-transformers model (local folder, package or hub id)."
    Options = SentenceTransformersOptions
    citation = SBERT_CITATION
    options: SentenceTransformersOptions

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._model: Any = None
        self._folder: Path | None = None
        self._saved_prompts: dict[str, str] = {}
        self._max_tokens = self.options.max_seq_length
        self._encode_batch: int | None = None
        truncate = self.options.truncate_dim
        if truncate and any(size > truncate for size in self.options.matryoshka_dimensions):
            raise ValueError("matryoshka_dimensions must not exceed truncate_dim")

    @property
    def model_id(self) -> str:
        """The model's public id (the folder name for local models without `model_id`)."""
        return model_id(self.options)

    def about(self) -> ModelAbout:
        """Licence and BibTeX from the model folder's model card, a hub link when the model
        has a hub id (its `model_id`, or `model` itself), else Sentence-BERT's citation."""
        folder = resolve_model_path(self.options.model)
        hub_id = self.options.model if folder is None else self.options.model_id
        return model_about(
            self.model_id, folder, hub_id if hub_id and "/" in hub_id else None, self.citation
        )

    @property
    def capabilities(self) -> BackendCapabilities:
        dimensions = self.options.truncate_dim
        if self._model is not None:
            dimensions = self._model.get_embedding_dimension()
        return self.capabilities_with(
            dimensions=dimensions,
            matryoshka_dimensions=tuple(
                d
                for d in self.options.matryoshka_dimensions
                if dimensions is None or d < dimensions
            ),
            max_input_tokens=self._max_tokens,
            normalized=self.options.normalize,
            prompts=self._effective_prompts(),
        )

    def named_prompts(self) -> dict[str, str]:
        """The prompts saved with the model (`config_sentence_transformers.json`), any
        name, with the configured ones of the input types over them; empty ones left out."""
        configured = {k.value: v for k, v in self.options.prompts.items()}
        merged = {**self._saved_prompts, **configured}
        return {k: v for k, v in merged.items() if v}

    def _effective_prompts(self) -> dict[str, str]:
        # Only an input type selects a prompt on the embedding routes.
        return {k: v for k, v in self.named_prompts().items() if k in _INPUT_TYPES}

    def space_identity(self) -> dict[str, Any]:
        options = self.options
        return {
            "kind": self.kind,
            "model": self.model_id,
            "revision": options.revision,
            "sha256": options.sha256,
            "normalize": options.normalize,
            "truncate_dim": options.truncate_dim,
            "prompts": {k.value: v for k, v in sorted(options.prompts.items())},
            "max_seq_length": options.max_seq_length,
            # Only a quantised model adds the key: float32 in ONNX Runtime computes torch's
            # vectors (checked at load), and float32 space ids stay as they were.
            **({"runtime": onnx_runtime.INT8_RECIPE} if options.runtime == "onnx-int8" else {}),
        }

    def load_tokenizer(self) -> None:
        """Load the tokenizer, saved prompts and sequence limit: no weights, so the router
        can count tokens and validate requests before they reach a replica."""
        from transformers import AutoTokenizer

        folder = self._model_folder()
        self._counter = AutoTokenizer.from_pretrained(
            str(folder), trust_remote_code=self.options.trust_remote_code
        )
        self._saved_prompts = _read_json(folder / "config_sentence_transformers.json").get(
            "prompts", {}
        )
        saved_limit = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
        self._max_tokens = (
            self.options.max_seq_length or saved_limit or self._counter.model_max_length
        )

    def load(self) -> None:
        """Verify the weights checksum when one is configured, then load the model."""
        import torch
        from sentence_transformers import SentenceTransformer

        self.load_tokenizer()
        folder = self._model_folder()
        if self.options.sha256 is not None:
            self._verify_checksum(folder)
        runtime = self.options.resolved_runtime()
        recipe = _ONNX_RECIPES.get(runtime)
        if recipe:
            onnx_runtime.require_onnxruntime(runtime)
        device = "cpu" if recipe else resolve_device(self.options.device)
        model = SentenceTransformer(
            str(folder),
            device=device,
            trust_remote_code=self.options.trust_remote_code,
            truncate_dim=self.options.truncate_dim,
        )
        if self.options.max_seq_length is not None:
            model.max_seq_length = self.options.max_seq_length
        model.to(getattr(torch, resolve_dtype(self.options.dtype, device)))
        model.eval()
        if recipe:
            self._run_with_onnx(model, folder, recipe)
        self._model = model
        self._max_tokens = model.max_seq_length
        self._encode_batch = self.options.encode_batch_size or (
            CPU_ENCODE_BATCH if device == "cpu" else None
        )

    def _run_with_onnx(self, model: Any, folder: Path, recipe: str) -> None:
        """Switch `model`'s transformer to its ONNX export for `recipe`, after checking that
        the probe texts keep the recipe's cosine bar to torch's vectors."""
        import torch

        reference = model.encode(list(DEFAULT_PROBES), convert_to_numpy=True)
        digest = self.options.sha256 or weights_sha256(folder)[1]
        cache_dir = Path(self.options.onnx_cache_dir or onnx_runtime.default_cache_dir())
        path = onnx_runtime.onnx_model(model, digest, recipe, cache_dir.expanduser())
        onnx_runtime.run_transformer_with(
            model, onnx_runtime.OnnxTransformer(path, threads=torch.get_num_threads())
        )
        exported = model.encode(list(DEFAULT_PROBES), convert_to_numpy=True)
        onnx_runtime.check_quality(reference, exported, recipe)

    def _model_folder(self) -> Path:
        """The model's local folder; a hub model is fetched (or found in the cache)."""
        if self._folder is None:
            self._folder = model_folder(self.options)
        return self._folder

    def _verify_checksum(self, folder: Path) -> None:
        weights, actual = weights_sha256(folder)
        if actual != self.options.sha256:
            raise ValueError(
                f"weights checksum mismatch for {self.model_id}: {weights} has sha256 "
                f"{actual}, the config pins {self.options.sha256}; refusing to load weights "
                "that are not the configured ones"
            )

    def _text_model(self) -> Any:
        """The transformer inside the sentence-transformers model: its device and config
        set the batch token budget."""
        return self._model[0].auto_model

    def prompted_texts(self, inputs: Sequence[EmbedInput]) -> list[str]:
        """The texts with the prompt of their input type prepended, as `encode` does."""
        prompts = self._effective_prompts()
        return [
            prompts.get(item.input_type.value, "") + item.text if item.input_type else item.text
            for item in inputs
        ]

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        dense = np.empty((len(inputs), self._model.get_embedding_dimension()), dtype=np.float32)
        prompts = self._effective_prompts()
        groups: dict[InputType | None, list[int]] = defaultdict(list)
        for row, item in enumerate(inputs):
            groups[item.input_type].append(row)
        for input_type, rows in groups.items():
            dense[rows] = self._model.encode(
                [inputs[row].text for row in rows],
                prompt=prompts.get(input_type.value) if input_type else None,
                # encode sorts the texts by length before cutting them into passes.
                batch_size=self._encode_batch or len(rows),
                normalize_embeddings=self.options.normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return EmbeddingBatch(dense=dense)


@hookimpl
def register_backends(register) -> None:
    """Register the `sentence-transformers` backend."""
    register(SentenceTransformersBackend)
