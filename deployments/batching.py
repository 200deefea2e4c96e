"""Continuous batching in a replica, bounded by item count and a token budget (no Ray
imports).

A request's inputs are planned into chunks that each fit one batch
(`embedserve.runtime.batch_plan.plan_chunks`); a replica's `ContinuousBatcher` merges chunks of
concurrent requests into batches.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from embedserve.config import BatchingConfig
from embedserve.runtime.batch_plan import Chunk

T = TypeVar("T")


class ContinuousBatcher(Generic[T]):
    """Merges chunks of concurrent requests into batches within both limits.

    The next batch is formed when the previous one has finished: chunks that arrive while
    the model computes wait and then go together (continuous batching, as TEI does). An
    idle replica starts a lone chunk at once, or after `batch_wait_timeout_s` for company
    when that is set. (Ray Serve's `@serve.batch` closes a batch on its timer even while
    the model is busy, so under load its batches hold only what arrived within one wait,
    and an idle replica always pays the whole wait.)

    Chunks are taken in arrival order; a chunk whose caller has gone (a cancelled request)
    is skipped, and an `alone` chunk gets a batch of its own. A batch that raises fails
    only the chunks in it.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Chunk]], Awaitable[Sequence[T]]],
        limits: BatchingConfig,
    ) -> None:
        self.limits = limits
        self._run_batch = run_batch
        self._waiting: deque[tuple[Chunk, asyncio.Future[T]]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    @property
    def limits(self) -> BatchingConfig:
        """The batch limits, a token number in place of `auto`."""
        return self._limits

    @limits.setter
    def limits(self, limits: BatchingConfig) -> None:
        if limits.max_batch_tokens == "auto":
            raise ValueError("resolve max_batch_tokens: auto first (BatchingConfig.resolved)")
        self._limits = limits

    @property
    def queued_chunks(self) -> int:
        """Chunks waiting for a batch."""
        return len(self._waiting)

    async def submit(self, chunk: Chunk) -> T:
        """Queue `chunk` and return its part of the batch it ran in."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((chunk, future))
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await future

    async def _work(self) -> None:
        while self._waiting:
            await self._wait_for_company()
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    async def _wait_for_company(self) -> None:
        """With `batch_wait_timeout_s` set, wait that long for a batch to fill."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.batch_wait_timeout_s
        while not self._batch_is_full() and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _batch_is_full(self) -> bool:
        items = sum(len(chunk) for chunk, _ in self._waiting)
        tokens = sum(chunk.tokens for chunk, _ in self._waiting)
        return items >= self.limits.max_batch_size or tokens >= self.limits.batch_tokens

    def _take_batch(self) -> list[tuple[Chunk, asyncio.Future[T]]]:
        batch: list[tuple[Chunk, asyncio.Future[T]]] = []
        items = tokens = 0
        while self._waiting:
            chunk, future = self._waiting[0]
            if future.done():  # its request was cancelled (deadline, client gone)
                self._waiting.popleft()
                continue
            over_items = items + len(chunk) > self.limits.max_batch_size
            over_tokens = tokens + chunk.tokens > self.limits.batch_tokens
            if batch and (over_items or over_tokens or chunk.alone):
                break
            batch.append(self._waiting.popleft())
            items, tokens = items + len(chunk), tokens + chunk.tokens
            if chunk.alone:
                break
        return batch

    async def _run(self, batch: list[tuple[Chunk, asyncio.Future[T]]]) -> None:
        try:
            parts = await self._run_batch([chunk for chunk, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), part in zip(batch, parts, strict=True):
            if not future.done():
                future.set_result(part)
