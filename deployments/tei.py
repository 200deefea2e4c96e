"""TEI's API beside the OpenAI one: the routes, request fields, response shapes and error
body of Hugging Face text-embeddings-inference, for the clients that speak it
(`huggingface_hub.InferenceClient.feature_extraction`, Haystack, LangChain's
`HuggingFaceEndpointEmbeddings`).

Each embedding route is a thin adapter over the engine call every route makes
(`EmbeddingEngine.embed`). A TEI server serves one model; here the `X-Embedding-Model`
request header names the model, and `server.tei_default_model` (default: the first
configured model) serves requests without it. TEI's bodies are bare arrays, so the vector
metadata travels in the `X-Embedding-*` response headers only.

Shapes, error types and statuses follow TEI 1.9.3's published contract (its
`docs/openapi.json`; tests/unit/test_tei_contract.py restates it) and its router
(huggingface/text-embeddings-inference: router/src/http/server.rs, types.rs, lib.rs).
`/tokenize` and token-id inputs are in `tei_tokens`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Header, Response
from fastapi.responses import JSONResponse

from embedserve import __version__
from embedserve.backend import OutputKind, SparseVector
from embedserve.config import EmbedServeConfig
from embedserve.deployments.catalog import BackendCatalog
from embedserve.deployments.engine import EmbeddingEngine, EmbeddingResult, ParsedRequest
from embedserve.deployments.responses import VectorJSONResponse, encode_vectors, result_headers
from embedserve.deployments.tei_errors import TEI_ERRORS, TeiError
from embedserve.deployments.tei_tokens import embedding_items, tokenize_request
from embedserve.serving.auth import ApiKey
from embedserve.serving.schemas import (
    TeiEmbeddingModel,
    TeiEmbedRequest,
    TeiInfo,
    TeiModelType,
    TeiRequest,
    TeiSparseValue,
    TeiToken,
    TeiTokenizeRequest,
)
from embedserve.serving.vectors import l2_normalize
from embedserve.space import normalized_space_id

if TYPE_CHECKING:
    from embedserve.deployments.http import RouterParts

MODEL_HEADER = "X-Embedding-Model"
_TAGS: list[str | Enum] = ["Text Embeddings Inference"]


def install_tei_routes(
    app: FastAPI, router: RouterParts, api_key: Callable[..., Awaitable[ApiKey | None]]
) -> None:
    """Add TEI's routes to the router's HTTP app."""
    default_model = router.config.tei_model

    async def model_of(
        name: str | None = Header(
            None,
            alias=MODEL_HEADER,
            description="The public model to use (default: `server.tei_default_model`).",
        ),
    ) -> str:
        return name or default_model

    _install_embedding_routes(app, router, model_of, api_key)
    _install_model_routes(app, router, model_of, api_key)


def _install_embedding_routes(
    app: FastAPI,
    router: RouterParts,
    model_of: Callable[..., Awaitable[str]],
    api_key: Callable[..., Awaitable[ApiKey | None]],
) -> None:
    """`/embed` (and `POST /`), `/embed_sparse` and `/embed_all`: one engine call each."""
    engine, catalog = router.engine, router.catalog

    def parsed(request: TeiRequest, model: str, output: OutputKind) -> ParsedRequest:
        """The engine's request; token ids as the text they are the tokenization of, by
        the tokenizer of the model's primary backend (loaded only when ids come)."""
        primary = catalog.chain(model)[0].backend
        items = embedding_items(
            lambda: catalog.tokenizers.get(primary), request.inputs, request.prompt_name
        )
        return tei_request(request, model, items, output)

    @app.post("/embed", response_model=list[list[float]], responses=TEI_ERRORS, tags=_TAGS)
    async def embed(
        request: TeiEmbedRequest,
        model: str = Depends(model_of),
        key: ApiKey | None = Depends(api_key),
    ) -> Response:
        """Dense vectors, one array per input (TEI's `/embed`)."""
        dense = parsed(request, model, OutputKind.DENSE)
        result = await engine.embed(replace(dense, dimensions=request.dimensions), key)
        if request.normalize:
            result = unit_vectors(result)
        return tei_response(result, encode_vectors(result.dense, "float"))

    @app.post(
        "/embed_sparse",
        response_model=list[list[TeiSparseValue]],
        responses=TEI_ERRORS,
        tags=_TAGS,
    )
    async def embed_sparse(
        request: TeiRequest, model: str = Depends(model_of), key: ApiKey | None = Depends(api_key)
    ) -> Response:
        """Sparse vectors, per input its non-zero `{index, value}` weights (BGE-M3)."""
        result = await engine.embed(parsed(request, model, OutputKind.SPARSE), key)
        rows = _per_input(result.sparse, result)
        return tei_response(result, [sparse_values(vector) for vector in rows])

    @app.post(
        "/embed_all", response_model=list[list[list[float]]], responses=TEI_ERRORS, tags=_TAGS
    )
    async def embed_all(
        request: TeiRequest, model: str = Depends(model_of), key: ApiKey | None = Depends(api_key)
    ) -> Response:
        """Per input, one vector per token: the model's multi-vector output (BGE-M3's
        ColBERT vectors), not raw hidden states."""
        result = await engine.embed(parsed(request, model, OutputKind.MULTIVECTOR), key)
        rows = _per_input(result.multivector, result)
        return tei_response(result, [[] if v is None else encode_vectors(v, "float") for v in rows])

    app.add_api_route("/", embed, methods=["POST"], include_in_schema=False)


