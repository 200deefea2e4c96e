"""A run's progress: the encoders' summary rows added up, progress lines, steady rate.

Every batch an encoder finishes sends back one small summary row: its counts and the
wall-clock time it finished. The steady rate is measured between batch ends, in the
encoders' own clocks, so neither start-up (Ray Data, actors, model load) nor how the
driver happens to receive the rows can inflate or deflate it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedserve.bulk.spec import Log

PROGRESS_EVERY_S = 2.0
# Counts per batch, added up over a run.
SUMMARY_COLUMNS = ("rows", "embedded", "errors", "skipped", "texts_embedded")
# When the batch was done (encoder's `time.time()`): batch ends delimit the steady rate.
FINISHED_COLUMN = "finished"


@dataclass
class RunTally:
    """What a run's batches did so far, from their summary rows."""

    rows: int = 0
    embedded: int = 0
    errors: int = 0
    skipped: int = 0
    texts_embedded: int = 0
    # The first and last batches that embedded anything: the steady rate's window.
    first_finished: float = math.inf
    first_texts: int = 0
    last_finished: float = -math.inf

    @property
    def processed(self) -> int:
        """Rows this run handled (not skipped as done by an earlier run, or not asked for)."""
        return self.rows - self.skipped

    def add(self, summary: Mapping[str, np.ndarray]) -> None:
        """Add summary rows (one per batch) to the tally."""
        for name in SUMMARY_COLUMNS:
            setattr(self, name, getattr(self, name) + int(summary[name].sum()))
        texts = summary["texts_embedded"]
        finished = np.where(texts > 0, summary[FINISHED_COLUMN], math.nan)
        if np.isnan(finished).all():
            return  # resumed or deduplicated rows only: no embedding work to time
        first = int(np.nanargmin(finished))
        if finished[first] < self.first_finished:
            self.first_finished, self.first_texts = float(finished[first]), int(texts[first])
        self.last_finished = max(self.last_finished, float(np.nanmax(finished)))

    def steady_texts_per_s(self) -> float | None:
        """Texts embedded per second from the end of the first batch to the end of the
        last: start-up, model load and the first batch's warm-up excluded, and rows that
        needed no embedding (resumed, duplicates) not counted. None below two batches."""
        span = self.last_finished - self.first_finished
        if not span > 0:
            return None
        return (self.texts_embedded - self.first_texts) / span


def follow(dataset: Any, total: int, log: Log, tally: RunTally) -> None:
    """Run the pipeline, adding its summary rows to `tally` and logging rows done /
    total, rows/s and ETA every few seconds."""
    started = last = time.monotonic()
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        tally.add(batch)
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            last = now
            log(progress_line(tally.rows, total, tally.processed, now - started))


def progress_line(done: int, total: int, processed: int, seconds: float) -> str:
    """`progress 1200/5000 rows (24.0%) 350.2 rows/s ETA 11s` (rate of this run)."""
    rate = processed / seconds if seconds > 0 else 0.0
    eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
    percent = 100.0 * done / total if total else 100.0
    return f"progress {done}/{total} rows ({percent:.1f}%) {rate:.1f} rows/s ETA {eta}"
