"""The backend contract every embedding plugin implements.

A backend class is cheap to construct: it validates its options and declares its
capabilities and vector-space identity. Heavy imports (torch, transformers) and weight
loading happen in :meth:`Backend.load`, which runs inside the Ray Serve replica.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict


class Modality(str, Enum):
    """What kind of item a backend can embed."""

    TEXT = "text"
    IMAGE = "image"


class OutputKind(str, Enum):
    """Which vector representations a backend can produce."""

    DENSE = "dense"
    SPARSE = "sparse"
    MULTIVECTOR = "multivector"


class InputType(str, Enum):
    """How the caller will use a vector: asymmetric models prompt queries differently.

    `clustering` and `classification` are the task prefixes of models such as Nomic
    Embed; a backend without a prompt for an input type embeds the item as it is.
    """

    QUERY = "query"
    DOCUMENT = "document"
    CLUSTERING = "clustering"
    CLASSIFICATION = "classification"


class BackendOptions(BaseModel):
    """Base for a backend's options model; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackendCapabilities(BaseModel):
    """What a configured backend can do; `dimensions` is None until the model is loaded."""

    model_config = ConfigDict(frozen=True)

    modalities: tuple[Modality, ...] = (Modality.TEXT,)
    outputs: tuple[OutputKind, ...] = (OutputKind.DENSE,)
    dimensions: int | None = None
    matryoshka_dimensions: tuple[int, ...] = ()
    max_input_tokens: int | None = None
    normalized: bool = True
    semantic: bool = True
    prompts: dict[str, str] = {}


class ModelAbout(BaseModel):
    """Attribution of the model behind a backend: what `embedserve about` and
    `GET /v1/about` show. Every field is optional; None means the plugin does not know."""

    model_config = ConfigDict(frozen=True)

    model: str | None = None
    license: str | None = None  # an SPDX id or the licence's name, as the model card says
    model_card: str | None = None  # a URL
    citation: str | None = None  # BibTeX, or a plain reference


class Execution(BaseModel):
    """How a loaded backend computes its vectors: the runtime and precision it chose at
    load (`runtime: auto`, `precision: auto`), the fidelity it measured, and why."""

    model_config = ConfigDict(frozen=True)

    runtime: str  # torch, onnxruntime, openvino
    precision: str  # fp32, bf16, fp16, int8
    # The worst cosine of the canary probes' vectors to torch's float32 ones, measured at
    # load; None where the vectors are torch's float32 ones themselves.
    min_cosine: float | None = None
    reason: str = ""


@dataclass(frozen=True)
class EmbedInput:
    """One item to embed: a text or a decoded image, how it will be used, and which
    outputs the caller wants (a backend may skip computing the others).

    `image`, when set, is an RGB `uint8` array of shape (height, width, 3), decoded and
    checked by the router; `text` is then empty.
    """

    text: str = ""
    input_type: InputType | None = None
    image: np.ndarray | None = field(default=None, compare=False, repr=False)
    outputs: tuple[OutputKind, ...] = (OutputKind.DENSE,)

    @property
    def modality(self) -> Modality:
        """Whether this item is a text or an image."""
        return Modality.TEXT if self.image is None else Modality.IMAGE


@dataclass(frozen=True)
class SparseVector:
    """A sparse (lexical) vector: vocabulary ids with their weights, as vector stores take
    them; `tokens` are the ids' token strings, where the backend knows them."""

    indices: np.ndarray  # int64 token ids, ascending
    values: np.ndarray  # float32 weights, one per index
    tokens: tuple[str, ...] | None = None


@dataclass(frozen=True)
class EmbeddingBatch:
    """Vectors for a batch, one entry per input, in input order.

    `dense` is always there. `sparse` and `multivector` are set by backends that produce
    them, as lists aligned with the inputs, with None for an item that did not ask for
    that output; a multi-vector is a float32 array of shape (tokens, dimensions).
    """

    dense: np.ndarray  # shape (n, dimensions), float32
    sparse: list[SparseVector | None] | None = None
    multivector: list[np.ndarray | None] | None = None

    def __post_init__(self) -> None:
        if self.dense.ndim != 2:
            raise ValueError(f"dense vectors must be 2-D, got shape {self.dense.shape}")
        for name in ("sparse", "multivector"):
            rows = getattr(self, name)
            if rows is not None and len(rows) != self.dense.shape[0]:
                raise ValueError(f"{len(rows)} {name} rows for {self.dense.shape[0]} inputs")

    def rows(self, start: int, stop: int) -> EmbeddingBatch:
        """The entries of inputs `start` to `stop` (a request's share of a batch)."""
        return EmbeddingBatch(
            dense=self.dense[start:stop],
            sparse=None if self.sparse is None else self.sparse[start:stop],
            multivector=None if self.multivector is None else self.multivector[start:stop],
        )

    @staticmethod
    def concatenate(parts: Sequence[EmbeddingBatch]) -> EmbeddingBatch:
        """The parts' entries one after the other (a request reassembled from chunks)."""
        return EmbeddingBatch(
            dense=np.concatenate([part.dense for part in parts]),
            sparse=_joined(parts, "sparse"),
            multivector=_joined(parts, "multivector"),
        )


