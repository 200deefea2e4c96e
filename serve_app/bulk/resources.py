"""Where a job's encoders fit: their Ray resources against what the cluster has free.

A backend's config reserves what its Serve replica needs, and on a small machine that
can be every CPU (the bundled MiniLM reserves 2 for its torch threads). Ray has then
promised those CPUs away, and encoders asking the same would wait forever next to the
server. So, unless `--encoder-cpus` says how many, encoders reserve the backend's CPUs
only when they are free, else what is free (down to 0: they then share the cores with
the server, with one thread each, as any other process on the machine would). Anything
else the encoders need (GPUs, memory, custom resources, or the CPUs asked for) that is
not free is reported at once, with what is missing, and the job fails when it is still
missing after `--wait-for-resources` seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from embedserve.bulk.spec import BulkError, JobSpec, Log

PENDING_REPORT_S = 10.0
_POLL_S = 1.0
_GIB = 1024**3


class EncodersUnschedulable(BulkError):
    """The encoders' resources were not free within the time the job waits for them."""


def demand(options: Mapping[str, Any]) -> dict[str, float]:
    """The Ray resources one encoder actor reserves, by Ray's names (`CPU`, `GPU`,
    `memory` in bytes, custom resources)."""
    wanted = {
        "CPU": float(options.get("num_cpus") or 0),
        "GPU": float(options.get("num_gpus") or 0),
        "memory": float(options.get("memory") or 0),
        **{name: float(amount) for name, amount in options.get("resources", {}).items()},
    }
    return {name: amount for name, amount in wanted.items() if amount > 0}


def fit_cpus(
    options: Mapping[str, Any], cpus: float | None, workers: int, free: Mapping[str, float]
) -> tuple[dict[str, Any], str | None]:
    """The encoders' actor options with their CPUs chosen, and a line saying why when
    they differ from the backend's.

    Args:
        options: the backend's actor options (`placement.actor_options`).
        cpus: CPUs per encoder asked for (`--encoder-cpus`), or None: the backend's
            when `workers` encoders of them fit the free CPUs, else an equal share of
            the free CPUs (0 when none is free).
        workers: encoder actors.
        free: the cluster's free resources (`ray.available_resources()`).
    """
    configured = float(options.get("num_cpus") or 0)
    if cpus is not None:
        return {**options, "num_cpus": cpus}, None
    available = free.get("CPU", 0.0)
    if configured * workers <= available:
        return dict(options), None
    # Hundredths: Ray's own granularity for fractional resources is 1/10000, but a
    # share rounded down must never ask for more than is free.
    share = math.floor(100 * available / workers) / 100
    note = (
        f"encoders reserve {share:g} CPUs each, not the backend's {configured:g}: "
        f"the cluster has {available:g} CPUs free (a server may hold the others); "
        "they share the cores with it (set --encoder-cpus to choose)"
    )
    return {**options, "num_cpus": share}, note


def shortfall(
    options: Mapping[str, Any], workers: int, free: Mapping[str, float], total: Mapping[str, float]
) -> str | None:
    """Why `workers` encoders with `options` cannot all be scheduled now, or None.

    For example `need 2 CPUs (1 encoder x 2 CPUs); the cluster has 0 CPUs free of 4 CPUs`.
    """
    encoders = f"{workers} encoder{'s' if workers > 1 else ''}"
    missing = [
        f"need {_amount(name, amount * workers)} ({encoders} x {_amount(name, amount)}); the "
        f"cluster has {_amount(name, free.get(name, 0.0))} free of "
        f"{_amount(name, total.get(name, 0.0))}"
        for name, amount in demand(options).items()
        if amount * workers > free.get(name, 0.0)
    ]
    return "; ".join(missing) or None


def _amount(name: str, value: float) -> str:
    """`2 CPUs`, `1 GPU`, `1.5 GiB memory`, `1 accelerator_type:A100`."""
    if name == "memory":
        return f"{value / _GIB:.1f} GiB memory"
    plural = "s" if value != 1 and name in ("CPU", "GPU") else ""
    return f"{value:g} {name}{plural}"


def schedule_encoders(
    options: Mapping[str, Any],
    spec: JobSpec,
    log: Log,
    resources: Callable[[], tuple[Mapping[str, float], Mapping[str, float]]] | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> dict[str, Any]:
    """The encoders' actor options, once the cluster has their resources free.

    Args:
        options: the backend's actor options.
        spec: the job (`encoder_cpus`, `workers`, `resource_wait_s`).
        log: where the CPU choice and `pending:` lines go.
        resources: the cluster's free and total resources (default: Ray's, connected).
        sleep: how to wait between looks (tests pass a fake clock's).

    Raises:
        EncodersUnschedulable: still not free after `spec.resource_wait_s` seconds.
    """
    look = resources or _ray_resources
    free, total = look()
    chosen, note = fit_cpus(options, spec.encoder_cpus, spec.workers, free)
    if note:
        log(note)
    waited, reported = 0.0, -math.inf
    while (missing := shortfall(chosen, spec.workers, free, total)) is not None:
        if waited >= spec.resource_wait_s:
            raise EncodersUnschedulable(
                f"the encoders cannot be scheduled: they {missing}, after waiting "
                f"{waited:g}s; free them (a server or another job holds them), lower "
                "--encoder-cpus or --workers, or wait longer with --wait-for-resources SECONDS"
            )
        if waited - reported >= PENDING_REPORT_S:
            log(f"pending: the encoders {missing}; waiting up to {spec.resource_wait_s:g}s")
            reported = waited
        sleep(_POLL_S)
        waited += _POLL_S
        free, total = look()
    return chosen


def _ray_resources() -> tuple[Mapping[str, float], Mapping[str, float]]:
    import ray

    return ray.available_resources(), ray.cluster_resources()
