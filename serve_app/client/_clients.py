"""`EmbedClient` and `AsyncEmbedClient`: one protocol (`_flow`), two ways to drive it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx

from embedserve import __version__
from embedserve.backend import InputType, OutputKind
from embedserve.client import _flow
from embedserve.client._errors import ModelNotFoundError
from embedserve.client._flow import EmbedPlan, Flow, HttpCall, RetryPolicy, Sleep
from embedserve.client._images import ImageInput, image_item
from embedserve.client._results import Embeddings, MultiVectorEmbeddings, SparseEmbeddings
from embedserve.serving.schemas import ModelCard

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Health:
    """Liveness and readiness: `ready` when every model has a backend that can serve."""

    live: bool
    ready: bool
    serving_backends: dict[str, list[str]]


class _Operations:
    """The client's operations as protocol flows, shared by the sync and async clients."""

    def __init__(self, model: str | None, retry: RetryPolicy) -> None:
        self.model = model
        self.retry = retry
        self._cards: dict[str, ModelCard] = {}

    def embed_text(
        self,
        texts: str | Sequence[str],
        model: str | None,
        input_type: InputType | str | None,
        dimensions: int | None,
        truncate: bool | None,
    ) -> Flow[Embeddings]:
        fields = self._fields(model, input_type, dimensions, truncate)
        items = [texts] if isinstance(texts, str) else list(texts)
        plan = EmbedPlan("/v1/embeddings", fields, items, "input", _flow.parse_openai)
        return self._embed(plan)

    def embed_native(
        self,
        items: list[dict[str, str]],
        output: OutputKind,
        model: str | None,
        input_type: InputType | str | None,
        dimensions: int | None = None,
        truncate: bool | None = None,
    ) -> Flow[Any]:
        fields = {
            **self._fields(model, input_type, dimensions, truncate),
            "outputs": [output.value],
        }
        parse = {
            OutputKind.DENSE: _flow.parse_native_dense,
            OutputKind.SPARSE: _flow.parse_sparse,
            OutputKind.MULTIVECTOR: _flow.parse_multivector,
        }[output]
        return self._embed(EmbedPlan("/v1/embed", fields, items, "items", parse))

    def _fields(
        self,
        model: str | None,
        input_type: InputType | str | None,
        dimensions: int | None,
        truncate: bool | None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": self.model_name(model), "encoding_format": "base64"}
        # An InputType member goes as its value: str() of a str enum is its name on 3.11.
        kind = input_type.value if isinstance(input_type, InputType) else input_type
        optional = {"input_type": kind, "dimensions": dimensions, "truncate": truncate}
        fields.update({k: v for k, v in optional.items() if v is not None})
        return fields

    def _embed(self, plan: EmbedPlan) -> Flow[Any]:
        card = yield from self.card(plan.fields["model"])
        if card is not None:
            plan = replace(plan, chunk=card.max_inputs_per_request)
        return (yield from _flow.embed(plan, self.retry))

    def model_name(self, model: str | None) -> str:
        """`model`, else the client's default model.

        Raises:
            ValueError: neither names a model.
        """
        name = model or self.model
        if not name:
            raise ValueError("no model: pass model=... here or to the client")
        return name

    def models(self) -> Flow[list[ModelCard]]:
        body = yield from _flow.request_json(HttpCall("GET", "/v1/models"), self.retry)
        cards = [ModelCard.model_validate(card) for card in body["data"]]
        self._cards = {card.id: card for card in cards}
        return cards

    def card(self, model: str) -> Flow[ModelCard | None]:
        """The model's card, from the server once per client (None: not served)."""
        if model not in self._cards:
            yield from self.models()
        return self._cards.get(model)

    def require_card(self, model: str | None) -> Flow[ModelCard]:
        name = self.model_name(model)
        card = yield from self.card(name)
        if card is None:
            served = ", ".join(sorted(self._cards))
            message = f"model {name!r} is not served here (models: {served})"
            raise ModelNotFoundError(
                404, {"error": {"message": message, "code": "model_not_found"}}
            )
        return card

    def health(self) -> Flow[Health]:
        live: httpx.Response = yield HttpCall("GET", "/healthz")
        ready: httpx.Response = yield HttpCall("GET", "/readyz")
        body = (
            ready.json()
            if ready.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        return Health(
            live=live.status_code == 200,
            ready=ready.status_code == 200,
            serving_backends=body.get("serving_backends", {}),
        )


def _texts(texts: str | Sequence[str]) -> list[dict[str, str]]:
    return [{"text": text} for text in ([texts] if isinstance(texts, str) else texts)]


def _images(images: ImageInput | Sequence[ImageInput]) -> list[dict[str, str]]:
    many = isinstance(images, (list, tuple))
    return [image_item(image) for image in (images if many else [images])]


def _http_options(base_url: str, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    """Options of the httpx client: `.../v1` and a trailing slash are accepted as base URL,
    as the OpenAI SDK takes them."""
    base = base_url.rstrip("/").removesuffix("/v1")
    headers = {"User-Agent": f"embedserve-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base, "headers": headers, "timeout": timeout_s}


class EmbedClient:
    """A client of an embedserve server that keeps every vector with its space.

    Args:
        base_url: The server (`http://host:port`, with or without `/v1`).
        api_key: An embedserve API key, when the server requires one.
        model: The default public model name of the embedding calls.
        timeout_s: Deadline of one HTTP request.
        retry_total_s: How long one request may keep being retried on 429/503, honouring
            the server's `Retry-After`.

    Long input lists go out as several requests within the model's
    `max_inputs_per_request` (and halved on 413), and come back as one result in order.

    Raises (from every call):
        EmbedServeAPIError: a subclass per status, carrying the server's error code.
        SpaceMismatch: parts of one call were served by different spaces.
        httpx.TransportError: the server cannot be reached.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 120.0,
        retry_total_s: float = 60.0,
    ) -> None:
        self._http = httpx.Client(**_http_options(base_url, api_key, timeout_s))
        self._ops = _Operations(model, RetryPolicy(total_s=retry_total_s))

    @property
    def base_url(self) -> str:
        """The server's URL."""
        return str(self._http.base_url).rstrip("/")

    def embed_text(
        self,
        texts: str | Sequence[str],
        *,
        model: str | None = None,
        input_type: InputType | str | None = None,
        dimensions: int | None = None,
        truncate: bool | None = None,
    ) -> Embeddings:
        """Dense vectors of texts (`input_type` `query`/`document` picks the prompt)."""
        return self._run(self._ops.embed_text(texts, model, input_type, dimensions, truncate))

    def embed_image(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> Embeddings:
        """Dense vectors of images: paths, file bytes, PIL images or numpy arrays."""
        flow = self._ops.embed_native(_images(images), OutputKind.DENSE, model, None, dimensions)
        return self._run(flow)

    def embed_sparse(
        self,
        texts: str | Sequence[str],
        *,
        model: str | None = None,
        input_type: InputType | str | None = None,
        truncate: bool | None = None,
    ) -> SparseEmbeddings:
        """Sparse (lexical) vectors of texts, for models that produce them (BGE-M3)."""
        flow = self._ops.embed_native(
            _texts(texts), OutputKind.SPARSE, model, input_type, truncate=truncate
        )
        return self._run(flow)

    def embed_multivector(
        self,
        texts: str | Sequence[str],
        *,
        model: str | None = None,
        input_type: InputType | str | None = None,
        truncate: bool | None = None,
    ) -> MultiVectorEmbeddings:
        """Per-token vectors of texts (ColBERT-style), for models that produce them."""
        flow = self._ops.embed_native(
            _texts(texts), OutputKind.MULTIVECTOR, model, input_type, truncate=truncate
        )
        return self._run(flow)

    def models(self) -> list[ModelCard]:
        """Every public model: chain, spaces, dimensions, modalities and limits."""
        return self._run(self._ops.models())

    def dimension(self, model: str | None = None) -> int | None:
        """The model's native vector size (None: the backend has not said yet)."""
        return self._run(self._ops.require_card(model)).dimensions

    def max_tokens(self, model: str | None = None) -> int | None:
        """Tokens the model embeds of one input (its primary backend's limit)."""
        return self._run(self._ops.require_card(model)).chain[0].max_input_tokens

    def health(self) -> Health:
        """Liveness and readiness of the server."""
        return self._run(self._ops.health())

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> EmbedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, flow: Flow[Any]) -> Any:
        reply: Any = None
        while True:
            try:
                action = flow.send(reply)
            except StopIteration as done:
                return done.value
            if isinstance(action, Sleep):
                time.sleep(action.seconds)
                reply = None
            else:
                reply = self._http.request(action.method, action.path, json=action.json)


class AsyncEmbedClient:
    """The asyncio twin of `EmbedClient`: the same arguments, calls and results."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 120.0,
        retry_total_s: float = 60.0,
    ) -> None:
        self._http = httpx.AsyncClient(**_http_options(base_url, api_key, timeout_s))
        self._ops = _Operations(model, RetryPolicy(total_s=retry_total_s))

    async def embed_text(
        self,
        texts: str | Sequence[str],
        *,
        model: str | None = None,
        input_type: InputType | str | None = None,
        dimensions: int | None = None,
        truncate: bool | None = None,
    ) -> Embeddings:
        """Dense vectors of texts (see `EmbedClient.embed_text`)."""
        return await self._run(self._ops.embed_text(texts, model, input_type, dimensions, truncate))

    async def embed_image(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> Embeddings:
        """Dense vectors of images (see `EmbedClient.embed_image`)."""
        flow = self._ops.embed_native(_images(images), OutputKind.DENSE, model, None, dimensions)
        return await self._run(flow)

    async def embed_sparse(
        self,
        texts: str | Sequence[str],
        *,
        model: str | None = None,
        input_type: InputType | str | None = None,
        truncate: bool | None = None,
    ) -> SparseEmbeddings:
        """Sparse vectors of texts (see `EmbedClient.embed_sparse`)."""
        flow = self._ops.embed_native(
            _texts(texts), OutputKind.SPARSE, model, input_type, truncate=truncate
        )
        return await self._run(flow)

    async def embed_multivector(
        self,
        texts: str | Sequence[str],
        *,
        model: str | None = None,
        input_type: InputType | str | None = None,
        truncate: bool | None = None,
    ) -> MultiVectorEmbeddings:
        """Per-token vectors of texts (see `EmbedClient.embed_multivector`)."""
        flow = self._ops.embed_native(
            _texts(texts), OutputKind.MULTIVECTOR, model, input_type, truncate=truncate
        )
        return await self._run(flow)

    async def models(self) -> list[ModelCard]:
        """Every public model (see `EmbedClient.models`)."""
        return await self._run(self._ops.models())

    async def dimension(self, model: str | None = None) -> int | None:
        """The model's native vector size."""
        return (await self._run(self._ops.require_card(model))).dimensions

    async def max_tokens(self, model: str | None = None) -> int | None:
        """Tokens the model embeds of one input."""
        return (await self._run(self._ops.require_card(model))).chain[0].max_input_tokens

    async def health(self) -> Health:
        """Liveness and readiness of the server."""
        return await self._run(self._ops.health())

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncEmbedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, flow: Flow[Any]) -> Any:
        reply: Any = None
        while True:
            try:
                action = flow.send(reply)
            except StopIteration as done:
                return done.value
            if isinstance(action, Sleep):
                await asyncio.sleep(action.seconds)
                reply = None
            else:
                reply = await self._http.request(action.method, action.path, json=action.json)
