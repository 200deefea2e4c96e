"""`sentence-transformers`: any sentence-transformers model, by local path or hub id.

Two serving paths, chosen in `load` inside the replica:
- exported (`runtime: onnx`, `onnx-int8`, `openvino`, and `auto` on a CPU): the
  transformer's ONNX export on ONNX Runtime or OpenVINO, with the `tokenizers` library and
  numpy pooling (`st_pipeline`); the replica never imports torch, and the runtime and
  precision are the fastest that pass the fidelity gate (`execution`);
- torch (`runtime: torch`, `auto` on a GPU, and any model whose modules the exported path
  does not run): sentence-transformers itself, imported in `load`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from embedserve import (
    BackendCapabilities,
    BackendUnavailable,
    EmbeddingBatch,
    EmbedInput,
    Execution,
    InputType,
    ModelAbout,
    hookimpl,
)
from embedserve.plugins import execution, onnx_runtime
from embedserve.plugins.cpu_features import cuda_visible
from embedserve.plugins.hf_common import TransformersBackend, TransformersOptions
from embedserve.plugins.model_card import model_about
from embedserve.plugins.model_files import (
    CPU_TOKEN_BUDGET,
    model_folder,
    model_id,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)
from embedserve.plugins.st_pipeline import PipelineSpec, TextEncoder, UnsupportedPipeline
from embedserve.runtime.canary import DEFAULT_PROBES

logger = logging.getLogger("ray.serve")

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
Runtime = Literal["torch", "auto", "onnx", "onnx-int8", "openvino"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
_EXPORTED = ("onnx", "onnx-int8", "openvino")
_PRECISION_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Texts per forward pass on a CPU. Padding to the longest text of a pass costs more there
# than small passes do: MiniLM on 2 threads, 32-text batches of ~64-token texts (56-174
# tokens), 98 docs/s in one pass against 125-132 in sorted passes of 4-8 (onnx), 61
# against 79-80 (torch); 256-token texts gain 7-8%.
CPU_ENCODE_BATCH = 8


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
        description="`auto`: on a CPU, the fastest exported runtime and precision that "
        "pass the fidelity gate (OpenVINO, ONNX Runtime), torch on a GPU; `onnx`: ONNX "
        "Runtime in float32; `onnx-int8`: ONNX Runtime with int8 weights (a space of its "
        "own); `openvino`: OpenVINO. The exported runtimes need the `onnx` extra "
        "(`openvino` for OpenVINO) and never import torch in the replica.",
    )
    precision: Precision = Field(
        default="auto",
        description="Precision of the exported runtimes: `auto` takes the fastest the CPU "
        "computes natively that passes the gate; `fp32`, `bf16`, `fp16` ask for one (bf16 "
        "and fp16 on OpenVINO). torch takes its precision from `dtype`.",
    )
    min_cosine: float = Field(
        default=execution.DEFAULT_MIN_COSINE,
        ge=0.99,
        le=1.0,
        description="The fidelity gate: the worst cosine of the canary probes' vectors to "
        "torch's float32 ones that a reduced precision must reach to serve.",
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
        if self.runtime in _EXPORTED:
            if self.device not in ("auto", "cpu"):
                raise ValueError(
                    f"runtime {self.runtime} runs on the CPU: set device to auto or cpu"
                )
            if self.dtype not in ("auto", "float32"):
                raise ValueError(
                    f"runtime {self.runtime} takes its precision from `precision`: set dtype "
                    "to auto"
                )
        if self.precision == "auto":
            return self
        if self.runtime == "torch":
            raise ValueError("runtime torch takes its precision from `dtype`")
        if self.runtime == "onnx-int8" or (
            self.runtime == "onnx" and self.precision in ("bf16", "fp16")
        ):
            raise ValueError(
                f"runtime {self.runtime} does not compute in {self.precision}: ONNX Runtime "
                "runs fp32 (`onnx`) or int8 (`onnx-int8`); bf16 and fp16 run on `openvino`"
            )
        return self

    def serves_exported(self) -> bool:
        """Whether the vectors come from an exported runtime (no torch in the replica):
        the exported runtimes, and `auto` on a CPU in float32."""
        if self.runtime != "auto":
            return self.runtime in _EXPORTED
        on_gpu = self.device.startswith("cuda") or (self.device == "auto" and cuda_visible())
        return not on_gpu and self.dtype in ("auto", "float32")

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
        self._encoder: TextEncoder | None = None
        self._dimensions: int | None = None
        self._execution: Execution | None = None
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
        dimensions = self._dimensions or self.options.truncate_dim
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
            # Only int8 asked for adds the key: every other runtime and precision serves
            # only vectors within the fidelity gate of torch's float32 ones (checked at
            # load), so they share the float32 space id, whatever `auto` chose.
            **({"runtime": onnx_runtime.INT8_RECIPE} if options.runtime == "onnx-int8" else {}),
            # A gate looser than the default admits vectors farther from float32.
            **(
                {"min_cosine": options.min_cosine}
                if options.min_cosine < execution.DEFAULT_MIN_COSINE
                else {}
            ),
        }

    @property
    def execution(self) -> Execution | None:
        """The runtime and precision chosen at load, with the measured worst cosine."""
        return self._execution

    def load_tokenizer(self) -> None:
        """Load the tokenizer, saved prompts and sequence limit: no weights, so the router
        can count tokens and validate requests before they reach a replica."""
        from transformers import AutoTokenizer

        folder = self._model_folder()
        self._counter = AutoTokenizer.from_pretrained(
            str(folder), trust_remote_code=self.options.trust_remote_code
        )
        self._read_saved_prompts(folder)
        saved_limit = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
        self._max_tokens = (
            self.options.max_seq_length or saved_limit or self._counter.model_max_length
        )

    def _read_saved_prompts(self, folder: Path) -> None:
        self._saved_prompts = _read_json(folder / "config_sentence_transformers.json").get(
            "prompts", {}
        )

    def load(self) -> None:
        """Verify the weights checksum when one is configured, then load the model on the
        exported path where the options and the model's modules allow, else on torch."""
        folder = self._model_folder()
        if self.options.sha256 is not None:
            self._verify_checksum(folder)
        why = f"runtime {self.options.runtime}"
        if self.options.serves_exported():
            try:
                spec = PipelineSpec.read(folder, self.options.max_seq_length)
            except UnsupportedPipeline as exc:
                if self.options.runtime == "onnx-int8":
                    raise BackendUnavailable(f"runtime onnx-int8 cannot run {exc}") from None
                why = f"the torch-free pipeline does not run this model's {exc}"
                logger.warning("%s: serving on torch: %s", self.model_id, why)
            else:
                self._load_exported(folder, spec)
                return
        self._load_torch(folder, why)

    def _load_exported(self, folder: Path, spec: PipelineSpec) -> None:
        """Serve with the runtime and precision `execution` chooses; no torch in this
        process (a missing export is built by a subprocess)."""
        self._encode_batch = self.options.encode_batch_size or CPU_ENCODE_BATCH
        choice = execution.choose_exported(
            spec,
            self.options.runtime,
            self.options.precision,
            self.options.min_cosine,
            self._encode_batch,
            lambda recipe: self._export(folder, recipe),
        )
        self._encoder = encoder = choice.encoder
        self._execution = choice.execution
        self._max_tokens = spec.max_seq_length
        self._read_saved_prompts(folder)
        self._dimensions = encoder.encode(["probe"], 1, self.options.truncate_dim).shape[1]
        logger.info("%s serves on %s: %s", self.model_id, choice.candidate, choice.execution.reason)

    def _export(self, folder: Path, recipe: str) -> onnx_runtime.ExportedModel:
        digest = self.options.sha256 or weights_sha256(folder)[1]
        cache_dir = Path(self.options.onnx_cache_dir or onnx_runtime.default_cache_dir())
        return onnx_runtime.exported_model(
            folder, digest, recipe, cache_dir.expanduser(), self.options.trust_remote_code
        )

    def _load_torch(self, folder: Path, why: str) -> None:
        """Load the model with sentence-transformers on torch. On a GPU with `dtype:
        auto`, half precision serves only where it passes the fidelity gate."""
        import torch
        from sentence_transformers import SentenceTransformer

        self.load_tokenizer()
        device = resolve_device(self.options.device)
        model = SentenceTransformer(
            str(folder),
            device=device,
            trust_remote_code=self.options.trust_remote_code,
            truncate_dim=self.options.truncate_dim,
        )
        if self.options.max_seq_length is not None:
            model.max_seq_length = self.options.max_seq_length
        model.eval()
        dtype = resolve_dtype(self.options.dtype, device)
        cosine = None
        if self.options.dtype == "auto" and dtype != "float32":
            reference = model.encode(list(DEFAULT_PROBES), convert_to_numpy=True)
            model.to(getattr(torch, dtype))
            probes = model.encode(list(DEFAULT_PROBES), convert_to_numpy=True)
            cosine = onnx_runtime.worst_cosine(reference, probes)
            if cosine < self.options.min_cosine:
                why += f"; the gate refused {dtype} ({cosine:.6f} < {self.options.min_cosine})"
                model.to(torch.float32)
                dtype, cosine = "float32", None
        else:
            model.to(getattr(torch, dtype))
        self._model = model
        self._max_tokens = model.max_seq_length
        self._dimensions = model.get_embedding_dimension()
        self._encode_batch = self.options.encode_batch_size or (
            CPU_ENCODE_BATCH if device == "cpu" else None
        )
        self._execution = Execution(
            runtime="torch",
            precision=_PRECISION_OF_DTYPE[dtype],
            min_cosine=None if cosine is None else round(cosine, 6),
            reason=why,
        )

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

    def token_budget(self, gpu_fraction: float) -> int | None:
        """The exported runtimes run on the CPU; torch's budget follows its device."""
        if self._encoder is not None:
            return CPU_TOKEN_BUDGET
        return super().token_budget(gpu_fraction)

    def count_tokens(self, inputs: Sequence[EmbedInput]) -> list[int]:
        """Tokens per text with its prompt: the `tokenizers` library on the exported path,
        the transformers tokenizer otherwise."""
        if self._encoder is None:
            return super().count_tokens(inputs)
        return self._encoder.tokenizer.count(self.prompted_texts(inputs))

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
        dense = np.empty((len(inputs), self._dimensions or 0), dtype=np.float32)
        prompts = self._effective_prompts()
        groups: dict[InputType | None, list[int]] = defaultdict(list)
        for row, item in enumerate(inputs):
            groups[item.input_type].append(row)
        for input_type, rows in groups.items():
            prompt = prompts.get(input_type.value) if input_type else None
            dense[rows] = self._encode([inputs[row].text for row in rows], prompt)
        return EmbeddingBatch(dense=dense)

    def _encode(self, texts: list[str], prompt: str | None) -> np.ndarray:
        """Vectors of texts of one input type; either path sorts them by length before
        cutting them into passes."""
        if self._encoder is not None:
            return self._encoder.encode(
                [(prompt or "") + text for text in texts],
                self._encode_batch or len(texts),
                self.options.truncate_dim,
                self.options.normalize,
            )
        return self._model.encode(
            texts,
            prompt=prompt,
            batch_size=self._encode_batch or len(texts),
            normalize_embeddings=self.options.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )


@hookimpl
def register_backends(register) -> None:
    """Register the `sentence-transformers` backend."""
    register(SentenceTransformersBackend)
