"""The Ray Data pipeline: read, embed with an actor pool of one backend, write shards.

Each encoder actor instantiates the configured backend class exactly as a Serve
replica does (same plugin, options, checksum, resources), loads it once, and embeds
batches in chunks within the backend's live batching limits. It writes its own shards,
so what flows back to the driver is one small summary row per batch. Image files are
decoded here, with the server's decoder and limits, one backend batch at a time.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedserve import (
    EmbeddingBatch,
    EmbedInput,
    InputType,
    OutputKind,
    SparseVector,
    default_registry,
)
from embedserve.bulk.inputs import batch_rows, image_rows, read_input
from embedserve.bulk.manifest import SpaceInfo
from embedserve.bulk.progress import FINISHED_COLUMN, SUMMARY_COLUMNS
from embedserve.bulk.shards import (
    DATA_DIR,
    ERRORS_DIR,
    data_table,
    errors_table,
    shard_ids,
    write_shard,
)
from embedserve.bulk.spec import InputSpec
from embedserve.config import BackendConfig
from embedserve.runtime.batch_plan import plan_chunks
from embedserve.serving.images import ImageLimits

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

NON_FINITE = "the backend answered a non-finite vector (NaN or inf)"
EMPTY_TEXT = "empty text"
MISSING_ID = "missing id"
# A row whose id an earlier row has (the driver reports these: see job._encode_repeated).
DUPLICATE_ID = "duplicate id"
# Ray restarts a dead encoder actor this often (and retries its batch); an actor that
# dies more often fails the pipeline, which the job then runs again from its shards. A
# batch that crashes its encoder every time thus ends the job instead of looping.
ENCODER_RESTARTS = 2
# Beyond this, one block per batch costs more in per-task overhead than finer progress
# is worth.
MAX_READ_BLOCKS = 2000


@dataclass(frozen=True)
class EncodePlan:
    """Everything an encoder actor needs; pickled once into each actor."""

    input: InputSpec
    backend_config: dict[str, Any]
    space: SpaceInfo
    output: str
    image_limits: ImageLimits
    done_shards: list[str] = field(default_factory=list)
    only_shards: list[str] | None = None
    input_type: InputType | None = None
    sparse: bool = False
    cache_size: int = 20_000

    @property
    def outputs(self) -> tuple[OutputKind, ...]:
        """What the backend is asked for: dense vectors, and sparse ones when wanted."""
        return (OutputKind.DENSE, OutputKind.SPARSE) if self.sparse else (OutputKind.DENSE,)


@dataclass(frozen=True)
class Embedded:
    """One item's vectors: dense, and sparse when the job asks for them."""

    dense: np.ndarray
    sparse: SparseVector | None = None


@dataclass
class Triage:
    """A batch's rows sorted by what happens to them.

    A row's key is its text, or its image file's digest: what the vector cache knows.
    """

    todo_ids: list[str] = field(default_factory=list)
    todo_keys: list[str] = field(default_factory=list)
    error_ids: list[str | None] = field(default_factory=list)
    error_reasons: list[str] = field(default_factory=list)
    skipped: int = 0

    def reject(self, row_id: str | None, reason: str) -> None:
        """Send a row to the errors file."""
        self.error_ids.append(row_id)
        self.error_reasons.append(reason)


def triage(
    ids: Sequence[str | None],
    keys: Sequence[str | None],
    done: set[str],
    only: set[str] | None,
) -> Triage:
    """Skip rows already in the output (or not asked for), reject rows that cannot be
    embedded, and keep the rest in order.

    Rows of an id the input repeats are skipped too: the driver reports the repeats
    before the pipeline runs, so their ids are in `done` (see `job._encode_repeated`).
    """
    result = Triage()
    for row_id, key in zip(ids, keys, strict=True):
        if row_id is not None and (row_id in done or (only is not None and row_id not in only)):
            result.skipped += 1
        elif not row_id:
            result.reject(row_id, MISSING_ID)
        elif key is None or not key.strip():
            result.reject(row_id, EMPTY_TEXT)
        else:
            result.todo_ids.append(row_id)
            result.todo_keys.append(key)
    return result


class VectorCache:
    """The most recent texts' vectors: identical texts are embedded once per actor."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._vectors: OrderedDict[str, Embedded | str] = OrderedDict()

    def get(self, text: str) -> Embedded | str | None:
        """Cached vectors, a cached failure reason, or None."""
        found = self._vectors.get(text)
        if found is not None:
            self._vectors.move_to_end(text)
        return found

    def put(self, text: str, value: Embedded | str) -> None:
        """Remember a text's vector (or why it failed), evicting the oldest."""
        self._vectors[text] = value
        if len(self._vectors) > self._capacity:
            self._vectors.popitem(last=False)


