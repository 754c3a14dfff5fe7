"""The dashboard: server-rendered pages under ``/dashboard`` (Jinja2, autoescaped, no
JavaScript), behind the API's token, with CSRF-checked actions.

Pages call the services directly with the objects the API app holds on its state
(client, database engine, settings); nothing goes over HTTP to the API itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import FastAPI
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from internal.dashboard import views
from internal.dashboard.auth import COOKIE, SESSION_SECONDS, Session, Sessions
from internal.services.errors import InvalidInputError
from internal.services.history import HistoryUnavailableError
from pkg.celery_task import BrokerUnavailableError, TaskSystemError

__all__ = ["CSP", "PREFIX", "create_dashboard", "mount_dashboard"]

logger = logging.getLogger(__name__)

PREFIX = "/dashboard"
HERE = Path(__file__).resolve().parent
FLASH_COOKIE = "tasksys_dashboard_flash"
#: No script may run, no plugin, no frame; styles and images from us only; forms post here only.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
#: Largest action form accepted (edited arguments included).
MAX_FORM_BYTES = 256 * 1024

Handler = Callable[[Request, Session], Awaitable[Response]]
Action = Callable[[Request, Session, dict[str, str]], Awaitable[Response]]


class SecurityHeaders:
    """Adds the CSP and its companions to every dashboard response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = views.pretty_json
    env.filters["compact"] = views.compact_json
    env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    return env