def _joined(parts: Sequence[EmbeddingBatch], output: str) -> list[Any] | None:
    """One optional output of several parts, joined in order; None when no part has it."""
    rows = [getattr(part, output) for part in parts]
    if all(row is None for row in rows):
        return None
    return [
        entry
        for part, part_rows in zip(parts, rows, strict=True)
        for entry in (part_rows if part_rows is not None else [None] * len(part.dense))
    ]


@dataclass(frozen=True)
class BackendAnswer:
    """What a backend replica returns for one request: vectors and token counts, and the
    sparse and multi-vector outputs (aligned with the inputs) where they were asked for."""

    dense: np.ndarray
    token_counts: list[int]
    sparse: list[SparseVector | None] | None = None
    multivector: list[np.ndarray | None] | None = None
    # Wall time inside the replica (queue and batches), and of the router's call to it
    # (the round trip): the `Server-Timing` of the answer.
    replica_seconds: float = 0.0
    call_seconds: float = 0.0


class BackendUnavailable(Exception):
    """Raised by `load` when a backend cannot run here by design (a missing extra, an
    incompatible library version). The replica stays up and reports itself unavailable so
    the router can fall back; any other exception in `load` fails the deployment."""


_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class Backend(ABC):
    """Base class of every embedding backend.

    Subclasses set the class attributes, define an `Options` model, and implement
    `capabilities` (with `capabilities_with`, stating only what differs from the class
    attributes and the defaults), `space_identity` and `embed_batch`.

    Class attributes:
        kind: the backend kind users write in config (`kind: sentence-transformers`).
        description: one line shown by `embedserve plugins`.
        modalities / outputs: what any instance of this kind can handle and produce.
        Options: the pydantic model of this kind's `options` in config.

    Attributes:
        options: this backend's validated `Options`.
    """

    kind: ClassVar[str]
    description: ClassVar[str] = ""
    modalities: ClassVar[tuple[Modality, ...]] = (Modality.TEXT,)
    outputs: ClassVar[tuple[OutputKind, ...]] = (OutputKind.DENSE,)
    Options: ClassVar[type[BackendOptions]] = BackendOptions
    options: BackendOptions

    def __init__(self, options: Mapping[str, Any] | BackendOptions | None = None) -> None:
        """Validate options; must stay cheap (no heavy imports, no I/O)."""
        if isinstance(options, BackendOptions):
            self.options = options
        else:
            self.options = self.Options.model_validate(dict(options or {}))

    @property
    @abstractmethod
    def capabilities(self) -> BackendCapabilities:
        """What this configured backend can do (after `load`, with `dimensions` set)."""

    def capabilities_with(self, **fields: Any) -> BackendCapabilities:
        """This kind's capabilities: the class's `modalities` and `outputs`, with `fields`.

        Args:
            fields: the `BackendCapabilities` fields that differ from those and from the
                defaults, such as `dimensions` (or `modalities`, for an instance that
                handles fewer than its class).

        Returns:
            What a `capabilities` property returns.
        """
        return BackendCapabilities(
            **{"modalities": self.modalities, "outputs": self.outputs, **fields}
        )

    @abstractmethod
    def space_identity(self) -> dict[str, Any]:
        """Everything that determines the vectors (model id, weights checksum or revision,
        pooling, normalisation, prompts, output dimension), JSON-serialisable. Two backends
        with equal identities produce comparable vectors; device and dtype are not part."""

    @property
    def uses_model_hub(self) -> bool:
        """Whether loading may contact a model hub (decides the default `offline` mode)."""
        return False

    def about(self) -> ModelAbout | None:
        """The model's licence, model card and citation, where this plugin knows them.

        Optional; the default knows nothing. Runs outside replicas too (the CLI), so it may
        read small local files such as a model card but must not load weights.
        """
        return None

    @property
    def execution(self) -> Execution | None:
        """How the loaded backend computes its vectors (runtime, precision, measured
        fidelity), for status pages; None where the plugin does not say."""
        return None

    def load(self) -> None:  # noqa: B027 - optional hook, most backends override
        """Import heavy libraries and load weights; runs once inside the replica."""

    def load_tokenizer(self) -> None:  # noqa: B027 - optional hook, for model backends
        """Load only what `count_tokens` and `capabilities.max_input_tokens` need (no
        weights). The router calls it to reject over-long inputs before any replica
        sees them; `load` must make `count_tokens` work too."""

    @abstractmethod
    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        """Embed a batch of inputs; one entry per input, in order.

        Images arrive decoded (`EmbedInput.image`); a backend only gets items of the
        modalities its capabilities declare. `sparse` / `multivector` are filled for the
        items whose `outputs` ask for them.
        """

    def token_budget(self, gpu_fraction: float) -> int | None:
        """Most tokens in one batch on this backend's device, for `max_batch_tokens:
        auto`; called after `load`. `gpu_fraction` is the replica's reserved share of a
        GPU (0 without one). The default, None, leaves the server's default."""
        return None

    def count_tokens(self, inputs: Sequence[EmbedInput]) -> list[int]:
        """Tokens each input costs, prompts included, before any truncation to
        `max_input_tokens` (for validation, usage and batch token budgets).

        The default counts words and punctuation (an image, having no text, costs 0);
        model backends use their tokenizer.
        """
        return [len(_WORD.findall(item.text)) for item in inputs]
