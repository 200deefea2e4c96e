"""Pieces of the bulk job that need no Ray: triage, shard names, formats, manifests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedserve.bulk import job
from embedserve.bulk.job import EncodersDiedError, JobStartError, run_job
from embedserve.bulk.manifest import Manifest, SpaceInfo
from embedserve.bulk.pipeline import DUPLICATE_ID, EMPTY_TEXT, MISSING_ID, VectorCache, triage
from embedserve.bulk.progress import RunTally, progress_line
from embedserve.bulk.shards import shard_name
from embedserve.bulk.spec import (
    BulkError,
    InputSpec,
    JobSpec,
    detect_format,
    input_files,
    input_root,
)


def test_triage_skips_done_rows_and_rejects_bad_ones() -> None:
    rows = triage(
        ["a", "b", None, "c", "c", "d", "e"],
        ["x", "y", "z", "w", "w2", "  ", "v"],
        done={"b"},
        only=None,
    )
    assert rows.todo_ids == ["a", "c", "e"]
    assert rows.todo_keys == ["x", "w", "v"]
    assert rows.skipped == 1
    assert list(zip(rows.error_ids, rows.error_reasons, strict=True)) == [
        (None, MISSING_ID),
        ("c", DUPLICATE_ID),
        ("d", EMPTY_TEXT),
    ]


def test_triage_keeps_only_the_ids_asked_for() -> None:
    rows = triage(["a", "b", "c"], ["x", "y", "z"], done=set(), only={"a", "c"})
    assert rows.todo_ids == ["a", "c"]
    assert rows.skipped == 1


def test_shard_names_follow_their_ids() -> None:
    assert shard_name(["a", "b"]) == shard_name(["a", "b"])
    assert shard_name(["a", "b"]) != shard_name(["a"])


def test_vector_cache_evicts_the_oldest() -> None:
    cache = VectorCache(capacity=2)
    cache.put("a", "failed")
    cache.put("b", "failed")
    cache.get("a")
    cache.put("c", "failed")
    assert cache.get("b") is None
    assert cache.get("a") == "failed"


def test_formats_are_detected_from_files(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text("{}\n")
    assert detect_format(str(tmp_path / "corpus.jsonl")) == "jsonl"
    images = tmp_path / "photos"
    (images / "cats").mkdir(parents=True)
    (images / "cats" / "a.png").write_bytes(b"")
    (images / ".hidden.png").write_bytes(b"")
    assert detect_format(str(images)) == "images"
    assert input_files(str(images)) == [images / "cats" / "a.png"]
    assert input_files(str(tmp_path / "*.jsonl")) == [tmp_path / "corpus.jsonl"]
    (images / "notes.txt").write_text("")
    with pytest.raises(BulkError, match="pass --format"):
        detect_format(str(images))


def test_image_ids_are_relative_to_the_folder_or_the_globs_fixed_part(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    (photos / "cats" / "a.png").write_bytes(b"")
    assert input_root(str(photos)) == photos
    assert input_root(str(photos / "cats" / "a.png")) == photos / "cats"
    assert input_root(f"{photos}/**/*.png") == photos
    assert input_root(f"{photos}/c?ts/*.png") == photos


def test_progress_line_has_rate_and_eta() -> None:
    assert progress_line(500, 1000, 500, 10.0) == (
        "progress 500/1000 rows (50.0%) 50.0 rows/s ETA 10s"
    )


def _summaries(*batches: tuple[int, int, int, float]) -> dict[str, np.ndarray]:
    """Summary rows as an encoder sends them: (rows, skipped, texts embedded, finished)."""
    rows, skipped, texts, finished = (np.array(column) for column in zip(*batches, strict=True))
    zeros = np.zeros_like(rows)
    return {
        "rows": rows,
        "embedded": rows - skipped,
        "errors": zeros,
        "skipped": skipped,
        "texts_embedded": texts,
        "finished": finished,
    }


def test_the_steady_rate_leaves_out_start_up_the_first_batch_and_rows_not_embedded() -> None:
    tally = RunTally()
    tally.add(_summaries((100, 100, 0, 1000.0)))  # resumed rows only: no work to time
    tally.add(_summaries((100, 0, 100, 1010.0)))  # the first batch: start-up and warm-up
    assert tally.steady_texts_per_s() is None
    tally.add(_summaries((100, 0, 50, 1012.0)))  # half of its texts were duplicates
    tally.add(_summaries((100, 0, 100, 1013.0)))
    assert tally.steady_texts_per_s() == pytest.approx(150 / 3)
    assert (tally.rows, tally.processed, tally.texts_embedded) == (400, 300, 250)


def test_the_steady_rate_takes_batches_in_the_order_they_finished() -> None:
    tally = RunTally()
    tally.add(_summaries((10, 0, 10, 2005.0), (10, 0, 10, 2000.0)))
    tally.add(_summaries((10, 0, 10, 2001.0)))
    assert tally.steady_texts_per_s() == pytest.approx(20 / 5)


class _DyingPipeline:
    """A pipeline whose encoder actors die for good on every run."""

    def iter_batches(self, **kwargs: object) -> Iterator[dict[str, np.ndarray]]:
        from ray.exceptions import ActorDiedError

        raise ActorDiedError()


def test_a_job_whose_encoders_keep_dying_without_output_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job, "encode_dataset", lambda *args: _DyingPipeline())
    spec = JobSpec(
        input=InputSpec(path=str(tmp_path / "c.jsonl"), format="jsonl"),
        output=str(tmp_path / "out"),
        model="hash",
    )
    lines: list[str] = []
    with pytest.raises(EncodersDiedError, match="died 3 times in a row without writing"):
        job._encode_with_retries(spec, dict, {}, 10, lines.append)
    assert len(lines) == job.PIPELINE_ATTEMPTS - 1
    assert all("resuming from the shards written" in line for line in lines)


def _manifest(space_id: str, path: str = "/corpus.jsonl") -> Manifest:
    space = SpaceInfo(
        model="m",
        backend="b",
        backend_kind="hash",
        space_id=space_id,
        identity={},
        dimensions=8,
        normalized=True,
        semantic=False,
    )
    input_spec = InputSpec(path=path, format="jsonl")
    return Manifest(input=input_spec, config_path=None, config_sha256="0", space=space)


def test_an_output_takes_only_its_own_space_and_input() -> None:
    existing = _manifest("hash-1")
    assert existing.resume_problem(_manifest("hash-1")) is None
    assert "space hash-1" in existing.resume_problem(_manifest("minilm-2"))
    assert "written from input" in existing.resume_problem(_manifest("hash-1", "/other.jsonl"))
    with_sparse = _manifest("hash-1").model_copy(update={"sparse": True})
    assert existing.resume_problem(with_sparse) == "it was written without sparse vectors"


def test_an_image_folder_is_refused_at_start_by_a_text_backend(tmp_path: Path) -> None:
    photos = tmp_path / "photos" / "cats"
    photos.mkdir(parents=True)
    (photos / "a.png").write_bytes(b"not really a png")
    spec = JobSpec(
        input=InputSpec(path=str(tmp_path / "photos"), format="images"),
        output=str(tmp_path / "out"),
        model="hash",
    )
    with pytest.raises(JobStartError, match=r"backend hash \(hash\) does not embed images"):
        run_job(spec, log=lambda line: None)
    assert not (tmp_path / "out").exists()
