"""ASGI middleware of the router's HTTP app: the request-body size limit, and JSON for
bodies that do not say what they are."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedserve.errors import EmbedServeError, PayloadTooLarge


class RequestBodyMiddleware:
    """ASGI middleware answering 413 for bodies over a limit, declared or streamed, and
    reading form-encoded or untyped bodies as JSON.

    The body is read up front (embedding requests are buffered anyway) and replayed to
    the app, so an oversized body never reaches request parsing. `curl -d '{...}'` sends
    `application/x-www-form-urlencoded`; users expect it to work as it does with other
    embedding servers. (This opens no CSRF hole: credentials are Bearer headers, never
    cookies.)
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        render_error: Callable[[Scope, EmbedServeError], Response],
    ) -> None:
        """Accept bodies of at most `max_bytes`; `render_error` makes the 413 in the error
        shape of the request's API."""
        self.app = app
        self.max_bytes = max_bytes
        self.render_error = render_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                await self._reject(scope, receive, send)
                return
        scope = _as_json(scope)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 413 in the error shape of the request's API."""
        error = PayloadTooLarge(
            f"the request body is larger than the limit of {self.max_bytes} bytes"
        )
        await self.render_error(scope, error)(scope, receive, send)


_FORM_TYPE = b"application/x-www-form-urlencoded"


def _as_json(scope: Scope) -> Scope:
    """The scope with a missing or form-encoded content type replaced by JSON."""
    content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
    if content_type and not content_type.startswith(_FORM_TYPE):
        return scope
    headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