class BatchEncoder:
    """A Ray Data actor: one loaded backend, embedding batches and writing their shards."""

    def __init__(self, plan: EncodePlan) -> None:
        config = BackendConfig.model_validate(plan.backend_config)
        self._plan = plan
        self._backend = default_registry().get(config.kind).backend_class(config.options)
        self._backend.load()
        self._limits = config.batching.resolved(
            self._backend.token_budget(config.resources.num_gpus)
        )
        self._cache = VectorCache(plan.cache_size)
        self._done = set(shard_ids(plan.done_shards).to_pylist())
        self._only = (
            None if plan.only_shards is None else set(shard_ids(plan.only_shards).to_pylist())
        )

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        ids, keys, files = self._rows(batch)
        rows = triage(ids, keys, self._done, self._only)
        embedded, texts_embedded = self._embed(rows, files)
        output = Path(self._plan.output)
        if rows.todo_ids:
            write_shard(self._data_table(rows.todo_ids, embedded), output / DATA_DIR)
        if rows.error_ids:
            write_shard(errors_table(rows.error_ids, rows.error_reasons), output / ERRORS_DIR)
        counts = (len(ids), len(rows.todo_ids), len(rows.error_ids), rows.skipped, texts_embedded)
        summary = {
            name: np.array([value]) for name, value in zip(SUMMARY_COLUMNS, counts, strict=True)
        }
        return {**summary, FINISHED_COLUMN: np.array([time.time()])}

    def _rows(
        self, batch: pa.Table
    ) -> tuple[Sequence[str | None], Sequence[str | None], dict[str, bytes]]:
        """A batch's ids and keys: texts, or image digests with the files they name."""
        if self._plan.input.format != "images":
            ids, texts = batch_rows(batch, self._plan.input)
            return ids, texts, {}
        image_ids, data = image_rows(batch, self._plan.input)
        keys = [image_key(file) for file in data]
        return image_ids, keys, dict(zip(keys, data, strict=True))

    def _data_table(self, ids: list[str], embedded: list[Embedded]) -> pa.Table:
        dense = np.stack([item.dense for item in embedded])
        # `_checked` gave every row a sparse vector when the job asks for them.
        sparse = (
            [v for item in embedded if (v := item.sparse) is not None]
            if self._plan.sparse
            else None
        )
        return data_table(ids, dense, self._plan.space, sparse)

    def _embed(self, rows: Triage, files: Mapping[str, bytes]) -> tuple[list[Embedded], int]:
        """Vectors of the rows to do, in order; rows that fail move to the errors.

        Returns the vectors of the rows still to do and how many items the backend saw.
        """
        missing = list(dict.fromkeys(k for k in rows.todo_keys if self._cache.get(k) is None))
        for key, value in zip(missing, self._embed_unique(missing, files), strict=True):
            self._cache.put(key, value)
        kept_ids, kept_vectors = [], []
        for row_id, key in zip(rows.todo_ids, rows.todo_keys, strict=True):
            value = self._cache.get(key)
            if isinstance(value, str):
                rows.reject(row_id, value)
            else:
                kept_ids.append(row_id)
                kept_vectors.append(value)
        rows.todo_ids = kept_ids
        rows.todo_keys = []
        return kept_vectors, len(missing)

    def _embed_unique(self, keys: list[str], files: Mapping[str, bytes]) -> list[Embedded | str]:
        """One vector or failure reason per key (a text, or an image file's digest)."""
        if not files:
            return self._embed_texts(keys)
        results: list[Embedded | str] = []
        step = self._limits.max_batch_size
        for start in range(0, len(keys), step):
            # Decoded images are large: only one backend batch of them is held at a time.
            items = [self._input(key, files) for key in keys[start : start + step]]
            vectors = iter(self._embed_inputs([i for i in items if isinstance(i, EmbedInput)]))
            results += [item if isinstance(item, str) else next(vectors) for item in items]
        return results

    def _input(self, key: str, files: Mapping[str, bytes]) -> EmbedInput | str:
        """The backend's input for an image file's key, or why the file cannot be one."""
        plan = self._plan
        return image_input(files[key], plan.image_limits, plan.input_type, plan.outputs)

    def _embed_texts(self, texts: list[str]) -> list[Embedded | str]:
        """One vector or failure reason per text, embedded in order of token count: a
        chunk of similar lengths wastes little on padding (sentence-transformers sorts a
        whole corpus by length; a batch is what an encoder has)."""
        plan = self._plan
        inputs = [EmbedInput(text, plan.input_type, outputs=plan.outputs) for text in texts]
        counts = self._backend.count_tokens(inputs) if inputs else []
        order = sorted(range(len(inputs)), key=counts.__getitem__)
        results: list[Embedded | str] = [""] * len(inputs)
        embedded = self._embed_inputs([inputs[i] for i in order], [counts[i] for i in order])
        for position, result in zip(order, embedded, strict=True):
            results[position] = result
        return results

    def _embed_inputs(
        self, inputs: list[EmbedInput], counts: list[int] | None = None
    ) -> list[Embedded | str]:
        """One vector or failure reason per input, embedded in chunks within the limits."""
        if not inputs:
            return []
        if counts is None:
            counts = self._backend.count_tokens(inputs)
        results: list[Embedded | str] = []
        for chunk in plan_chunks(inputs, counts, self._limits):
            results += self._embed_chunk(chunk.inputs)
        return results

    def _embed_chunk(self, inputs: Sequence[EmbedInput]) -> list[Embedded | str]:
        try:
            embedded = self._checked(self._backend.embed_batch(inputs), len(inputs))
        except Exception as exc:
            if len(inputs) == 1:
                return [f"the backend failed: {type(exc).__name__}: {exc}"]
            # One bad input must not cost its chunk: retry each alone to find it.
            return [result for item in inputs for result in self._embed_chunk([item])]
        return [item if _finite(item) else NON_FINITE for item in embedded]

    def _checked(self, batch: EmbeddingBatch, rows: int) -> list[Embedded]:
        """The batch's vectors per input, with the shapes and outputs the job expects."""
        expected = (rows, self._plan.space.dimensions)
        if batch.dense.shape != expected:
            raise ValueError(f"the backend answered shape {batch.dense.shape}, expected {expected}")
        if not self._plan.sparse:
            return [Embedded(row) for row in batch.dense]
        if batch.sparse is None or any(vector is None for vector in batch.sparse):
            raise ValueError("the backend answered no sparse vector")
        return [Embedded(d, s) for d, s in zip(batch.dense, batch.sparse, strict=True)]


