"""The router's HTTP app: routes, and every error in the OpenAI error envelope (TEI's
error body on TEI's routes, `tei`).

Each embedding route is a thin adapter: it parses its API's body into the engine's
`ParsedRequest`, makes one `engine.embed` call, and renders the result (`responses`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from embedserve import __version__
from embedserve.backend import InputType, OutputKind
from embedserve.cli.about import AboutReport, about_report
from embedserve.config import ServerConfig
from embedserve.deployments.engine import ParsedRequest
from embedserve.deployments.middleware import RequestBodyMiddleware
from embedserve.deployments.responses import embed_response, embeddings_response
from embedserve.deployments.tei import install_tei_routes
from embedserve.deployments.tei_errors import is_tei_route, tei_error_response
from embedserve.errors import (
    EmbedServeError,
    InvalidRequest,
    RequestValidationFailed,
    clip,
)
from embedserve.serving.auth import ApiKey
from embedserve.serving.schemas import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorEnvelope,
    ModelList,
)
from embedserve.serving.validation import RawItem

if TYPE_CHECKING:
    from embedserve.config import EmbedServeConfig
    from embedserve.deployments.catalog import BackendCatalog
    from embedserve.deployments.engine import EmbeddingEngine
    from embedserve.serving.auth import KeyStore


class RouterParts(Protocol):
    """What the routes use of a router replica (`EmbeddingRouter`)."""

    @property
    def config(self) -> EmbedServeConfig: ...
    @property
    def keys(self) -> KeyStore: ...
    @property
    def catalog(self) -> BackendCatalog: ...
    @property
    def engine(self) -> EmbeddingEngine: ...


def create_http_app(router: RouterParts) -> FastAPI:
    """The FastAPI app of one router replica."""
    # `/docs` and `/redoc` load their scripts from this server: from a CDN (FastAPI's
    # default) they are blank pages on a host without internet access.
    app = FastAPIOffline(
        title="embedserve",
        version=__version__,
        description="Embeddings over HTTP: the OpenAI API shape plus vector-space metadata, "
        "and TEI's routes.",
    )
    install_error_handlers(app)
    server = router.config.server
    app.add_middleware(
        RequestBodyMiddleware, max_bytes=server.max_request_bytes, render_error=render_error
    )

    api_key = _api_key_dependency(router)
    engine, catalog = router.engine, router.catalog

    @app.post(
        "/v1/embeddings",
        response_model=EmbeddingsResponse,
        responses=_errors(400, 401, 404, 413, 422, 429, 503, 504),
    )
    async def create_embeddings(
        request: EmbeddingsRequest, key: ApiKey | None = Depends(api_key)
    ) -> JSONResponse:
        """Embed texts (OpenAI-compatible), with embedserve's metadata in the answer."""
        result = await engine.embed(openai_request(request), key)
        return embeddings_response(result, request.encoding_format)

    @app.post(
        "/v1/embed",
        response_model=EmbedResponse,
        responses=_errors(400, 401, 404, 413, 422, 429, 503, 504),
        openapi_extra=_EMBED_REQUEST_BODY,
    )
    async def embed(http_request: Request, key: ApiKey | None = Depends(api_key)) -> JSONResponse:
        """Embed texts and images (JSON with base64 images, or a multipart upload whose
        `text` and `image` parts are the items in order): dense, sparse and multi-vector
        outputs per item, with the vector metadata."""
        request, uploads = await read_embed_request(http_request, server)
        parsed = native_request(request, uploads)
        result = await engine.embed(parsed, key)
        return embed_response(
            result, parsed.outputs, request.encoding_format, request.sparse_tokens
        )

    @app.get(
        "/v1/models",
        response_model=ModelList,
        dependencies=[Depends(api_key)],
        responses=_errors(401),
    )
    async def list_models() -> ModelList:
        """Every public model with its chain, spaces, dimensions, modalities and limits."""
        return await catalog.model_list()

    @app.get(
        "/v1/about",
        response_model=AboutReport,
        dependencies=[Depends(api_key)],
        responses=_errors(401),
    )
    async def about() -> dict[str, Any]:
        """Attribution: embedserve's version, each configured model's licence, model card
        and citation, and every installed dependency with its version and licence."""
        return about_report(router.config).model_dump(mode="json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the router answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "A model has no backend that can serve."}})
    async def readyz() -> JSONResponse:
        """Readiness: every model has a backend in its chain that can serve (200), each
        through its primary (`ready`) or some through a fallback (`degraded`); else 503
        (`not ready`). `failed_backends` says why each backend that cannot serve cannot."""
        models = await catalog.serving_backends()
        failed = catalog.failed_backends()
        ready = all(models.values())
        status = "not ready" if not ready else "degraded" if failed else "ready"
        body = {"status": status, "serving_backends": models, "failed_backends": failed}
        return JSONResponse(body, status_code=200 if ready else 503)

    install_tei_routes(app, router, api_key)
    app.openapi = lambda: _openapi_with(app, EmbedRequest)
    return app


def openai_request(request: EmbeddingsRequest) -> ParsedRequest:
    """An OpenAI `/v1/embeddings` body as the engine's request (dense vectors only)."""
    return ParsedRequest(
        model=request.model,
        items=request.input,
        input_type=request.input_type,
        dimensions=request.dimensions,
        truncate=request.truncate,
    )


def native_request(request: EmbedRequest, uploads: list[RawItem] | None) -> ParsedRequest:
    """A `/v1/embed` body as the engine's request; a multipart body's `uploads` are its
    items, in order."""
    return ParsedRequest(
        model=request.model,
        items=request.items if uploads is None else uploads,
        input_type=request.input_type,
        outputs=tuple(dict.fromkeys(request.outputs)),
        dimensions=request.dimensions,
        truncate=request.truncate,
        field="items",
    )


# `/v1/embed` reads its body itself (JSON or multipart), so its schema is declared here.
_EMBED_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/EmbedRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["model"],
                    "additionalProperties": False,
                    "properties": {
                        "model": {"type": "string"},
                        "text": {"type": "array", "items": {"type": "string"}},
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "input_type": {"type": "string", "enum": [t.value for t in InputType]},
                        "outputs": {
                            "type": "array",
                            "items": {"type": "string", "enum": [o.value for o in OutputKind]},
                        },
                        "dimensions": {"type": "integer", "minimum": 1},
                        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                        "truncate": {"type": "boolean"},
                        "sparse_tokens": {"type": "boolean"},
                    },
                }
            },
        },
    }
}
_ITEM_PARTS = ("text", "image")


