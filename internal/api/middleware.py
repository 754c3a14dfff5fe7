"""ASGI middleware: request metrics, bearer-token auth and a request body size limit."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from internal.api.errors import error_body
from internal.api.metrics import Metrics

__all__ = ["BearerAuthMiddleware", "BodySizeLimitMiddleware", "MetricsMiddleware", "PUBLIC_PATHS"]

#: Paths served without a token even when ``API_TOKEN`` is set.
PUBLIC_PATHS = frozenset({"/healthz", "/api/v1/healthz"})
#: Paths that check ``API_TOKEN`` themselves (the dashboard: login form and session cookie).
SELF_AUTHENTICATED_PREFIX = "/dashboard"


async def _reject(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> None:
    await JSONResponse(error_body(code, message), status_code=status, headers=headers)(scope, receive, send)


class MetricsMiddleware:
    """Observes every HTTP request's latency by method, route template and status.
    ``routes`` maps each endpoint to its full path template; unknown methods and
    statuses are labelled ``other`` (see :class:`Metrics`), so label sets stay bounded."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: dict[Callable[..., Any], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            template = self.routes.get(scope.get("endpoint"), "unmatched")  # type: ignore[arg-type]
            self.metrics.observe_request(
                method=scope["method"], route=template, status=status, seconds=time.perf_counter() - started
            )


class BearerAuthMiddleware:
    """With a token configured, every path but ``/healthz`` needs
    ``Authorization: Bearer <token>``. The scheme is case-insensitive (RFC 7235:
    ``bearer`` and ``BEARER`` work too); the token is compared in constant time."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            self.expected is None
            or scope["type"] != "http"
            or path in PUBLIC_PATHS
            or _self_authenticated(path)
        ):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not _bearer_matches(given, self.expected):
            message = "missing bearer token" if not given else "invalid bearer token"
            await _reject(scope, receive, send, 401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)


def _self_authenticated(path: str) -> bool:
    return path == SELF_AUTHENTICATED_PREFIX or path.startswith(SELF_AUTHENTICATED_PREFIX + "/")


def _bearer_matches(header: bytes, expected: bytes) -> bool:
    """True if ``header`` is ``<scheme> <token>`` with the scheme ``bearer`` in any
    case and the token equal to ``expected`` (constant-time comparison)."""
    scheme, _, token = header.strip().partition(b" ")
    # Compare the token even when the scheme is wrong, so timing says nothing about it.
    same_token = hmac.compare_digest(token.strip(), expected)
    return scheme.lower() == b"bearer" and same_token


class BodySizeLimitMiddleware:
    """Answers 413 when a request body exceeds ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        # Read the body up front (bounded), so an oversized chunked body is refused
        # before the application sees any of it.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                chunks.clear()
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            more = message.get("more_body", False)
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _reject(
            scope,
            receive,
            send,
            413,
            "payload_too_large",
            f"request body is larger than {self.max_bytes} bytes",
        )


def _replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[MutableMapping[str, Any]]]:
    sent = False

    async def replay() -> MutableMapping[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