def _finite(item: Embedded) -> bool:
    dense_ok = bool(np.isfinite(item.dense).all())
    return dense_ok and (item.sparse is None or bool(np.isfinite(item.sparse.values).all()))


def image_key(data: bytes) -> str:
    """An image file's cache key: identical files are embedded once."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_input(
    data: bytes,
    limits: ImageLimits,
    input_type: InputType | None,
    outputs: tuple[OutputKind, ...] = (OutputKind.DENSE,),
) -> EmbedInput | str:
    """An image file decoded as the server decodes an upload (its byte and pixel limits,
    EXIF orientation, RGB, first frame), or why it cannot be embedded."""
    from embedserve.errors import InvalidRequest
    from embedserve.serving.images import decode_image

    try:
        image = decode_image(data, "the file", limits.max_bytes, limits.max_pixels)
    except InvalidRequest as exc:  # over the limits too (PayloadTooLarge is one)
        return exc.message
    return EmbedInput(input_type=input_type, image=image, outputs=outputs)


def encode_dataset(
    plan: EncodePlan, batch_size: int, workers: int, actor_options: dict[str, Any], rows: int
) -> ray.data.Dataset:
    """The lazy pipeline; iterating it runs the job and yields one summary row per batch.

    `rows` (the input's) sets the blocks read: about one batch each, so that an encoder's
    task is one batch and its summary reaches the driver when the batch is done (a task
    over a large block sends its summaries only at its end: progress in jumps). Ray Data
    splits the rows into blocks of equal size (one row apart) and hands an encoder blocks
    until they hold a batch: batches of the largest block's rows (at most `batch_size`)
    make most blocks a task of their own, where `batch_size` rows would pair them up.
    """
    from ray.data import ActorPoolStrategy

    blocks = min(max(1, -(-rows // batch_size)), MAX_READ_BLOCKS)
    batch_size = min(batch_size, max(1, -(-rows // blocks)))
    with warnings.catch_warnings():
        # max_restarts has no named parameter yet (Ray 2.60 documents passing it so);
        # Ray warns that such extra remote arguments go away in Ray 2.64.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        return read_input(plan.input, blocks).map_batches(
            BatchEncoder,
            fn_constructor_args=(plan,),
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=workers),
            max_restarts=ENCODER_RESTARTS,
            **actor_options,
        )


def encode_rows(plan: EncodePlan, rows: pa.Table, actor_options: dict[str, Any]) -> dict[str, Any]:
    """Embed a few rows outside the pipeline, as one batch of one encoder with the
    encoders' resources (the first rows of the ids the input repeats); their summary."""
    import ray

    return ray.get(ray.remote(max_retries=0, **actor_options)(_encode_rows).remote(plan, rows))


def _encode_rows(plan: EncodePlan, rows: pa.Table) -> dict[str, Any]:
    return BatchEncoder(plan)(rows)
