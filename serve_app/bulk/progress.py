"""A run's progress: the encoders' summary rows added up, progress lines, steady rate.

Every batch an encoder finishes sends back one small summary row: its counts and the
wall-clock time it finished. The steady rate is measured between batch ends, in the
encoders' own clocks, so neither start-up (Ray Data, actors, model load) nor how the
driver happens to receive the rows can inflate or deflate it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
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


class ProgressLog:
    """Progress lines as the batches finish: rows done of the input, this run's rate, ETA
    and errors.

    A line per batch, except that batches finishing together share a line: one is logged
    when the rows done cross another whole percent, when `PROGRESS_EVERY_S` passed
    since the last line, and at the end, so a large job logs about a hundred lines and a
    small one a line per batch.
    """

    def __init__(self, total: int, log: Log, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.log = log
        self._clock = clock
        self._started = self._last_line = clock()
        self._last_percent = -1
        # Rows this run had processed when its first batch was done, and when: the rate
        # is measured from there, without start-up and model loading.
        self._first: tuple[float, int] | None = None

    def batch_done(self, tally: RunTally) -> None:
        """Log a line for the batches tallied so far, unless one was just logged."""
        now = self._clock()
        if self._first is None:
            self._first = (now, tally.processed)
        percent = 100 * tally.rows // self.total if self.total else 100
        if (
            percent > self._last_percent
            or now - self._last_line >= PROGRESS_EVERY_S
            or tally.rows >= self.total
        ):
            self._last_percent, self._last_line = percent, now
            self.log(progress_line(tally.rows, self.total, self._rate(now, tally), tally.errors))

    def _rate(self, now: float, tally: RunTally) -> float:
        """Rows per second this run: since its first batch was done once there is a
        second one, else since the start."""
        assert self._first is not None
        first_time, first_processed = self._first
        if now > first_time and tally.processed > first_processed:
            return (tally.processed - first_processed) / (now - first_time)
        seconds = now - self._started
        return tally.processed / seconds if seconds > 0 else 0.0


def follow(dataset: Any, tally: RunTally, progress: ProgressLog) -> None:
    """Run the pipeline, adding its summary rows (one per batch) to `tally` and
    reporting them to `progress`."""
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        tally.add(batch)
        progress.batch_done(tally)


def progress_line(done: int, total: int, rate: float, errors: int) -> str:
    """`progress 1200/5000 rows (24.0%) 350.2 rows/s ETA 11s, 3 errors`."""
    eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
    percent = 100.0 * done / total if total else 100.0
    return (
        f"progress {done}/{total} rows ({percent:.1f}%) {rate:.1f} rows/s ETA {eta}, "
        f"{errors} error{'' if errors == 1 else 's'}"
    )
