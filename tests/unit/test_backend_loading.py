"""A backend that fails to load fails alone: `LoadSupervisor` records the cause in one
line, retries with bounded exponential backoff in the background, and reports the load
when the cause is gone. Each cause of a failed load in the field, as the fault plugin's
real `load` raises it."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from embedserve_faults import FaultyHashBackend

from embedserve.config import LoadRetryConfig
from embedserve.deployments.backend_loading import LoadSupervisor, load_cause, retry_delays

FAST = LoadRetryConfig(first_delay_s=0.01, max_delay_s=0.04)


class FlakyLoad:
    """A load that raises until `fixed` is set, counting its attempts."""

    def __init__(self) -> None:
        self.fixed = threading.Event()
        self.attempts = 0

    def __call__(self) -> None:
        self.attempts += 1
        if not self.fixed.is_set():
            raise FileNotFoundError("model folder /models/gone does not exist")


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_delays_double_up_to_the_bound() -> None:
    delays = retry_delays(LoadRetryConfig(first_delay_s=1, max_delay_s=6))
    assert [next(delays) for _ in range(5)] == [1, 2, 4, 6, 6]


def test_the_bound_may_not_be_below_the_first_delay() -> None:
    with pytest.raises(ValueError, match="max_delay_s"):
        LoadRetryConfig(first_delay_s=5, max_delay_s=1)


def test_a_load_that_succeeds_starts_no_retries() -> None:
    outcomes: list[bool] = []
    supervisor = LoadSupervisor("ok", lambda: None, FAST, outcomes.append)
    assert supervisor.start() is True
    assert supervisor.failure is None and outcomes == [True]


def test_a_failed_load_is_retried_until_its_cause_is_fixed() -> None:
    load, outcomes = FlakyLoad(), []
    supervisor = LoadSupervisor("gone", load, FAST, outcomes.append, log_file="/logs/gone.log")
    try:
        assert supervisor.start() is False
        failure = supervisor.failure
        assert failure is not None
        assert failure.cause == "FileNotFoundError: model folder /models/gone does not exist"
        assert failure.log == "/logs/gone.log" and failure.attempts == 1
        wait_for(lambda: load.attempts >= 4)
        assert supervisor.failure is not None and supervisor.failure.attempts >= 3
        load.fixed.set()
        wait_for(lambda: supervisor.failure is None)
        assert outcomes[-1] is True and not any(outcomes[:-1])
    finally:
        supervisor.stop(timeout_s=1)
    attempts = load.attempts
    time.sleep(0.1)
    assert load.attempts == attempts  # loaded: no more attempts


def test_retries_wait_longer_each_time_up_to_the_bound() -> None:
    load, starts = FlakyLoad(), []

    def timed() -> None:
        starts.append(time.monotonic())
        load()

    supervisor = LoadSupervisor("gone", timed, LoadRetryConfig(first_delay_s=0.05, max_delay_s=0.2))
    try:
        supervisor.start()
        wait_for(lambda: len(starts) >= 6)
    finally:
        supervisor.stop(timeout_s=1)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
    assert all(gap < 0.2 + 0.15 for gap in gaps)  # bounded (with scheduling slack)
    failure = supervisor.failure
    assert failure is not None and failure.next_attempt_at > time.time() - 1


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        (
            "import-error",
            "ModuleNotFoundError: No module named 'embedserve_faults_missing_library'",
        ),
        ("load-raises", "RuntimeError: faulty-hash: the model's weights did not load (injected)"),
        ("incompatible-library", "ImportError: faulty-hash needs numpy>=99, found "),
        ("out-of-memory", "MemoryError: Unable to allocate 4.00 EiB"),
    ],
)
def test_each_cause_of_a_failed_load_is_one_line(fault: str, cause: str) -> None:
    backend = FaultyHashBackend({"fault": fault})
    supervisor = LoadSupervisor(fault, backend.load, LoadRetryConfig(first_delay_s=60))
    try:
        assert supervisor.start() is False
        failure = supervisor.failure
        assert failure is not None and failure.cause.startswith(cause)
        assert "\n" not in failure.cause
    finally:
        supervisor.stop(timeout_s=0)


def test_an_exception_without_a_message_is_named_by_its_type() -> None:
    assert load_cause(MemoryError()) == "MemoryError: out of memory while loading"
    assert load_cause(RuntimeError()) == "RuntimeError"
