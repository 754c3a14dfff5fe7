"""The shared base task: transient errors retried by Celery's own autoretry, progress
reporting, ``async def`` bodies run on the process's event loop."""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

import celery
import redis.exceptions
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError as KombuOperationalError

from ._compat import thread_request
from ._flow import Limits
from ._loop import run_task_coroutine

__all__ = ["BaseTask", "PermanentError", "TransientError"]

logger = logging.getLogger(__name__)

PROGRESS = "PROGRESS"


class TransientError(Exception):
    """Raise from a task to say "try again later": the base task retries it with backoff."""


class PermanentError(Exception):
    """Raise from a task to fail at once: never retried, whatever its cause."""


#: Marks a ``run`` that :func:`_finishing_awaitables` made, so it is wrapped only once.
_FINISHES_AWAITABLES = "__tasksys_finishes_awaitables__"

#: The (task name, request) of the ``async def`` body running in this asyncio task.
#: Celery keeps a task's request per thread; an async body runs on the loop's thread,
#: where many bodies interleave, so each coroutine carries its own in its context.
_ASYNC_REQUEST: contextvars.ContextVar[tuple[str, Any] | None] = contextvars.ContextVar(
    "tasksys_async_request", default=None
)


class BaseTask(celery.Task):  # type: ignore[misc]
    """Base of every task: Celery's autoretry for transient errors, ``PermanentError``
    never retried, progress reports, and ``async def`` bodies run on the process's loop.

    The retry options are Celery's and mean what Celery documents (``autoretry_for``,
    ``dont_autoretry_for``, ``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``,
    ``max_retries``, ``retry_kwargs``); only the defaults differ. Soft and hard time
    limits come from the app's ``task_soft_time_limit`` and ``task_time_limit``.
    """

    #: The errors retried unless a task sets ``autoretry_for``; a subclass may extend it.
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        TransientError,
        ConnectionError,
        TimeoutError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.OutOfMemoryError,
        KombuOperationalError,
    )
    #: Celery's: the errors retried automatically (by default ``transient_errors``).
    autoretry_for: ClassVar[tuple[type[BaseException], ...]] = transient_errors
    #: Celery's: errors never retried, even when they match ``autoretry_for``.
    dont_autoretry_for: ClassVar[tuple[type[BaseException], ...]] = (PermanentError,)
    max_retries = 3
    #: Celery's: exponential backoff with factor 2 s (2, 4, 8, … s), whole seconds.
    retry_backoff: ClassVar[bool | int] = 2
    #: Celery's: no backoff delay longer than this many (whole) seconds.
    retry_backoff_max: ClassVar[int] = 300
    #: Celery's "full jitter": each delay is drawn from 0 to the backoff delay.
    retry_jitter: ClassVar[bool] = True
    #: Ours: a fixed delay in seconds (sub-second allowed) instead of backoff; setting it
    #: is short for Celery's ``retry_backoff=False, default_retry_delay=<it>``.
    retry_countdown: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Set up each task class before Celery wraps ``run`` with its autoretry."""
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        cls.run = _finishing_awaitables(inspect.getattr_static(cls, "run"))
        if "transient_errors" in own and "autoretry_for" not in own:
            cls.autoretry_for = own["transient_errors"]
        try:
            Limits.of_task(cls)
        except ValueError as exc:
            raise TypeError(f"task {cls.__name__}: {exc}") from None
        if own.get("retry_countdown") is not None:
            if "retry_backoff" in own:
                raise TypeError(f"task {cls.__name__}: give retry_countdown or retry_backoff, not both")
            cls.retry_backoff = False
            cls.default_retry_delay = own["retry_countdown"]

    def _get_request(self) -> Any:
        """Celery's request of the running task; inside an ``async def`` body, the
        request of that body's own run (also when many run at once on one loop)."""
        bound = _ASYNC_REQUEST.get()
        if bound is not None and bound[0] == self.name:
            return bound[1]
        return thread_request(self)

    request = property(_get_request)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The worker's tracer has already pushed this request's context; not calling
        # celery.Task.__call__ keeps it (that one would push a context without the id).
        self.request.started_at = time.time()
        return self.run(*args, **kwargs)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Celery's ``retry``, plus: a ``PermanentError`` is raised instead of retried; a
        warning names the error and when the retry runs; and a retry that cannot be
        published (broker down) puts the message back in the queue rather than drop it."""
        if isinstance(exc, PermanentError):
            raise exc
        try:
            sent = super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
        except Retry as retry:
            self._log_retry(retry, max_retries)
            raise
        except Reject as rejected:
            # Celery rejects *without* requeue when it cannot publish the retry: the task
            # would be dropped. Keep the message instead.
            if rejected.requeue:
                raise
            logger.warning(
                "task %s[%s]: could not schedule the retry (%s); returning it to the queue",
                self.name,
                self.request.id,
                rejected.reason,
            )
            raise Reject(rejected.reason, requeue=True) from rejected
        if isinstance(sent, Retry):
            self._log_retry(sent, max_retries)
        return sent

    def _log_retry(self, retry: Retry, max_retries: int | None) -> None:
        exc = retry.exc
        when = retry.when
        logger.warning(
            "task %s[%s] failed (%s: %s); retry %d/%s %s",
            self.name,
            self.request.id,
            type(exc).__name__ if isinstance(exc, BaseException) else "Retry",
            exc,
            self.request.retries + 1,
            self.max_retries if max_retries is None else max_retries,
            f"in {when:.1f} s" if isinstance(when, int | float) else f"at {when}",
        )

    def report_progress(
        self, current: int | float, total: int | float | None = None, message: str | None = None
    ) -> None:
        """Publish a ``PROGRESS`` state with ``current``, ``total`` and ``message``."""
        if not self.request.id or self.request.called_directly:
            return
        self.update_state(state=PROGRESS, meta={"current": current, "total": total, "message": message})


def _finishing_awaitables(run: Any) -> Any:
    """``run`` made to await what it returns on the process's event loop when that is
    awaitable (an ``async def`` body), so Celery's autoretry around it sees its errors."""
    if isinstance(run, staticmethod):
        return staticmethod(_finishing_awaitables(run.__func__))
    if getattr(run, _FINISHES_AWAITABLES, False) or not callable(run):
        return run
    body: Callable[..., Any] = run

    @functools.wraps(body)
    def finishing(*args: Any, **kwargs: Any) -> Any:
        result = body(*args, **kwargs)
        if inspect.isawaitable(result):
            task = celery.current_task  # a proxy: false when no task is running here
            bound = (task.name, task.request) if task else None
            return run_task_coroutine(_await(result, bound))
        return result

    setattr(finishing, _FINISHES_AWAITABLES, True)
    return finishing


async def _await(awaitable: Any, bound: tuple[str, Any] | None) -> Any:
    if bound is not None:
        _ASYNC_REQUEST.set(bound)  # this coroutine's context only
    return await awaitable
