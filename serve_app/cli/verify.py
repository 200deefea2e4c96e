"""`embedserve verify`: do the served vectors equal what the model's own library computes?

For each backend (or each model's primary, over HTTP), a fixed set of texts, embedded as
queries and as documents, and sample photos for backends that embed images, go through
the server and through the backend's reference library
(`embedserve.cli.reference_libraries`). Per output (dense, sparse, multivector) the command
prints the minimum and mean cosine between the two, and exits 1 when any is under
`--min-cosine`. Backends without a reference library are named and skipped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import numpy as np

from embedserve.backend import (
    Backend,
    BackendUnavailable,
    EmbeddingBatch,
    EmbedInput,
    InputType,
    Modality,
    OutputKind,
    SparseVector,
)
from embedserve.cli.reference_libraries import ReferenceUnavailable, reference_for
from embedserve.client import (
    EmbedClient,
    Embeddings,
    EmbedServeAPIError,
    MultiVectorEmbeddings,
    SpaceStamp,
    SparseEmbeddings,
)
from embedserve.config import ConfigError, EmbedServeConfig, load_config

T = TypeVar("T")

DEFAULT_MIN_COSINE = 0.999
# Short and long, several languages, digits and punctuation: what tokenisation, padding
# and truncation treat differently.
VERIFY_TEXTS = (
    "A man is eating food.",
    "Ray Serve deploys models behind one HTTP endpoint, with autoscaling replicas.",
    "What is the capital of France?",
    "Die Katze sitzt auf der Matte und schaut aus dem Fenster.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "Invoice #4711: 3 x 12.50 EUR, due 2024-03-31.",
    "embeddings",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn, while "
    "the farmer counts his sheep and the church bells ring for the third time.",
)
# scikit-image's sample photos: an astronaut, a cat, a cup of coffee.
SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee")
_INPUT_TYPES = (InputType.QUERY, InputType.DOCUMENT)
# How the server embeds the inputs: over HTTP or with the backend loaded in this process.
Served = Callable[[list[EmbedInput]], EmbeddingBatch]


def sample_images() -> list[np.ndarray]:
    """scikit-image's sample photos when it is installed, else generated RGB images."""
    try:
        import skimage.data
    except ImportError:
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 255, 96, dtype=np.float32)
        return [
            np.clip(
                ramp[:, None, None] * (k + 1) / 3 + rng.normal(0, 30, (96, 96, 3)), 0, 255
            ).astype(np.uint8)
            for k in range(3)
        ]
    return [getattr(skimage.data, name)()[..., :3] for name in SAMPLE_PHOTOS]


def verify_inputs(backend: Backend) -> list[EmbedInput]:
    """The texts as queries and as documents with every output the backend has, then the
    sample images when it embeds images."""
    capabilities = backend.capabilities
    texts = [
        EmbedInput(text, input_type, outputs=capabilities.outputs)
        for input_type in _INPUT_TYPES
        for text in VERIFY_TEXTS
    ]
    if Modality.IMAGE not in capabilities.modalities:
        return texts
    return texts + [EmbedInput(image=image) for image in sample_images()]


@dataclass(frozen=True)
class Agreement:
    """The cosines between served and reference vectors of one output."""

    output: OutputKind
    cosines: np.ndarray  # one per item (dense, sparse) or per token vector (multivector)
    problem: str | None = None  # why the outputs could not be compared

    def passed(self, min_cosine: float) -> bool:
        """Whether the output was compared and its worst cosine reaches `min_cosine`."""
        return self.problem is None and float(self.cosines.min()) >= min_cosine

    def line(self, min_cosine: float) -> str:
        """One line of the report."""
        if self.problem is not None:
            return f"  {self.output.value:<12} FAILED: {self.problem}"
        low, mean = float(self.cosines.min()), float(self.cosines.mean())
        verdict = "" if low >= min_cosine else f"  under {min_cosine}"
        return f"  {self.output.value:<12} min {low:.6f}  mean {mean:.6f}{verdict}"