def _openapi_with(app: FastAPI, *models: type[BaseModel]) -> dict[str, Any]:
    """The app's OpenAPI schema with `models` added to its components."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        app.openapi_schema = schema
    return app.openapi_schema


async def read_embed_request(
    request: Request, server: ServerConfig
) -> tuple[EmbedRequest, list[RawItem] | None]:
    """A `/v1/embed` body: JSON, or multipart whose `text` / `image` parts are the items.

    Returns:
        The request, and for multipart the items in order (texts and image bytes).

    Raises:
        RequestValidationError: the fields do not match `EmbedRequest`.
        InvalidRequest: the body is neither JSON nor readable multipart.
    """
    content_type = request.headers.get("content-type", "")
    try:
        if not content_type.startswith("multipart/form-data"):
            return EmbedRequest.model_validate_json(await request.body()), None
        fields, uploads = await _read_form(request, server.max_inputs_per_request)
        return EmbedRequest.model_validate({**fields, "items": []}), uploads
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


async def _read_form(request: Request, max_items: int) -> tuple[dict[str, Any], list[RawItem]]:
    """The non-item fields of a multipart body, and its items in order."""
    try:
        # More parts than the item limit plus the fields: refused by the parser itself.
        form = await request.form(max_files=max_items + 1, max_fields=max_items + 16)
    except Exception as exc:
        raise InvalidRequest(
            f"the multipart body could not be read: {exc}", code="invalid_multipart"
        ) from None
    fields: dict[str, Any] = {}
    uploads: list[RawItem] = []
    for name, value in form.multi_items():
        if name in _ITEM_PARTS:
            uploads.append(value if isinstance(value, str) else await value.read())
        elif name == "outputs" and isinstance(value, str):
            fields.setdefault("outputs", []).extend(v for v in value.split(",") if v)
        else:
            fields[name] = value
    return fields, uploads


_UNPARSABLE_BODY = "There was an error parsing the body"


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the error statuses a route answers with."""
    return {
        status: {"model": ErrorEnvelope, "description": _STATUS_TEXT[status]} for status in statuses
    }


