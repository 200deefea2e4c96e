"""Metrics exported to the Ray dashboard (Prometheus) through `ray.util.metrics`.

Ray prefixes every name with `ray_` in its export (`ray_embedserve_requests_total`...).
Metric objects are created inside the process (router or replica) that records them.
Request texts are never part of a tag.
"""

from __future__ import annotations

from collections.abc import Sequence

from ray.util.metrics import Counter, Gauge, Histogram

_LATENCY_MS: list[float] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
_BATCH_ITEMS: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
_BATCH_TOKENS: list[float] = [16, 64, 256, 1024, 4096, 16384, 65536]


class RouterMetrics:
    """What the router records per request and per backend attempt."""

    def __init__(self) -> None:
        self._requests = Counter(
            "embedserve_requests",
            description="Embedding requests by model, serving backend and HTTP status.",
            tag_keys=("model", "backend", "status"),
        )
        self._items = Counter(
            "embedserve_items",
            description="Inputs embedded, by model and backend.",
            tag_keys=("model", "backend"),
        )
        self._tokens = Counter(
            "embedserve_tokens",
            description="Tokens embedded, by model and backend.",
            tag_keys=("model", "backend"),
        )
        self._latency = Histogram(
            "embedserve_request_latency_ms",
            description="Latency of embedding requests in the router, by model and status.",
            boundaries=_LATENCY_MS,
            tag_keys=("model", "status"),
        )
        self._fallbacks = Counter(
            "embedserve_fallbacks",
            description="Requests served by a fallback, by model and why the earlier "
            "backends failed (error, timeout, overloaded, invalid_answer, other_space).",
            tag_keys=("model", "reason"),
        )
        self._cache_lookups = Counter(
            "embedserve_cache_lookups",
            description="Embedding-cache lookups by model and outcome (hit, miss).",
            tag_keys=("model", "outcome"),
        )
        self._backend_failures = Counter(
            "embedserve_backend_failures",
            description="Failed backend attempts, by backend and kind.",
            tag_keys=("backend", "kind"),
        )
        self._truncated_inputs = Counter(
            "embedserve_truncated_inputs",
            description="Inputs cut to their model's token limit, by model and backend.",
            tag_keys=("model", "backend"),
        )
        self._truncated_tokens = Counter(
            "embedserve_truncated_tokens",
            description="Tokens that truncation dropped, by model and backend.",
            tag_keys=("model", "backend"),
        )

    def request(
        self, model: str, backend: str, status: int, seconds: float, items: int, tokens: int
    ) -> None:
        """Count one finished request (`backend` is empty when none served)."""
        self._requests.inc(tags={"model": model, "backend": backend, "status": str(status)})
        self._latency.observe(seconds * 1000, tags={"model": model, "status": str(status)})
        if status == 200:
            self._items.inc(items, tags={"model": model, "backend": backend})
            if tokens:  # image-only models may count none; Ray's counters refuse 0
                self._tokens.inc(tokens, tags={"model": model, "backend": backend})

    def truncation(self, model: str, backend: str, dropped: Sequence[int]) -> None:
        """Count the inputs one served request truncated and the tokens they lost
        (`dropped`: per input)."""
        inputs = sum(1 for tokens in dropped if tokens)
        if inputs:  # Ray's counters refuse inc(0)
            tags = {"model": model, "backend": backend}
            self._truncated_inputs.inc(inputs, tags=tags)
            self._truncated_tokens.inc(sum(dropped), tags=tags)

    def cache(self, model: str, hits: int, misses: int) -> None:
        """Count cache hits and misses of one backend attempt."""
        for outcome, count in (("hit", hits), ("miss", misses)):
            if count:  # Ray's counters refuse inc(0)
                self._cache_lookups.inc(count, tags={"model": model, "outcome": outcome})

    def failures(self, model: str, failures: list, served: bool) -> None:
        """Count failed backend attempts, and a fallback when a later backend served."""
        for failure in failures:
            self._backend_failures.inc(
                tags={"backend": failure.backend, "kind": failure.kind.value}
            )
        if served and failures:
            self._fallbacks.inc(tags={"model": model, "reason": failures[0].kind.value})


class ReplicaMetrics:
    """What a backend replica records per batch, per canary check and per load attempt."""

    def __init__(self, backend: str) -> None:
        self._tags = {"backend": backend}
        self._batch_items = Histogram(
            "embedserve_batch_size",
            description="Inputs per executed batch.",
            boundaries=_BATCH_ITEMS,
            tag_keys=("backend",),
        )
        self._batch_tokens = Histogram(
            "embedserve_batch_tokens",
            description="Tokens per executed batch.",
            boundaries=_BATCH_TOKENS,
            tag_keys=("backend",),
        )
        self._queue_wait = Histogram(
            "embedserve_queue_wait_ms",
            description="Time a request's chunk waited in the replica before its batch ran.",
            boundaries=_LATENCY_MS,
            tag_keys=("backend",),
        )
        self._batch_latency = Histogram(
            "embedserve_batch_latency_ms",
            description="Time to embed one batch.",
            boundaries=_LATENCY_MS,
            tag_keys=("backend",),
        )
        self._canary_checks = Counter(
            "embedserve_canary_checks",
            description="Canary checks of a backend replica, by outcome "
            "(recorded, passed, failed).",
            tag_keys=("backend", "outcome"),
        )
        self._load_failed = Gauge(
            "embedserve_backend_load_failed",
            description="1 while a backend replica's model failed to load (it retries with "
            "backoff and serves nothing meanwhile), 0 once loaded.",
            tag_keys=("backend",),
        )
        self._load_attempts = Counter(
            "embedserve_backend_load_attempts",
            description="Load attempts of a backend replica's model, by outcome (loaded, failed).",
            tag_keys=("backend", "outcome"),
        )

    def load(self, loaded: bool) -> None:
        """Record one load attempt and whether the backend is now loaded."""
        self._load_failed.set(0 if loaded else 1, tags=self._tags)
        outcome = "loaded" if loaded else "failed"
        self._load_attempts.inc(tags={**self._tags, "outcome": outcome})

    def batch(self, items: int, tokens: int, waits: list[float], seconds: float) -> None:
        """Record one executed batch and how long each of its chunks waited."""
        self._batch_items.observe(items, tags=self._tags)
        self._batch_tokens.observe(tokens, tags=self._tags)
        self._batch_latency.observe(seconds * 1000, tags=self._tags)
        for wait in waits:
            self._queue_wait.observe(wait * 1000, tags=self._tags)

    def canary(self, outcome: str) -> None:
        """Count one canary check."""
        self._canary_checks.inc(tags={**self._tags, "outcome": outcome})
