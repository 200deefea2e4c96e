"""The backend contract every embedding plugin implements.

A backend class is cheap to construct: it validates its options and declares its
capabilities and vector-space identity. Heavy imports (torch, transformers) and weight
loading happen in :meth:`Backend.load`, which runs inside the Ray Serve replica.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    """How the caller will use a vector: asymmetric models prompt queries differently."""

    QUERY = "query"
    DOCUMENT = "document"


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


@dataclass(frozen=True)
class EmbedInput:
    """One item to embed: a text and how it will be used."""

    text: str
    input_type: InputType | None = None


@dataclass(frozen=True)
class EmbeddingBatch:
    """Dense vectors for a batch, one row per input, in input order."""

    dense: np.ndarray  # shape (n, dimensions), float32

    def __post_init__(self) -> None:
        if self.dense.ndim != 2:
            raise ValueError(f"dense vectors must be 2-D, got shape {self.dense.shape}")


class BackendUnavailable(Exception):
    """Raised by `load` when a backend cannot run here by design (a missing extra, an
    incompatible library version). The replica stays up and reports itself unavailable so
    the router can fall back; any other exception in `load` fails the deployment."""


_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class Backend(ABC):
    """Base class of every embedding backend.

    Subclasses set the class attributes, define an `Options` model, and implement
    `capabilities`, `space_identity` and `embed_batch`.

    Class attributes:
        kind: the backend kind users write in config (`kind: sentence-transformers`).
        description: one line shown by `embedserve plugins`.
        modalities / outputs: what any instance of this kind can handle and produce.
        Options: the pydantic model of this kind's `options` in config.
    """

    kind: ClassVar[str]
    description: ClassVar[str] = ""
    modalities: ClassVar[tuple[Modality, ...]] = (Modality.TEXT,)
    outputs: ClassVar[tuple[OutputKind, ...]] = (OutputKind.DENSE,)
    Options: ClassVar[type[BackendOptions]] = BackendOptions

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

    def load(self) -> None:  # noqa: B027 - optional hook, most backends override
        """Import heavy libraries and load weights; runs once inside the replica."""

    def load_tokenizer(self) -> None:  # noqa: B027 - optional hook, for model backends
        """Load only what `count_tokens` and `capabilities.max_input_tokens` need (no
        weights). The router calls it to reject over-long inputs before any replica
        sees them; `load` must make `count_tokens` work too."""

    @abstractmethod
    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        """Embed a batch of inputs; one vector per input, in order."""

    def count_tokens(self, inputs: Sequence[EmbedInput]) -> list[int]:
        """Tokens each input costs, prompts included, before any truncation to
        `max_input_tokens` (for validation, usage and batch token budgets).

        The default counts words and punctuation; model backends use their tokenizer.
        """
        return [len(_WORD.findall(item.text)) for item in inputs]
