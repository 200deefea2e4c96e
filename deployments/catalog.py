"""What the router knows of its models and backends: each model's fallback chain, static
capabilities from the config, and what each deployment says of itself (`describe`:
loaded dimensions, availability)."""

from __future__ import annotations

import asyncio
import logging
import time

from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from embedserve.backend import BackendCapabilities
from embedserve.config import BatchingConfig, EmbedServeConfig
from embedserve.deployments.replica_description import ReplicaDescription
from embedserve.deployments.tokenizers import Tokenizers, TokenizerUnavailable
from embedserve.errors import ModelNotFound, clip
from embedserve.serving.fallback import ChainLink
from embedserve.serving.schemas import BackendInfo, ModelCard, ModelList

logger = logging.getLogger("ray.serve")

DESCRIBE_TIMEOUT_S = 5.0
# A replica's batch limits change at run time (`reconfigure`): a description this old is
# asked for again, off the request path, the next time a request reads it.
DESCRIPTION_MAX_AGE_S = 5.0


def describe_backend_error(exc: BaseException) -> str:
    """A one-line reason from a backend's exception, unwrapping Ray's task error."""
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class BackendCatalog:
    """Each model's fallback chain, and each backend's capabilities and availability, as
    last described by its replicas."""

    def __init__(self, config: EmbedServeConfig, handles: dict[str, DeploymentHandle]) -> None:
        self._config = config
        self._handles = handles
        self._described: dict[str, ReplicaDescription] = {}
        self._asked_at: dict[str, float] = {}  # time.monotonic() of each last describe
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self.tokenizers = Tokenizers(config)
        # Each public model's fallback chain, primary first.
        self.chains: dict[str, list[ChainLink]] = {
            model: [
                ChainLink(name, config.space_id(name), config.backends[name].timeout_s)
                for name in model_config.chain
            ]
            for model, model_config in config.models.items()
        }

    def chain(self, model: str) -> list[ChainLink]:
        """The fallback chain of a public model, primary first.

        Raises:
            ModelNotFound: no model of that name is served here.
        """
        try:
            return self.chains[model]
        except KeyError:
            known = ", ".join(sorted(self.chains))
            raise ModelNotFound(
                f"model {clip(model)!r} does not exist (models served here: {known})",
                param="model",
            ) from None

    def capabilities(self, backend: str) -> BackendCapabilities:
        """The loaded capabilities when the backend described itself, else the config's
        (with the tokenizer's input limit where it loads)."""
        described = self._described.get(backend)
        if described is not None:
            return described.capabilities
        try:
            return self.tokenizers.get(backend).capabilities
        except TokenizerUnavailable:
            return self._config.backend(backend).capabilities

    def input_limit(self, backend: str) -> int | None:
        """The input token limit the router enforces for the backend, with its tokenizer
        (None: no limit, or the tokenizer does not load)."""
        try:
            return self.tokenizers.get(backend).capabilities.max_input_tokens
        except TokenizerUnavailable:
            return None

    async def batching(self, backend: str) -> BatchingConfig:
        """The batch limits a replica of the backend applies (its `reconfigure`d
        `user_config`, `max_batch_tokens: auto` resolved on its device), else the config's.

        Asked at the first call; a description older than `DESCRIPTION_MAX_AGE_S` is asked
        again in the background, so a reconfiguration reaches the router within seconds
        (and a replica that does not answer delays one request, not each).
        """
        if backend not in self._asked_at:
            await self._describe(backend)
        else:
            self._refresh_when_old(backend)
        described = self._described.get(backend)
        if described is not None:
            return described.batching
        return self._config.backends[backend].batching

    async def loaded_capabilities(self, backend: str) -> BackendCapabilities:
        """Capabilities after asking the backend once (dimensions are known after load)."""
        if backend not in self._described:
            await self._describe(backend)
        return self.capabilities(backend)

    async def refresh(self) -> None:
        """Ask every backend afresh: availability can change (restarts, lost nodes)."""
        await asyncio.gather(*(self._describe(name) for name in self._handles))

    def available(self, backend: str) -> bool:
        """Whether the backend's last description said it can serve."""
        described = self._described.get(backend)
        return bool(described and described.available)

    async def model_list(self) -> ModelList:
        """Every public model with its chain, spaces, dimensions, modalities and limits,
        as the backends describe themselves now (`GET /v1/models`)."""
        await self.refresh()
        return ModelList(data=[self._model_card(name) for name in self.chains])

    async def serving_backends(self) -> dict[str, list[str]]:
        """Per model, the backends of its chain that say now that they can serve; a model
        with none makes the router not ready."""
        await self.refresh()
        return {
            model: [link.backend for link in chain if self.available(link.backend)]
            for model, chain in self.chains.items()
        }

    def failed_backends(self) -> dict[str, dict[str, str | None]]:
        """Each backend that cannot serve, as last described: why (`reason`) and, for a
        failed load, the replica's log (`log`)."""
        failed = {}
        for backend in self._handles:
            described = self._described.get(backend)
            if described is None:
                failed[backend] = {"reason": "the backend did not answer", "log": None}
                continue
            if described.available:
                continue
            log = described.load_failure.log if described.load_failure else None
            failed[backend] = {"reason": described.reason, "log": log}
        return failed

    def _model_card(self, model: str) -> ModelCard:
        chain = [self.backend_info(link) for link in self.chains[model]]
        return ModelCard(
            serving_backends=[backend.name for backend in chain if backend.available],
            id=model,
            space_id=chain[0].space_id,
            dimensions=chain[0].dimensions,
            allow_cross_space=self._config.models[model].allow_cross_space,
            chain=chain,
            max_inputs_per_request=self._config.server.max_inputs_per_request,
        )

    def backend_info(self, link: ChainLink) -> BackendInfo:
        """One backend of a chain, as `GET /v1/models` shows it."""
        capabilities = self.capabilities(link.backend)
        described = self._described.get(link.backend)
        return BackendInfo(
            name=link.backend,
            kind=self._config.backends[link.backend].kind,
            space_id=link.space_id,
            available=described.available if described else None,
            reason=described.reason if described else "the backend did not answer",
            log=self.failed_backends().get(link.backend, {}).get("log"),
            dimensions=capabilities.dimensions,
            matryoshka_dimensions=list(capabilities.matryoshka_dimensions),
            max_input_tokens=capabilities.max_input_tokens,
            modalities=list(capabilities.modalities),
            outputs=list(capabilities.outputs),
            normalized=capabilities.normalized,
            semantic=capabilities.semantic,
        )

    def _refresh_when_old(self, backend: str) -> None:
        age = time.monotonic() - self._asked_at.get(backend, 0.0)
        if age < DESCRIPTION_MAX_AGE_S or backend in self._refreshing:
            return
        task = asyncio.create_task(self._describe(backend))
        self._refreshing[backend] = task  # held, so the task is not collected mid-call
        task.add_done_callback(lambda _: self._refreshing.pop(backend, None))

    async def _describe(self, backend: str) -> None:
        self._asked_at[backend] = time.monotonic()
        try:
            self._described[backend] = await asyncio.wait_for(
                self._handles[backend].describe.remote(), DESCRIBE_TIMEOUT_S
            )
        except Exception as exc:
            reason = describe_backend_error(exc)
            logger.warning("backend %s did not describe itself: %s", backend, reason)
            stale = self._described.get(backend)
            if stale is not None:
                # Keep the loaded capabilities, not a stale claim that it can serve.
                self._described[backend] = stale.unanswered(reason)
