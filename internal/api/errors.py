"""One error shape for every 4xx/5xx, ``{"error": {"code", "message", "details"}}``, and
the single place where domain errors (of :mod:`pkg.celery_task` and
:mod:`internal.services.errors`) become HTTP statuses."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from internal.services.errors import InvalidInputError
from internal.services.history import HistoryNotFoundError, HistoryUnavailableError
from pkg.celery_task import (
    BrokerUnavailableError,
    DeadLetterNotFoundError,
    DeadLetterNotResubmittableError,
    InvalidRequestError,
    PeriodicTaskConflictError,
    PeriodicTaskNotFoundError,
    StoreFullError,
    TaskIdInUseError,
    UnknownTaskError,
)

__all__ = ["ErrorBody", "ErrorDetail", "error_body", "install_error_handlers"]

logger = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    """Error fields."""

    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorDetail


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message, "details": details}}


def _response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _unavailable(code: str, what: str) -> JSONResponse:
    """A 503 saying ``what`` is wrong, with ``Retry-After`` (the request may simply be retried)."""
    return _response(503, code, f"{what}; retry later", None, {"Retry-After": "5"})


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "service_unavailable",
}


def _field_of(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; services and routes never build error responses."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = []
        for err in exc.errors():
            item = {"field": _field_of(tuple(err.get("loc", ()))), "message": err.get("msg", "invalid")}
            if err.get("type") == "json_invalid":
                item["message"] = f"invalid JSON: {err.get('ctx', {}).get('error', 'cannot be parsed')}"
            details.append(item)
        fields = ", ".join(sorted({d["field"] for d in details}))
        return _response(422, "validation_error", f"invalid request: check {fields}", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return _response(exc.status_code, code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(UnknownTaskError)
    async def _unknown_task(request: Request, exc: UnknownTaskError) -> JSONResponse:
        return _response(404, "unknown_task", f"unknown task {exc.task_name!r}", {"task": exc.task_name})

    @app.exception_handler(PeriodicTaskNotFoundError)
    async def _no_entry(request: Request, exc: PeriodicTaskNotFoundError) -> JSONResponse:
        return _response(404, "periodic_task_not_found", str(exc), {"name": exc.name})

    @app.exception_handler(DeadLetterNotFoundError)
    async def _no_dead_letter(request: Request, exc: DeadLetterNotFoundError) -> JSONResponse:
        return _response(404, "dead_letter_not_found", str(exc), {"id": exc.entry_id})

    @app.exception_handler(DeadLetterNotResubmittableError)
    async def _not_resubmittable(request: Request, exc: DeadLetterNotResubmittableError) -> JSONResponse:
        return _response(409, "conflict", str(exc), {"id": exc.entry_id})

    @app.exception_handler(PeriodicTaskConflictError)
    async def _conflict(request: Request, exc: PeriodicTaskConflictError) -> JSONResponse:
        return _response(409, "conflict", str(exc), {"name": exc.name})

    @app.exception_handler(TaskIdInUseError)
    async def _task_id_in_use(request: Request, exc: TaskIdInUseError) -> JSONResponse:
        return _response(409, "task_id_in_use", str(exc), {"task_id": exc.task_id, "reason": exc.reason})

    @app.exception_handler(InvalidRequestError)
    async def _invalid(request: Request, exc: InvalidRequestError) -> JSONResponse:
        return _response(
            422, "validation_error", str(exc), [{"field": exc.field or "body", "message": str(exc)}]
        )

    @app.exception_handler(InvalidInputError)
    async def _invalid_input(request: Request, exc: InvalidInputError) -> JSONResponse:
        details = None if exc.field is None else [{"field": exc.field, "message": exc.message}]
        return _response(422, "validation_error", exc.message, details)

    @app.exception_handler(BrokerUnavailableError)
    async def _broker_down(request: Request, exc: BrokerUnavailableError) -> JSONResponse:
        logger.warning("broker unavailable: %s", exc)
        return _unavailable("broker_unavailable", "the task broker or result store is unreachable")

    @app.exception_handler(StoreFullError)
    async def _store_full(request: Request, exc: StoreFullError) -> JSONResponse:
        logger.warning("store full: %s", exc)
        return _unavailable(
            "store_full", "the task store (Redis) is out of memory and refuses writes; nothing was sent"
        )

    # Task history (issue 11)
    @app.exception_handler(HistoryNotFoundError)
    async def _no_history(request: Request, exc: HistoryNotFoundError) -> JSONResponse:
        return _response(404, "not_found", str(exc), {"task_id": exc.task_id})

    @app.exception_handler(HistoryUnavailableError)
    async def _history_down(request: Request, exc: HistoryUnavailableError) -> JSONResponse:
        logger.warning("history database unavailable: %s", exc)
        return _unavailable("database_unavailable", "the history database is unreachable")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return _response(500, "internal_error", "internal error; see the server log")