def _install_model_routes(
    app: FastAPI,
    router: RouterParts,
    model_of: Callable[..., Awaitable[str]],
    api_key: Callable[..., Awaitable[ApiKey | None]],
) -> None:
    """`/tokenize`, `/info` and `/health` (and `GET /`), of the selected model."""
    engine, catalog, config = router.engine, router.catalog, router.config

    @app.post(
        "/tokenize",
        response_model=list[list[TeiToken]],
        dependencies=[Depends(api_key)],
        responses=TEI_ERRORS,
        tags=_TAGS,
    )
    async def tokenize(request: TeiTokenizeRequest, model: str = Depends(model_of)) -> Response:
        """Per input, its tokens as the model's tokenizer splits it; an input over the
        model's token limit is refused (413), as `/embed` refuses it without truncation."""
        backend = catalog.tokenizers.get(catalog.chain(model)[0].backend)
        tokens = tokenize_request(
            backend,
            request.inputs,
            request.prompt_name,
            request.add_special_tokens,
            config.server.max_inputs_per_request,
        )
        return JSONResponse(tokens)

    @app.get(
        "/info",
        response_model=TeiInfo,
        dependencies=[Depends(api_key)],
        responses=TEI_ERRORS,
        tags=_TAGS,
    )
    async def info(model: str = Depends(model_of)) -> TeiInfo:
        """TEI's description of the model: its id, limits and batching."""
        return await tei_info(config, catalog, engine, model)

    @app.get(
        "/health",
        response_class=Response,  # an empty 200, as TEI's
        responses={404: TEI_ERRORS[404], 503: TEI_ERRORS[503]},
        tags=_TAGS,
    )
    async def health(model: str = Depends(model_of)) -> Response:
        """200 when a backend of the model's chain can serve, else 503 `Unhealthy`."""
        catalog.chain(model)  # an unknown model is a 404 before any backend is asked
        if not (await catalog.serving_backends())[model]:
            raise TeiError("unhealthy", "Unhealthy")
        return Response(status_code=200)

    app.add_api_route("/", health, methods=["GET"], include_in_schema=False)


def _per_input(rows: list[Any] | None, result: EmbeddingResult) -> list[Any]:
    """An output's rows, one per input (None for each where the backend gave none)."""
    return rows if rows is not None else [None] * len(result.token_counts)


def tei_request(
    request: TeiRequest, model: str, items: str | list[str], output: OutputKind
) -> ParsedRequest:
    """A TEI body, its inputs as `items` (texts), as the engine's request for `model`;
    errors name `inputs`."""
    return ParsedRequest(
        model=model,
        items=items,
        input_type=request.prompt_name,
        outputs=(output,),
        truncate=request.truncate,
        field="inputs",
    )


def unit_vectors(result: EmbeddingResult) -> EmbeddingResult:
    """The result with unit-length dense vectors (TEI's `normalize`, on by default).

    A backend's normalised vectors are returned as they are. Those of a backend that does
    not normalise are normalised here, in a space of their own (`<space_id>/normalized`):
    cosine ranks them as before, but dot products and distances do not.
    """
    metadata = result.metadata
    if metadata.normalized:
        return result
    space = normalized_space_id(metadata.space_id)
    normalized = metadata.model_copy(update={"normalized": True, "space_id": space})
    return replace(result, dense=l2_normalize(result.dense), metadata=normalized)


def sparse_values(vector: SparseVector | None) -> list[dict[str, Any]]:
    """A sparse vector as TEI writes it: `[{"index": id, "value": weight}, ...]`."""
    if vector is None:
        return []
    pairs = zip(vector.indices.tolist(), vector.values.tolist(), strict=True)
    return [{"index": index, "value": value} for index, value in pairs]


def tei_response(result: EmbeddingResult, body: list[Any]) -> VectorJSONResponse:
    """A TEI answer: the bare array, with the metadata as `X-Embedding-*` headers and the
    tokens embedded as TEI's `x-compute-tokens`."""
    headers = {**result_headers(result), "x-compute-tokens": str(sum(result.token_counts))}
    return VectorJSONResponse(body, headers=headers)


async def tei_info(
    config: EmbedServeConfig, catalog: BackendCatalog, engine: EmbeddingEngine, model: str
) -> TeiInfo:
    """TEI's `/info` for a model, from its chain's primary backend: the identity and token
    limit the config gives it, and the batching its replica reports."""
    primary = catalog.chain(model)[0].backend
    backend, server = config.backend(primary), config.server
    batching = await catalog.batching(primary)
    identity = backend.space_identity()
    budget = batching.max_batch_tokens
    return TeiInfo(
        model_id=str(identity.get("model") or model),
        model_sha=identity.get("revision"),
        served_model_name=model,
        # The configured dtype (`auto`: each replica's device decides); backends without
        # the option return float32 vectors.
        model_dtype=str(getattr(backend.options, "dtype", "float32")),
        model_type=TeiModelType(
            embedding=TeiEmbeddingModel(pooling=str(identity.get("pooling", "unknown")))
        ),
        max_concurrent_requests=server.router_max_ongoing_requests,
        # The limit the router enforces, with the backend's tokenizer.
        max_input_length=catalog.input_limit(primary),
        max_batch_tokens=budget if isinstance(budget, int) else None,
        max_batch_requests=batching.max_batch_size,
        max_client_batch_size=server.max_inputs_per_request,
        auto_truncate=engine.truncates(model),
        # Each router replica tokenizes on its one event loop.
        tokenization_workers=server.router_replicas,
        version=__version__,
    )