class Dashboard:
    """Routes, rendering and auth of the dashboard for one API app."""

    def __init__(self, parent: FastAPI) -> None:
        self.parent = parent
        settings = parent.state.settings
        token = settings.api.token.get_secret_value() if settings.api.token else None
        self.sessions = Sessions(token)
        self.env = _templates()

    # -- plumbing --------------------------------------------------------------------

    def ctx(self) -> views.Context:
        """The services' inputs, read from the API app's state (set by its lifespan);
        ``dashboard_history`` is the task history's :class:`views.HistoryReader`, if any."""
        state = self.parent.state
        return views.Context(
            client=state.celery_client,
            engine=getattr(state, "db_engine", None),
            settings=state.settings,
            history=getattr(state, "dashboard_history", None),
        )

    def render(
        self, request: Request, session: Session | None, name: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        """A page, with the session's CSRF token and any flash message."""
        flash = _read_flash(request.cookies.get(FLASH_COOKIE))
        html = self.env.get_template(name).render(
            prefix=PREFIX,
            csrf=self.sessions.csrf_token(session) if session else "",
            logged_in=session is not None and not self.sessions.open,
            flash=flash,
            timezone=self.parent.state.settings.app.timezone,
            **values,
        )
        response = HTMLResponse(html, status_code=status)
        if flash is not None:
            response.delete_cookie(FLASH_COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")
        return response

    def _set_session(self, response: Response) -> Session:
        session, value = self.sessions.issue()
        response.set_cookie(
            COOKIE,
            value,
            max_age=SESSION_SECONDS,
            path=PREFIX,
            secure=True,
            httponly=True,
            samesite="strict",
        )
        return session

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A GET page: a valid session, or (open mode) a new one, or off to the login form."""

        async def endpoint(request: Request) -> Response:
            session = self.sessions.check(request.cookies.get(COOKIE))
            if session is None and not self.sessions.open:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)
            fresh: Response | None = None
            if session is None:
                fresh = Response()
                session = self._set_session(fresh)
            response = await self._guarded(request, session, handler)
            if fresh is not None:
                response.headers.append("set-cookie", fresh.headers["set-cookie"])
            return response

        return endpoint

    def action(self, handler: Action) -> Callable[[Request], Awaitable[Response]]:
        """A POST action: same-origin, a valid session and its CSRF token, or 403."""

        async def endpoint(request: Request) -> Response:
            if not _same_origin(request):
                return self.refuse(request, "cross-origin request refused")
            session = self.sessions.check(request.cookies.get(COOKIE))
            if session is None:
                return self.refuse(request, "no valid session: log in again", status=401)
            form = await _form(request)
            if form is None:
                return self.refuse(request, "the form could not be read", status=400)
            if not self.sessions.csrf_matches(session, form.get("csrf")):
                return self.refuse(request, "missing or wrong CSRF token: reload the page and try again")
            return await self._guarded(request, session, lambda r, s: handler(r, s, form))

        return endpoint

    async def _guarded(self, request: Request, session: Session, handler: Handler) -> Response:
        try:
            return await handler(request, session)
        except BrokerUnavailableError as exc:
            return self.render(request, session, "error.html", 503, title="Unavailable", message=str(exc))
        except views.NotFound as exc:
            return self.render(request, session, "error.html", 404, title="Not found", message=str(exc))
        except HistoryUnavailableError as exc:
            return self.render(request, session, "error.html", 503, title="Unavailable", message=str(exc))
        except InvalidInputError as exc:
            return self.render(request, session, "error.html", 400, title="Refused", message=str(exc))

    def refuse(self, request: Request, message: str, status: int = 403) -> HTMLResponse:
        """An error page for a refused action (no session data in it)."""
        return self.render(request, None, "error.html", status, title="Refused", message=message)

    # -- login -----------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        """The token prompt (open mode: straight to the overview)."""
        if self.sessions.open:
            return RedirectResponse(f"{PREFIX}/", status_code=303)
        return self.render(request, None, "login.html", next=_safe_next(request.query_params.get("next")))

    async def login(self, request: Request) -> Response:
        """Exchange the token for a session cookie."""
        if not _same_origin(request):
            return self.refuse(request, "cross-origin request refused")
        form = await _form(request) or {}
        target = _safe_next(form.get("next"))
        if not self.sessions.token_matches(form.get("token", "")):
            return self.render(request, None, "login.html", 401, next=target, error="wrong token")
        response = RedirectResponse(target, status_code=303)
        self._set_session(response)
        return response

    async def logout(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """Drop the session cookie."""
        response = RedirectResponse(f"{PREFIX}/login", status_code=303)
        response.delete_cookie(COOKIE, path=PREFIX, secure=True, httponly=True, samesite="strict")
        return response

    # -- pages -----------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        """Queues, throughput, failure rate and workers."""
        hours = views.bounded_int(request.query_params.get("hours"), 1, 1, 24 * 14)
        data = await views.overview(self.ctx(), hours=hours)
        return self.render(request, session, "overview.html", page="overview", hours=hours, **data)

    async def failures(self, request: Request, session: Session) -> Response:
        """Dead letters grouped by fingerprint."""
        data = await views.failures(self.ctx())
        return self.render(request, session, "failures.html", page="failures", **data)

    async def failure_edit(self, request: Request, session: Session) -> Response:
        """One dead letter with its arguments in an editable form."""
        entry = await views.dead_letter(self.ctx(), request.path_params["entry_id"])
        return self.render(request, session, "failure_edit.html", page="failures", entry=entry)

    async def schedules(self, request: Request, session: Session) -> Response:
        """Every periodic entry with its next fires and past-fire flags."""
        data = await views.schedules(self.ctx())
        return self.render(request, session, "schedules.html", page="schedules", **data)

    async def tasks(self, request: Request, session: Session) -> Response:
        """Task history, filtered and searched."""
        data = await views.tasks(self.ctx(), dict(request.query_params))
        return self.render(request, session, "tasks.html", page="tasks", **data)

    async def task(self, request: Request, session: Session) -> Response:
        """One task: timeline, arguments, result or error, children, actions."""
        data = await views.task(self.ctx(), request.path_params["task_id"])
        return self.render(request, session, "task.html", page="tasks", **data)

    # -- actions ---------------------------------------------------------------------

    async def _do(self, back: str, work: Callable[[], Awaitable[str]]) -> Response:
        response = RedirectResponse(back, status_code=303)
        try:
            _set_flash(response, "ok", await work())
        except (InvalidInputError, TaskSystemError, ValueError, views.NotFound) as exc:
            if isinstance(exc, BrokerUnavailableError):
                raise
            _set_flash(response, "error", str(exc))
        return response

    async def resubmit_group(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """Send every entry of one fingerprint group again."""
        return await self._do(
            f"{PREFIX}/failures", lambda: views.resubmit_group(self.ctx(), form.get("fingerprint", ""))
        )

    async def resubmit_entry(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """Send one entry again, as it was (same id)."""
        return await self._do(
            f"{PREFIX}/failures", lambda: views.resubmit_entry(self.ctx(), form.get("entry_id", ""))
        )

    async def resubmit_edited(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """Send one entry's task with edited arguments, as a new task linked to the old one."""
        entry_id = request.path_params["entry_id"]
        return await self._do(
            f"{PREFIX}/failures",
            lambda: views.resubmit_edited(self.ctx(), entry_id, form.get("args", ""), form.get("kwargs", "")),
        )

    async def toggle_schedule(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """Enable or disable one periodic entry."""
        return await self._do(
            f"{PREFIX}/schedules",
            lambda: views.toggle_schedule(self.ctx(), form.get("name", ""), form.get("enabled") == "1"),
        )

    async def revoke(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """Revoke (and stop) a task."""
        task_id = request.path_params["task_id"]
        return await self._do(
            f"{PREFIX}/tasks/{quote(task_id, safe='')}",
            lambda: views.revoke(self.ctx(), task_id, terminate=form.get("terminate") == "1"),
        )

    async def resubmit_task(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """Send a task from history again, as a new task linked to it."""
        task_id = request.path_params["task_id"]
        return await self._do(f"{PREFIX}/tasks", lambda: views.resubmit_task(self.ctx(), task_id))

    def routes(self) -> list[Route | Mount]:
        """Every route of the dashboard."""
        return [
            Route("/", self.page(self.overview)),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.action(self.logout), methods=["POST"]),
            Route("/failures", self.page(self.failures)),
            Route("/failures/resubmit-group", self.action(self.resubmit_group), methods=["POST"]),
            Route("/failures/resubmit", self.action(self.resubmit_entry), methods=["POST"]),
            Route("/failures/{entry_id}/edit", self.page(self.failure_edit), methods=["GET"]),
            Route("/failures/{entry_id}/edit", self.action(self.resubmit_edited), methods=["POST"]),
            Route("/schedules", self.page(self.schedules)),
            Route("/schedules/toggle", self.action(self.toggle_schedule), methods=["POST"]),
            Route("/tasks", self.page(self.tasks)),
            Route("/tasks/{task_id}", self.page(self.task), methods=["GET"]),
            Route("/tasks/{task_id}/revoke", self.action(self.revoke), methods=["POST"]),
            Route("/tasks/{task_id}/resubmit", self.action(self.resubmit_task), methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]


def create_dashboard(parent: FastAPI) -> ASGIApp:
    """The dashboard app for ``parent`` (the API app whose state it reads)."""
    dashboard = Dashboard(parent)
    app = Starlette(routes=dashboard.routes())

    async def not_found(request: Request, exc: Exception) -> Response:
        return dashboard.render(request, None, "error.html", 404, title="Not found", message="no such page")

    app.add_exception_handler(404, not_found)
    return SecurityHeaders(app)


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/dashboard`` of ``app``."""
    app.mount(PREFIX, create_dashboard(app), name="dashboard")


def _same_origin(request: Request) -> bool:
    """False when the browser says the form came from another origin."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def _form(request: Request) -> dict[str, str] | None:
    """The url-encoded form of a POST (bounded), or ``None`` if it cannot be read."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return None
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=50, strict_parsing=False
        )
    except (UnicodeDecodeError, ValueError):
        return None
    return dict(pairs)


def _safe_next(value: str | None) -> str:
    """A redirect target inside the dashboard only (no open redirects)."""
    if not value or not value.startswith(PREFIX) or "//" in value or "\\" in value:
        return f"{PREFIX}/"
    return value


def _set_flash(response: Response, kind: str, text: str) -> None:
    raw = json.dumps({"kind": kind, "text": text[:500]}).encode()
    value = base64.urlsafe_b64encode(raw).decode()
    response.set_cookie(
        FLASH_COOKIE, value, max_age=60, path=PREFIX, secure=True, httponly=True, samesite="strict"
    )


def _read_flash(value: str | None) -> dict[str, str] | None:
    if not value or len(value) > 2000:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(value.encode()))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {"kind": "error" if data.get("kind") == "error" else "ok", "text": str(data.get("text", ""))[:500]}
