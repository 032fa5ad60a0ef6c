"""The pure-ASGI guard in front of every route of `qihuang serve`: Bearer keys (all paths but the public ones) and
a request-body cap that also counts chunked bodies as they arrive; errors in the OpenAI format."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from qihuang.serve.protocol import error_body

MAX_BODY = 1_000_000
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


PUBLIC_PATHS = ("/health", "/")
"""Answered without an API key: liveness and the web page (its assets under /static/ too); the API is not."""


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


async def _read_capped(receive: Callable[[], Awaitable[Any]]) -> list[Any] | None:
    """The request-body messages of a body without Content-Length (chunked), counted as they arrive; None as soon
    as more than MAX_BODY bytes came (the rest is never read)."""
    messages: list[Any] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > MAX_BODY:
            return None
        if not message.get("more_body", False):
            return messages


class GuardMiddleware:
    """Pure ASGI: Bearer-key check (all paths but the public ones) and a body-size cap, before any routing; a
    chunked body is counted as it arrives and refused (413) once past the cap, before it is buffered."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if self.keys and not _is_public(scope.get("path", "")):
            auth = headers.get("authorization", b"")
            token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
            if not token or not any(hmac.compare_digest(token, k) for k in self.keys):
                resp = _error(401, "Missing or invalid API key (send 'Authorization: Bearer <key>')",
                              "authentication_error", code="invalid_api_key")
                resp.headers["WWW-Authenticate"] = "Bearer"
                await resp(scope, receive, send)
                return
        too_large = _error(413, f"request body must be at most {MAX_BODY} bytes", code="body_too_large")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_BODY:
                await too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        buffered = await _read_capped(receive)  # no Content-Length: chunked (or no body)
        if buffered is None:
            too_large.headers["Connection"] = "close"
            await too_large(scope, receive, send)
            return

        async def replay() -> Any:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)
