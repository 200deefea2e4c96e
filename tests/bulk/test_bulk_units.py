"""Pieces of the bulk job that need no Ray: triage, scans, shard names, formats,
manifests, progress lines, the encoders' resources."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedserve.bulk import job, jobs_client
from embedserve.bulk.inputs import RowPlace, first_rows, scan_input
from embedserve.bulk.job import EncodersDiedError, JobStartError, run_job
from embedserve.bulk.job_console import is_console_line
from embedserve.bulk.manifest import Manifest, SpaceInfo
from embedserve.bulk.pipeline import EMPTY_TEXT, MISSING_ID, VectorCache, triage
from embedserve.bulk.progress import ProgressLog, RunTally, progress_line
from embedserve.bulk.resources import EncodersUnschedulable, fit_cpus, schedule_encoders
from embedserve.bulk.shards import shard_name
from embedserve.bulk.spec import (
    BulkError,
    InputSpec,
    JobSpec,
    auto_batch_size,
    detect_format,
    input_files,
    input_root,
)
from tests.bulk.conftest import write_jsonl

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_triage_skips_done_rows_and_rejects_bad_ones() -> None:
    rows = triage(
        ["a", "b", None, "c", "d", "e"],
        ["x", "y", "z", "w", "  ", "v"],
        done={"b"},
        only=None,
    )
    assert rows.todo_ids == ["a", "c", "e"]
    assert rows.todo_keys == ["x", "w", "v"]
    assert rows.skipped == 1
    assert list(zip(rows.error_ids, rows.error_reasons, strict=True)) == [
        (None, MISSING_ID),
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


def test_progress_line_has_rate_eta_and_errors() -> None:
    assert progress_line(500, 1000, 50.0, 3) == (
        "progress 500/1000 rows (50.0%) 50.0 rows/s ETA 10s, 3 errors"
    )
    assert progress_line(0, 1000, 0.0, 1).endswith("ETA ?, 1 error")


def test_the_readme_shows_a_real_progress_line() -> None:
    assert progress_line(1200, 5000, 350.2, 3) in README.replace("\n  ", " ")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_logged_per_batch_with_the_rate_after_the_first_batch() -> None:
    clock, lines = _Clock(), []
    progress = ProgressLog(200, lines.append, clock)
    tally = RunTally()
    for second, batch in ((10.0, (32, 0, 32, 0.0)), (11.0, (32, 0, 32, 0.0))):
        clock.now = second
        tally.add(_summaries(batch))
        progress.batch_done(tally)
    assert lines == [
        "progress 32/200 rows (16.0%) 3.2 rows/s ETA 52s, 0 errors",  # start-up included
        "progress 64/200 rows (32.0%) 32.0 rows/s ETA 4s, 0 errors",  # since the first batch
    ]


def test_batches_done_together_share_a_progress_line() -> None:
    clock, lines = _Clock(), []
    progress = ProgressLog(100_000, lines.append, clock)
    tally = RunTally()
    for _ in range(199):  # 500 rows each, within one whole percent but the first
        tally.add(_summaries((500, 0, 500, 0.0)))
        progress.batch_done(tally)
    assert len(lines) == 100
    tally.add(_summaries((500, 0, 500, 0.0)))
    progress.batch_done(tally)
    assert lines[-1].startswith("progress 100000/100000 rows (100.0%)")


def test_jobs_status_shows_the_latest_progress_or_pending_line() -> None:
    logs = "encoding 10 rows\npending: the encoders need 1 GPU\nprogress 5/10 rows\ndone\n"
    assert jobs_client.latest_progress(logs) == "progress 5/10 rows"
    assert jobs_client.latest_progress("pending: the encoders need 1 GPU\n").startswith("pending")
    assert jobs_client.latest_progress("encoding 10 rows\n") is None


def test_small_inputs_get_small_batches_for_progress_in_steps() -> None:
    assert auto_batch_size(200) == 32
    assert auto_batch_size(5000) == 250
    assert auto_batch_size(1_000_000) == 512


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
        job._encode_with_retries(spec, dict, {}, 10, RunTally(), ProgressLog(10, lines.append))
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


# -- ids the input repeats ------------------------------------------------------------------


def test_a_scan_finds_the_rows_that_repeat_an_id_and_their_first_rows(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "a.jsonl", [{"id": 1, "text": "one"}, {"id": 2, "text": "two"}])
    (corpus / "a.jsonl").write_text((corpus / "a.jsonl").read_text() + "\n" + '{"text": "x"}\n')
    rows = [{"id": 2, "text": "two again"}, {"id": 3, "text": "three", "extra": True}]
    write_jsonl(corpus / "b.jsonl", [*rows, {"id": 1, "text": "one again"}, {"id": 2, "text": ""}])
    spec = InputSpec(path=str(corpus), format="jsonl")

    scan = scan_input(spec)
    assert scan.rows == 7  # blank lines are no rows; a row without an id is one
    assert [(r.id, str(r.place), str(r.first)) for r in scan.repeated] == [
        ("2", "row 1 of b.jsonl", "row 2 of a.jsonl"),
        ("1", "row 3 of b.jsonl", "row 1 of a.jsonl"),
        ("2", "row 4 of b.jsonl", "row 2 of a.jsonl"),
    ]
    assert scan.first_places == {"1": RowPlace("a.jsonl", 1), "2": RowPlace("a.jsonl", 2)}
    assert first_rows(spec, scan, ["2", "1"]).to_pylist() == [
        {"id": "1", "text": "one"},
        {"id": "2", "text": "two"},
    ]


def test_csv_and_parquet_ids_are_scanned_as_strings(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.csv").write_text("key,body\n007,a\n7,b\n007,c\n")
    spec = InputSpec(path=str(tmp_path / "c.csv"), format="csv", id_column="key")
    scan = scan_input(spec)
    assert [(r.id, r.place.row, r.first.row) for r in scan.repeated] == [("007", 3, 1)]
    pq.write_table(pa.table({"id": [5, 6, 5], "text": ["a", "b", "c"]}), tmp_path / "p.parquet")
    scan = scan_input(InputSpec(path=str(tmp_path / "p.parquet"), format="parquet"))
    assert (scan.rows, [r.id for r in scan.repeated]) == (3, ["5"])


# -- the encoders' resources ----------------------------------------------------------------


def test_encoders_take_the_free_cpus_when_the_backends_are_held() -> None:
    options = {"num_cpus": 2, "num_gpus": 0}
    assert fit_cpus(options, None, 1, {"CPU": 4.0}) == (options, None)
    chosen, note = fit_cpus(options, None, 1, {})
    assert chosen == {"num_cpus": 0, "num_gpus": 0}
    assert note.startswith("encoders reserve 0 CPUs each, not the backend's 2")
    assert fit_cpus(options, None, 3, {"CPU": 1.0})[0]["num_cpus"] == 0.33
    assert fit_cpus(options, 1.5, 1, {})[0]["num_cpus"] == 1.5  # as asked, free or not


def _spec(**fields: object) -> JobSpec:
    return JobSpec(
        input=InputSpec(path="/c.jsonl", format="jsonl"), output="/o", model="m", **fields
    )


def test_encoders_that_cannot_be_scheduled_fail_saying_what_they_need() -> None:
    lines: list[str] = []
    looks = iter([({"CPU": 0.5}, {"CPU": 4.0})] * 30)
    with pytest.raises(EncodersUnschedulable) as raised:
        schedule_encoders(
            {"num_cpus": 2, "num_gpus": 0.5},
            _spec(encoder_cpus=1, resource_wait_s=20),
            lines.append,
            resources=lambda: next(looks),
            sleep=lambda seconds: None,
        )
    assert str(raised.value).startswith(
        "the encoders cannot be scheduled: they need 1 CPU (1 encoder x 1 CPU); the cluster "
        "has 0.5 CPUs free of 4 CPUs; need 0.5 GPUs (1 encoder x 0.5 GPUs); the cluster has "
        "0 GPUs free of 0 GPUs, after waiting 20s"
    )
    assert len(lines) == 2  # at once and after 10 s
    assert lines[0].startswith("pending: the encoders need 1 CPU (1 encoder x 1 CPU)")


def test_encoders_wait_until_their_resources_are_free() -> None:
    looks = iter([({}, {"GPU": 1.0}), ({}, {"GPU": 1.0}), ({"GPU": 1.0}, {"GPU": 1.0})])
    lines: list[str] = []
    options = schedule_encoders(
        {"num_cpus": 0, "num_gpus": 1},
        _spec(),
        lines.append,
        resources=lambda: next(looks),
        sleep=lambda seconds: None,
    )
    assert options == {"num_cpus": 0, "num_gpus": 1}
    assert lines == [
        "pending: the encoders need 1 GPU (1 encoder x 1 GPU); the cluster has 0 GPUs free "
        "of 1 GPU; waiting up to 60s"
    ]


# Lines of a MiniLM job's log before its console was separated from Ray's output.
RAY_LINES = [
    "2026-12-08 01:37:58,831\tINFO job_manager.py:581 -- Runtime env is setting up.",
    "Running entrypoint for job embedserve-encode-831d4b1a4aae: python -m embedserve.bulk.job {}",
    "2026-12-08 01:38:06,439\tINFO worker.py:1841 -- Connecting to existing Ray cluster at "
    "address: 192.0.2.2:56255...",
    "2026-12-08 01:38:12,225\tINFO streaming_executor.py:215 -- Starting execution of Dataset",
]
JOB_LINES = [
    "encoding 200 rows of in.jsonl with minilm into out, batches of up to 32 rows",
    "progress 29/200 rows (14.5%) 1.2 rows/s ETA 147s, 0 errors",
    "embedserve job failed: backend minilm is unavailable",
    "2026-12-08 01:38:12,281\tERROR worker.py:1 -- a real error of Ray's",
]


def test_the_console_leaves_out_the_supervisors_and_rays_reports() -> None:
    assert [line for line in RAY_LINES + JOB_LINES if is_console_line(line)] == JOB_LINES


def test_the_job_sends_its_standard_error_beside_its_log(tmp_path: Path) -> None:
    job_log = tmp_path / "job-driver-embedserve-encode-1.log"
    code = (
        "import sys\n"
        "from embedserve.bulk.job_console import send_ray_output_beside_the_job_log\n"
        "print(send_ray_output_beside_the_job_log(), flush=True)\n"
        "sys.stderr.write('2026-12-08 01:38:06,419\\tINFO worker.py:1691 -- Ray\\n')\n"
        "import os; os.write(2, b'[core_worker.cc:2465] constructor arguments\\n')\n"
        "print('progress 1/1 rows (100.0%)')\n"
    )
    with job_log.open("w") as stdout:
        subprocess.run([sys.executable, "-c", code], stdout=stdout, check=True, timeout=60)
    ray_output = tmp_path / "job-driver-embedserve-encode-1.ray.log"
    assert job_log.read_text().splitlines() == [str(ray_output), "progress 1/1 rows (100.0%)"]
    assert "INFO worker.py" in ray_output.read_text()
    assert "core_worker.cc" in ray_output.read_text()
