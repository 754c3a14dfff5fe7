"""Bearer authentication: the scheme is case-insensitive (RFC 7235), the token is not."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from internal.api.middleware import BearerAuthMiddleware

TOKEN = "s3cret-token-0123456789"


def _get(path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """GET ``path`` through the middleware in front of a trivial app (in process)."""

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/api/v1/queues", hello), Route("/healthz", hello)])
    transport = httpx.ASGITransport(app=BearerAuthMiddleware(app, token=TOKEN))

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get(path, headers=headers)

    return asyncio.run(call())


@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"bEaReR {TOKEN}", f"Bearer  {TOKEN} "],
)
def test_any_case_of_the_scheme_is_accepted(header: str) -> None:
    response = _get("/api/v1/queues", {"Authorization": header})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing bearer token"),
        ("", "missing bearer token"),
        ("Bearer", "invalid bearer token"),
        ("Bearer ", "invalid bearer token"),
        ("Bearer wrong-token", "invalid bearer token"),
        (f"Bearer {TOKEN.upper()}", "invalid bearer token"),
        (f"Bearer {TOKEN}x", "invalid bearer token"),
        (f"Basic {TOKEN}", "invalid bearer token"),
        (f"Bearerx {TOKEN}", "invalid bearer token"),
        (TOKEN, "invalid bearer token"),
    ],
)
def test_wrong_missing_or_other_scheme_is_401(header: str | None, message: str) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = _get("/api/v1/queues", headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"] == {"code": "unauthorized", "message": message, "details": None}


def test_healthz_needs_no_token() -> None:
    assert _get("/healthz").status_code == 200
