"""The shared base task: transient-error retries, progress reporting, ``async def`` bodies."""

from __future__ import annotations

import inspect
import logging
import random
import time
from typing import Any, ClassVar

import celery
import redis.exceptions
from celery.exceptions import Reject
from kombu.exceptions import OperationalError as KombuOperationalError

from ._loop import run_coroutine

__all__ = ["BaseTask", "PermanentError", "TransientError"]

logger = logging.getLogger(__name__)

PROGRESS = "PROGRESS"


class TransientError(Exception):
    """Raise from a task to say "try again later": the base task retries it with backoff."""


class PermanentError(Exception):
    """Raise from a task to fail at once: never retried, whatever its cause."""


class BaseTask(celery.Task):  # type: ignore[misc]
    """Base of every task: retries transient errors with capped exponential backoff and
    jitter, reports progress, and runs ``async def`` bodies on the process's event loop.

    Soft and hard time limits come from the app's ``task_soft_time_limit`` and
    ``task_time_limit``; a task may override them with its own options.
    """

    #: Errors retried automatically; anything else fails the task at once.
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        TransientError,
        ConnectionError,
        TimeoutError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.OutOfMemoryError,
        KombuOperationalError,
    )
    max_retries = 3
    #: Fixed delay between retries in seconds; ``None`` means exponential backoff.
    retry_countdown: ClassVar[float | None] = None
    #: First backoff delay in seconds, doubled on each retry, capped at ``retry_backoff_max``.
    retry_backoff: ClassVar[float] = 2.0
    retry_backoff_max: ClassVar[float] = 300.0
    #: Spread retries of many failed tasks over [delay/2, delay] so they do not stampede.
    retry_jitter: ClassVar[bool] = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The worker's tracer has already pushed this request's context; not calling
        # celery.Task.__call__ keeps it (that one would push a context without the id).
        self.request.started_at = time.time()
        try:
            result = self.run(*args, **kwargs)
            if inspect.isawaitable(result):
                result = run_coroutine(_await(result))
            return result
        except PermanentError:
            raise
        except self.transient_errors as exc:
            if self.request.called_directly:
                raise
            countdown = self.retry_delay(self.request.retries)
            logger.warning(
                "task %s[%s] hit a transient error (%s: %s); retry %d/%s in %.1f s",
                self.name,
                self.request.id,
                type(exc).__name__,
                exc,
                self.request.retries + 1,
                self.max_retries,
                countdown,
            )
            try:
                raise self.retry(exc=exc, countdown=countdown) from exc
            except Reject as rejected:
                # Celery rejects *without* requeue when it cannot publish the retry
                # (broker down): the task would be dropped. Keep the message instead.
                if rejected.requeue:
                    raise
                logger.warning(
                    "task %s[%s]: could not schedule the retry (%s); returning it to the queue",
                    self.name,
                    self.request.id,
                    rejected.reason,
                )
                raise Reject(rejected.reason, requeue=True) from exc

    def retry_delay(self, retries: int) -> float:
        """Seconds to wait before retry number ``retries + 1``."""
        if self.retry_countdown is not None:
            return float(self.retry_countdown)
        delay = float(min(self.retry_backoff_max, self.retry_backoff * (2**retries)))
        if self.retry_jitter:
            delay = random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not crypto
        return delay

    def report_progress(
        self, current: int | float, total: int | float | None = None, message: str | None = None
    ) -> None:
        """Publish a ``PROGRESS`` state with ``current``, ``total`` and ``message``."""
        if not self.request.id or self.request.called_directly:
            return
        self.update_state(state=PROGRESS, meta={"current": current, "total": total, "message": message})


async def _await(awaitable: Any) -> Any:
    return await awaitable