def _cosines(served: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise cosines of two (n, d) arrays; a zero row has cosine 0."""
    norms = np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1)
    dots = (served.astype(np.float64) * reference).sum(axis=1)
    return np.where(norms == 0, 0.0, dots / np.where(norms == 0, 1, norms))


def _sparse_cosine(served: SparseVector, reference: SparseVector) -> float:
    """Cosine of two sparse vectors over the union of their token ids (1 when both are
    empty: no token has weight in either)."""
    ids = np.union1d(served.indices, reference.indices)
    a, b = np.zeros(len(ids)), np.zeros(len(ids))
    a[np.searchsorted(ids, served.indices)] = served.values
    b[np.searchsorted(ids, reference.indices)] = reference.values
    if not a.any() and not b.any():
        return 1.0
    return float(_cosines(a[None], b[None])[0])


def compare(
    served: EmbeddingBatch, reference: EmbeddingBatch, outputs: Sequence[OutputKind]
) -> list[Agreement]:
    """Served against reference vectors, per output."""
    found = []
    for output in outputs:
        if output is OutputKind.DENSE:
            if served.dense.shape != reference.dense.shape:
                problem = f"served shape {served.dense.shape}, reference {reference.dense.shape}"
                found.append(Agreement(output, np.zeros(1), problem))
            else:
                found.append(Agreement(output, _cosines(served.dense, reference.dense)))
        elif output is OutputKind.SPARSE:
            pairs = zip(_rows(served.sparse), _rows(reference.sparse), strict=True)
            found.append(Agreement(output, np.array([_sparse_cosine(*p) for p in pairs])))
        else:
            found.append(_multivector_agreement(served, reference))
    return found


def _rows(rows: Sequence[T | None] | None) -> list[T]:
    """An output's rows; every item asks for it, so a missing row leaves the lists of
    unequal length, which the comparison refuses."""
    return [row for row in rows or () if row is not None]


def _multivector_agreement(served: EmbeddingBatch, reference: EmbeddingBatch) -> Agreement:
    pairs = list(zip(_rows(served.multivector), _rows(reference.multivector), strict=True))
    for row, (mine, theirs) in enumerate(pairs):
        if mine.shape != theirs.shape:
            problem = f"item {row}: served shape {mine.shape}, reference {theirs.shape}"
            return Agreement(OutputKind.MULTIVECTOR, np.zeros(1), problem)
    return Agreement(OutputKind.MULTIVECTOR, np.concatenate([_cosines(*p) for p in pairs]))


def _served_over_http(
    client: EmbedClient, model: str, backend: str, inputs: list[EmbedInput]
) -> EmbeddingBatch:
    """The model's answers for `verify_inputs`, as one batch in their order.

    Raises:
        ValueError: a backend other than `backend` answered (a fallback served).
    """
    outputs = inputs[0].outputs
    dense: list[np.ndarray] = []
    extra: dict[OutputKind, list] = {o: [] for o in outputs if o is not OutputKind.DENSE}
    for input_type in _INPUT_TYPES:
        texts = [item.text for item in inputs if item.input_type is input_type]
        for output in outputs:
            answer = _ask(client, model, output, texts, input_type)
            _check_served_by(answer, backend)
            rows: list[Any] = dense if output is OutputKind.DENSE else extra[output]
            rows.extend(answer.vectors)
    images = [item.image for item in inputs if item.image is not None]
    if images:
        answer = client.embed_image(images, model=model)
        _check_served_by(answer, backend)
        dense.extend(answer.vectors)
    return EmbeddingBatch(dense=np.stack(dense), **{o.value: v for o, v in extra.items()})


def _ask(
    client: EmbedClient, model: str, output: OutputKind, texts: list[str], input_type: InputType
) -> Embeddings | SparseEmbeddings | MultiVectorEmbeddings:
    ask = {
        OutputKind.DENSE: client.embed_text,
        OutputKind.SPARSE: client.embed_sparse,
        OutputKind.MULTIVECTOR: client.embed_multivector,
    }[output]
    return ask(texts, model=model, input_type=input_type.value)


def _check_served_by(answer: SpaceStamp, backend: str) -> None:
    if answer.backend != backend:
        failed = "; ".join(f"{r['backend']}: {r['reason']}" for r in answer.fallback_reasons)
        raise ValueError(
            f"the fallback {answer.backend} answered, not {backend} ({failed}): the primary "
            "cannot be verified while it does not serve"
        )


def _judge(header: str, backend: Backend, serve: Served, min_cosine: float) -> bool | None:
    """Print how the served vectors agree with the reference's; None when skipped."""
    try:
        reference = reference_for(backend)
    except ReferenceUnavailable as exc:
        print(f"{header}: skipped, no reference here: {exc}", flush=True)
        return None
    if reference is None:
        print(f"{header}: no reference library, skipped", flush=True)
        return None
    inputs = verify_inputs(backend)
    try:
        served = serve(inputs)
    except (EmbedServeAPIError, httpx.HTTPError, ValueError) as exc:
        print(f"{header}: FAILED: {exc}", flush=True)
        return False
    agreements = compare(served, reference.embed(inputs), backend.capabilities.outputs)
    passed = all(agreement.passed(min_cosine) for agreement in agreements)
    images = sum(item.image is not None for item in inputs)
    print(
        f"{header}: {'passed' if passed else 'FAILED'} against {reference.library} "
        f"({len(inputs) - images} texts, {images} images)",
        flush=True,
    )
    for agreement in agreements:
        print(agreement.line(min_cosine), flush=True)
    return passed


def _verify_in_process(name: str, backend: Backend, min_cosine: float) -> bool | None:
    header = f"{name} ({backend.kind}, in this process)"
    try:
        backend.load()
    except BackendUnavailable as exc:
        print(f"{header}: skipped, unavailable here: {exc}", flush=True)
        return None
    return _judge(header, backend, backend.embed_batch, min_cosine)


def _verify_over_http(
    client: EmbedClient, config: EmbedServeConfig, model: str, min_cosine: float
) -> bool | None:
    name = config.models[model].chain[0]
    backend = config.backend(name)
    backend.load_tokenizer()  # the prompts and limits the reference needs; no weights
    header = f"model {model}: {name} ({backend.kind}) at {client.base_url}"
    return _judge(
        header,
        backend,
        lambda inputs: _served_over_http(client, model, name, inputs),
        min_cosine,
    )


def cmd_verify(args: argparse.Namespace) -> int:
    """Compare served vectors with the reference libraries' for the selected models;
    returns 1 when any output agrees less than `--min-cosine`."""
    config = load_config(args.config)
    models = args.model or list(config.models)
    unknown = sorted(set(models) - set(config.models))
    if unknown:
        known = ", ".join(config.models)
        raise ConfigError(f"unknown model {', '.join(unknown)} (configured: {known})")
    if args.in_process:
        backends = dict.fromkeys(name for model in models for name in config.models[model].chain)
        verdicts = [
            _verify_in_process(name, config.backend(name), args.min_cosine) for name in backends
        ]
    else:
        url = args.url or f"http://{config.server.host}:{config.server.port}"
        with EmbedClient(url) as client:
            verdicts = [
                _verify_over_http(client, config, model, args.min_cosine) for model in models
            ]
    agree, disagree = verdicts.count(True), verdicts.count(False)
    print(
        f"verify: {agree} agree with their reference, {disagree} do not, "
        f"{verdicts.count(None)} skipped (minimum cosine {args.min_cosine})"
    )
    return 1 if disagree else 0


def add_verify_verb(verbs: argparse._SubParsersAction) -> None:
    """Add `verify` to the `embedserve` parser's verbs."""
    parser = verbs.add_parser(
        "verify", help="compare served vectors with what the model's own library computes"
    )
    parser.add_argument("--config", help="config file (default: the bundled config)")
    parser.add_argument(
        "--model", action="append", help="only this model (repeatable; default: every model)"
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--in-process",
        action="store_true",
        help="load every backend of the models' chains here instead of asking the server",
    )
    where.add_argument("--url", help="the server (default: server.host and server.port)")
    parser.add_argument(
        "--min-cosine",
        type=float,
        default=DEFAULT_MIN_COSINE,
        help=f"the lowest cosine that passes (default {DEFAULT_MIN_COSINE})",
    )
    parser.set_defaults(handler=cmd_verify)
