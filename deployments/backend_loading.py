"""Loading a backend inside its replica without ever failing the replica.

A backend whose `load` raises (weights missing or corrupt, a checksum mismatch, a plugin
import that fails, an incompatible library, memory exhausted) is one failed backend,
never a failed app: Ray Serve marks a deployment whose replica constructor raises
DEPLOY_FAILED, and that fails the whole application, every other model with it. So the
replica starts anyway, records why the load failed, answers every call with
`BackendUnavailable` (the router's chain falls back), and tries the load again in a
background thread with bounded exponential backoff: when the cause is fixed (the folder
appears) the backend comes back by itself, without restarting anything.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from embedserve.config import LoadRetryConfig

logger = logging.getLogger("ray.serve")

# Serve's replica logger sends records with this extra to its file only, not to stderr
# (which Ray streams to the driver's console): the traceback goes to the log, the
# console gets the one-line cause.
FILE_ONLY = {"log_to_stderr": False}


@dataclass(frozen=True)
class LoadFailure:
    """Why a backend's last load attempt failed, as every surface reports it."""

    cause: str  # one line: `FileNotFoundError: model folder /m does not exist`
    log: str | None  # the replica's log file, which holds the full traceback
    attempts: int  # failed attempts so far
    next_attempt_at: float  # time.time() of the next attempt


def load_cause(exc: BaseException) -> str:
    """The exception as one line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    if lines:
        return f"{type(exc).__name__}: {lines[0]}"
    if isinstance(exc, MemoryError):
        return "MemoryError: out of memory while loading"
    return type(exc).__name__


def retry_delays(retry: LoadRetryConfig) -> Iterator[float]:
    """Seconds to wait before each retry: doubling from the first delay up to the bound."""
    delay = retry.first_delay_s
    while True:
        yield delay
        delay = min(delay * 2, retry.max_delay_s)


def replica_log_file() -> str | None:
    """The file Serve's replica logger writes to (None outside a replica)."""
    for handler in logging.getLogger("ray.serve").handlers:
        # Serve buffers its file handler behind a MemoryHandler.
        target = getattr(handler, "target", None) or handler
        path = getattr(target, "baseFilename", None)
        if path:
            return str(path)
    return None


class LoadSupervisor:
    """Runs a backend's load: once at start, then again with backoff until it succeeds.

    Args:
        backend: the configured backend name, for the log lines.
        load: loads the backend; raises when it cannot.
        retry: the backoff bounds.
        on_attempt: told of every attempt's outcome (True: loaded), for metrics.
        log_file: where the replica's log is, named in the failure.
    """

    def __init__(
        self,
        backend: str,
        load: Callable[[], None],
        retry: LoadRetryConfig,
        on_attempt: Callable[[bool], None] = lambda loaded: None,
        log_file: str | None = None,
    ) -> None:
        self._backend = backend
        self._load = load
        self._retry = retry
        self._on_attempt = on_attempt
        self._log_file = log_file
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: LoadFailure | None = None

    def start(self) -> bool:
        """Load now, in the caller's thread; on failure, keep retrying in the background.

        Returns:
            Whether the backend loaded.
        """
        delays = retry_delays(self._retry)
        delay = next(delays)
        if self._attempt(delay):
            return True
        self._thread = threading.Thread(
            target=self._retry_until_loaded,
            args=(delay, delays),
            name=f"load-{self._backend}",
            daemon=True,
        )
        self._thread.start()
        return False

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop retrying (an attempt under way finishes first)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _retry_until_loaded(self, delay: float, delays: Iterator[float]) -> None:
        while not self._stopped.wait(delay):
            delay = next(delays)
            if self._attempt(delay):
                return

    def _attempt(self, delay_if_failed: float) -> bool:
        """One load attempt; records its outcome (a failure says when the next comes)."""
        try:
            self._load()
        except Exception as exc:  # every cause of a failed load is this backend's alone
            self._failed(exc, delay_if_failed)
            return False
        if self.failure is not None:
            logger.warning(
                "backend %s loaded after %d failed attempts", self._backend, self.failure.attempts
            )
        self.failure = None
        self._on_attempt(True)
        return True

    def _failed(self, exc: BaseException, delay: float) -> None:
        attempts = (self.failure.attempts if self.failure else 0) + 1
        cause = load_cause(exc)
        changed = self.failure is None or self.failure.cause != cause
        self.failure = LoadFailure(cause, self._log_file, attempts, time.time() + delay)
        self._on_attempt(False)
        if changed:  # one console line per cause, not one per retry
            logger.warning(
                "backend %s failed to load: %s (retried with backoff, at most %gs apart; "
                "traceback in %s)",
                self._backend,
                cause,
                self._retry.max_delay_s,
                self._log_file or "the replica's log",
            )
        logger.error(
            "backend %s load attempt %d failed:\n%s",
            self._backend,
            attempts,
            "".join(traceback.format_exception(exc)),
            extra=FILE_ONLY,
        )
