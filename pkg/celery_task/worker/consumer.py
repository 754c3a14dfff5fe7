"""The worker's consumer: refused and unrunnable messages are dead-lettered, and the
worker keeps consuming after any message it cannot run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis
from celery.exceptions import InvalidTaskError
from celery.worker import loops
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.exceptions import OperationalError as KombuOperationalError

from .._compat import guard_process_task, task_ready
from .._deadletter import MAX_TEXT, dead_letters_for, error_of
from .._errors import InvalidRequestError
from .._limits import MAX_RECEIVED_DEPTH, check_json_value
from .flow import FlowGate
from .hubloop import run_hub_on_loop
from .messages import REFUSED_HEADER

__all__ = ["INFRASTRUCTURE_ERRORS", "Consumer"]

logger = logging.getLogger(__name__)


#: Errors of the infrastructure (Redis, the broker), not of the message: a message that
#: meets one of these is returned to the queue, never dead-lettered.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    redis.RedisError,
    KombuOperationalError,
    ConnectionError,
    TimeoutError,
)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's worker consumer, which also dead-letters the messages it refuses:
    unregistered task names, invalid messages and bodies it cannot decode (including
    content types it does not accept, such as pickle). Celery logs and drops them.

    It also survives any message it cannot run. Celery lets an unexpected error while
    reading a message or handing it to the pool (a body nested too deep to pickle, a
    header of the wrong type) escape its event loop, which stops the worker; the
    message is then restored and stops the next one. Here such a message is
    dead-lettered with reason ``unrunnable`` and acknowledged, and the worker goes on;
    if the error came from Redis or the broker instead, the message is requeued.
    """

    def __init__(self, on_task_request: Callable[[Any], Any], *args: Any, **kwargs: Any) -> None:
        controller = kwargs.get("controller")
        self.flow_gate: FlowGate | None = None
        if controller is not None:
            self.flow_gate = FlowGate(controller.app, self)
            on_task_request = self.flow_gate.wrap(controller, on_task_request)
            on_task_request = guard_process_task(
                controller, on_task_request, self._refuse_request, check=_check_arguments
            )
            self.flow_gate.dispatch_with(on_task_request)
        super().__init__(on_task_request, *args, **kwargs)
        if getattr(self, "loop", None) is loops.asynloop and getattr(self.pool, "hub_on_loop", False):
            self.loop = run_hub_on_loop(self.pool)

    def shutdown(self) -> None:
        """Celery's shutdown, then the flow slots still held are given back (their
        messages return to the queue)."""
        super().shutdown()
        if self.flow_gate is not None:
            self.flow_gate.release_all()

    def _refuse_request(self, request: Any, exc: Exception) -> None:
        """A request the pool did not take: requeue it if Redis or the broker failed,
        otherwise dead-letter it (``unrunnable``) and acknowledge it."""
        task_ready(request)
        if request.acknowledged:
            logger.error("task %s failed in the worker after its ack", request.id, exc_info=exc)
            return
        if isinstance(exc, INFRASTRUCTURE_ERRORS):
            logger.warning(
                "could not hand task %s to the pool (%s: %s); returning it to the queue",
                request.id,
                type(exc).__name__,
                exc,
            )
            request.reject(requeue=True)
            return
        reason = "invalid" if isinstance(exc, InvalidTaskError) else "unrunnable"
        logger.error(
            "task %s[%s] cannot be run (%s: %s); dead-lettered as %s",
            request.name,
            request.id,
            type(exc).__name__,
            exc,
            reason,
        )
        self._dead_letter(request.message, None, reason, exc)
        request.acknowledge()

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Celery's handler for each delivered message, never raising out of the event
        loop for a message it cannot read (connection errors still propagate: the
        consumer reconnects)."""
        handler = super().create_task_handler(*args, **kwargs)
        # kombu's Redis transport counts KeyError as a connection error; here it means a
        # message without a field Celery needs (no ``id``), which a reconnect would only
        # redeliver, forever.
        connection_errors = tuple(e for e in self.connection_errors if not issubclass(e, LookupError))

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:  # a loop boundary: the worker must keep consuming
                self._refuse_message(message, exc)
                return None

        return on_task_received

    def _refuse_message(self, message: Any, exc: Exception) -> None:
        if getattr(message, "acknowledged", False):
            logger.error("error after a message was acknowledged or rejected", exc_info=True)
            return
        if isinstance(exc, INFRASTRUCTURE_ERRORS):
            logger.warning(
                "could not take a message (%s: %s); returning it to the queue", type(exc).__name__, exc
            )
            message.reject_log_error(logger, self.connection_errors, requeue=True)
            return
        logger.error(
            "refusing a message that cannot be run (%s: %s); dead-lettered as unrunnable",
            type(exc).__name__,
            exc,
            exc_info=True,
        )
        self._dead_letter(message, None, "unrunnable", exc)
        message.ack_log_error(logger, self.connection_errors)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, body, "unregistered", exc)
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._dead_letter(message, body, "invalid", exc)
        super().on_invalid_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(message, body, "invalid", None)
        super().on_unknown_message(body, message)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._dead_letter(message, None, "undecodable", exc)
        super().on_decode_error(message, exc)

    def _dead_letter(self, message: Any, body: Any, reason: str, exc: Exception | None) -> None:
        headers = getattr(message, "headers", None)
        headers = headers if isinstance(headers, dict) else {}
        if body is None and reason not in ("undecodable", "unrunnable"):
            try:
                body = message.decode()  # Celery hands over no body for unregistered tasks
            except Exception:  # the entry is recorded without arguments then
                body = None
        args = kwargs = None
        if (
            isinstance(body, list | tuple)
            and len(body) >= 2
            and isinstance(body[0], list | tuple)
            and isinstance(body[1], dict)
        ):
            args, kwargs = list(body[0]), body[1]
        raw = getattr(message, "body", None)
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        error = error_of(exc)
        refused = headers.get(REFUSED_HEADER)
        task_id, task = headers.get("id"), headers.get("task")
        if isinstance(refused, dict):  # the transport could not read it: say why
            error = {"type": str(refused.get("type")), "message": str(refused.get("message"))}
            task_id, task = refused.get("id"), refused.get("task")
        entry = {
            "task_id": task_id if isinstance(task_id, str) else None,
            "task": task if isinstance(task, str) else None,
            "args": args,
            "kwargs": kwargs,
            "queue": _routing_key(message),
            "reason": reason,
            "error": error,
            "content_type": getattr(message, "content_type", None),
            "body": None if args is not None else (raw[:MAX_TEXT] if isinstance(raw, str) else None),
            "resubmittable": args is not None and isinstance(task, str) and reason != "unrunnable",
        }
        letters = dead_letters_for(self.app)
        try:
            try:
                letters.record(entry)
            except (ValueError, TypeError, RecursionError):  # arguments JSON cannot hold
                body_text = raw[:MAX_TEXT] if isinstance(raw, str) else None
                letters.record(
                    {**entry, "args": None, "kwargs": None, "body": body_text, "resubmittable": False}
                )
        except redis.RedisError:
            logger.error("could not dead-letter a refused message (%s)", reason, exc_info=True)


def _check_arguments(request: Any) -> None:
    """Refuse arguments of the wrong shape before a pool process calls ``task(*args,
    **kwargs)`` with them (a dict as args would pass its keys, for example), or nested
    deeper than :data:`MAX_RECEIVED_DEPTH`."""
    if not isinstance(request.id, str) or not request.id:
        raise InvalidTaskError(f"the task id must be a non-empty string, not {request.id!r:.100}")
    if not isinstance(request.args, list | tuple):
        raise InvalidTaskError(f"task args must be a list, not {type(request.args).__name__}")
    if not isinstance(request.kwargs, dict):
        raise InvalidTaskError(f"task kwargs must be an object, not {type(request.kwargs).__name__}")
    try:
        check_json_value(
            [request.args, request.kwargs], field="arguments", max_depth=MAX_RECEIVED_DEPTH, finite=False
        )
    except InvalidRequestError as exc:
        raise InvalidTaskError(str(exc)) from None
    retries = request.request_dict.get("retries", 0)
    if retries is not None and not (type(retries) is int and retries >= 0):
        raise InvalidTaskError(f"retries must be a count, not {retries!r:.100}")
    limits = request.time_limits
    if not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(limit is None or _is_duration(limit) for limit in limits)
    ):
        raise InvalidTaskError(f"timelimit must be [hard, soft] in seconds or null, not {limits!r:.100}")


def _is_duration(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < float("inf")


def _routing_key(message: Any) -> str | None:
    info = getattr(message, "delivery_info", None)
    key = info.get("routing_key") if isinstance(info, dict) else None
    return key if isinstance(key, str) else None
