"""TEI's API beside the OpenAI one: the routes, request fields, response shapes and error
body of Hugging Face text-embeddings-inference, for the clients that speak it
(`huggingface_hub.InferenceClient.feature_extraction`, Haystack, LangChain's
`HuggingFaceEndpointEmbeddings`).

Each embedding route is a thin adapter over the engine call every route makes
(`EmbeddingEngine.embed`). A TEI server serves one model; here the `X-Embedding-Model`
request header names the model, and `server.tei_default_model` (default: the first
configured model) serves requests without it. TEI's bodies are bare arrays, so the vector
metadata travels in the `X-Embedding-*` response headers only.

Shapes, error types and statuses follow TEI's router (huggingface/text-embeddings-inference:
router/src/http/server.rs, router/src/http/types.rs, router/src/lib.rs).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Header, Response
from fastapi.responses import JSONResponse

from embedserve import __version__
from embedserve.backend import Backend, EmbedInput, OutputKind, SparseVector
from embedserve.config import EmbedServeConfig
from embedserve.deployments.catalog import BackendCatalog
from embedserve.deployments.engine import EmbeddingEngine, EmbeddingResult, ParsedRequest
from embedserve.deployments.responses import VectorJSONResponse, encode_vectors, result_headers
from embedserve.deployments.tei_errors import TEI_ERRORS, TeiError
from embedserve.serving.auth import ApiKey
from embedserve.serving.schemas import (
    TeiEmbedRequest,
    TeiInfo,
    TeiRequest,
    TeiSparseValue,
    TeiToken,
    TeiTokenizeRequest,
)
from embedserve.serving.validation import request_items
from embedserve.serving.vectors import l2_normalize
from embedserve.space import normalized_space_id

if TYPE_CHECKING:
    from embedserve.deployments.router import EmbeddingRouter

MODEL_HEADER = "X-Embedding-Model"
_TAGS = ["Text Embeddings Inference"]


def install_tei_routes(
    app: FastAPI, router: EmbeddingRouter, api_key: Callable[..., Awaitable[ApiKey | None]]
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

    _install_embedding_routes(app, router.engine, model_of, api_key)
    _install_model_routes(app, router, model_of, api_key)


def _install_embedding_routes(
    app: FastAPI,
    engine: EmbeddingEngine,
    model_of: Callable[..., str],
    api_key: Callable[..., Awaitable[ApiKey | None]],
) -> None:
    """`/embed` (and `POST /`), `/embed_sparse` and `/embed_all`: one engine call each."""

    @app.post("/embed", response_model=list[list[float]], responses=TEI_ERRORS, tags=_TAGS)
    async def embed(
        request: TeiEmbedRequest,
        model: str = Depends(model_of),
        key: ApiKey | None = Depends(api_key),
    ) -> Response:
        """Dense vectors, one array per input (TEI's `/embed`)."""
        parsed = replace(tei_request(request, model), dimensions=request.dimensions)
        result = await engine.embed(parsed, key)
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
        result = await engine.embed(tei_request(request, model, OutputKind.SPARSE), key)
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
        result = await engine.embed(tei_request(request, model, OutputKind.MULTIVECTOR), key)
        rows = _per_input(result.multivector, result)
        return tei_response(result, [[] if v is None else encode_vectors(v, "float") for v in rows])

    app.add_api_route("/", embed, methods=["POST"], include_in_schema=False)


def _install_model_routes(
    app: FastAPI,
    router: EmbeddingRouter,
    model_of: Callable[..., str],
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
        """Per input, its tokens as the model's tokenizer splits it (no truncation)."""
        backend = catalog.tokenizers.get(catalog.chain(model)[0].backend)
        max_inputs = config.server.max_inputs_per_request
        texts = request_items(request.inputs, max_inputs, None, "inputs")
        inputs = [EmbedInput(text, request.prompt_name) for text in texts]
        return JSONResponse(tokenize_inputs(backend, inputs, request.add_special_tokens))

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
    request: TeiRequest, model: str, output: OutputKind = OutputKind.DENSE
) -> ParsedRequest:
    """A TEI body as the engine's request for `model`; errors name `inputs`."""
    return ParsedRequest(
        model=model,
        items=request.inputs,
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


def tokenize_inputs(
    backend: Backend, inputs: Sequence[EmbedInput], add_special_tokens: bool
) -> list[list[dict[str, Any]]]:
    """Per input, TEI's tokens: `{"id", "text", "special", "start", "stop"}`, offsets in
    characters of the prompted text, as the backend's tokenizer splits it.

    Raises:
        TeiError: (`Tokenizer`) the backend has no tokenizer that gives offsets.
    """
    tokenizer = _offsets_tokenizer(backend)
    texts = backend.prompted_texts(inputs)
    encoded = tokenizer(
        texts,
        add_special_tokens=add_special_tokens,
        truncation=False,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        verbose=False,
    )
    columns = zip(
        texts,
        encoded["input_ids"],
        encoded["offset_mapping"],
        encoded["special_tokens_mask"],
        strict=True,
    )
    return [_tokens(tokenizer, *column) for column in columns]


def _tokens(
    tokenizer: Any, text: str, ids: list[int], offsets: list[tuple[int, int]], special: list[int]
) -> list[dict[str, Any]]:
    """One text's tokens; a special token's text is its name, and it has no offsets."""
    names = tokenizer.convert_ids_to_tokens(ids)
    return [
        {"id": token, "text": name, "special": True, "start": None, "stop": None}
        if is_special
        else {"id": token, "text": text[start:stop], "special": False, "start": start, "stop": stop}
        for token, name, (start, stop), is_special in zip(ids, names, offsets, special, strict=True)
    ]


def _offsets_tokenizer(backend: Backend) -> Any:
    """The fast tokenizer the backend counts tokens with.

    The `Backend` contract has no tokenize hook. The transformers-based backends keep the
    tokenizer `load_tokenizer` loaded for counting (`_counter`) and say what text they
    encode (`prompted_texts`); a fast (Rust) tokenizer gives the ids, character offsets
    and special-token mask that TEI's tokens carry. Others (the hash backend counts words
    and has no vocabulary; remote APIs) cannot list tokens honestly.
    """
    tokenizer = getattr(backend, "_counter", None)
    if not getattr(tokenizer, "is_fast", False) or not hasattr(backend, "prompted_texts"):
        raise TeiError(
            f"a {backend.kind} backend has no tokenizer that can list tokens with offsets",
            "Tokenizer",
        )
    return tokenizer


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
        # The configured dtype (`auto`: each replica's device decides); backends without
        # the option return float32 vectors.
        model_dtype=str(getattr(backend.options, "dtype", "float32")),
        model_type={"embedding": {"pooling": str(identity.get("pooling", "unknown"))}},
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