_STATUS_TEXT = {
    400: "Invalid input (the `param` names the field or item).",
    401: "Missing or unknown API key.",
    404: "Unknown model.",
    413: "Body, item count or token budget too large.",
    422: "The body does not match the schema.",
    429: "The key's rate limit is reached (Retry-After).",
    503: "Every backend failed or is overloaded (Retry-After).",
    504: "The backends or the request ran past their deadline.",
}


def _api_key_dependency(router: RouterParts) -> Callable[..., Awaitable[ApiKey | None]]:
    """The dependency that authenticates a request. Without configured keys it declares
    no security scheme, so the OpenAPI schema says what the server really requires.

    Both are coroutines: FastAPI runs a plain function dependency in its thread pool, a
    thread handoff per request (about 0.5 ms of the router's CPU per 1-text request)."""
    if not router.keys.enabled:

        async def no_key() -> None:
            return None

        return no_key
    bearer = HTTPBearer(auto_error=False, description="An embedserve API key.")

    async def api_key(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    ) -> ApiKey | None:
        return router.keys.authenticate(credentials.credentials if credentials else None)

    return api_key


def error_response(error: EmbedServeError) -> JSONResponse:
    """The OpenAI error envelope with the error's status code and headers."""
    return JSONResponse(error.envelope(), status_code=error.status_code, headers=error.headers)


def render_error(scope: Scope, error: EmbedServeError) -> JSONResponse:
    """An error as the request's API shapes it: TEI's body on TEI's routes, the OpenAI
    envelope on every other."""
    return tei_error_response(error) if is_tei_route(scope) else error_response(error)


def _validation_error(exc: RequestValidationError) -> EmbedServeError:
    first = exc.errors()[0]
    location = [str(part) for part in first["loc"] if part != "body"]
    # OpenAI's `param` names a request parameter: the rest of pydantic's location is a
    # union member (`input.str`) or a list index, not a parameter.
    param = clip(location[0]) if location else None  # an unknown field's name is input
    if first["type"] == "json_invalid":
        return InvalidRequest(
            f"the request body is not valid JSON: {first['msg']}", code="invalid_json"
        )
    where = f" at {param}" if param else ""
    message = f"invalid request{where}: {first['msg']}"
    if len(exc.errors()) > 1:
        message += f" (and {len(exc.errors()) - 1} more problems)"
    return RequestValidationFailed(message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Render every error, including FastAPI's own, in the OpenAI error envelope (in TEI's
    error body on TEI's routes)."""

    @app.exception_handler(EmbedServeError)
    async def _embedserve_error(request: Request, exc: EmbedServeError) -> JSONResponse:
        return render_error(request.scope, exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return render_error(request.scope, _validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:
            # FastAPI's word for a body that is not UTF-8: say what is wrong.
            return render_error(
                request.scope,
                InvalidRequest(
                    "the request body could not be read: it must be JSON in UTF-8",
                    code="invalid_json",
                ),
            )
        # Keep Starlette's headers: a 405 must say which methods are allowed (`Allow`).
        error = EmbedServeError(
            str(exc.detail), code=f"http_{exc.status_code}", headers=dict(exc.headers or {})
        )
        error.status_code = exc.status_code
        error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return render_error(request.scope, error)
