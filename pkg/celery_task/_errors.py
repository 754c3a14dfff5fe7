"""Exceptions raised by :mod:`pkg.celery_task`.

The tree::

    TaskSystemError
    ├── InvalidRequestError (also ValueError)    bad input; nothing was written
    │   ├── InvalidScheduleError                 schedule type/value/time rejected
    │   ├── UnknownTaskError                     task name not in the loaded registry
    │   ├── InvalidArgumentsError                args/kwargs not JSON, too deep or too large
    │   ├── InvalidPriorityError                 priority outside 0..9
    │   └── TaskIdInUseError                     a caller-supplied task_id is already known
    ├── PeriodicTaskNotFoundError (also KeyError) no entry of that name
    ├── PeriodicTaskConflictError                the entry is static: disable it, do not delete/replace
    ├── DeadLetterNotFoundError (also KeyError)  no dead-letter entry with that id
    ├── DeadLetterNotResubmittableError          the entry has no task to send again (undecodable)
    ├── BrokerUnavailableError                   broker/backend unreachable; nothing half-sent
    │   └── StoreFullError                       Redis refuses writes (out of memory)
    ├── ResultTimeoutError (also TimeoutError)   get_result waited longer than asked
    └── ClientClosedError                        the client was closed; make a new one

:func:`unreachable` turns the connection errors of kombu and redis-py into
:class:`BrokerUnavailableError` / :class:`StoreFullError`, for every part alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import kombu.exceptions
import redis
from kombu.utils.url import maybe_sanitize_url

__all__ = [
    "BROKER_ERRORS",
    "BrokerUnavailableError",
    "ClientClosedError",
    "DeadLetterNotFoundError",
    "DeadLetterNotResubmittableError",
    "InvalidArgumentsError",
    "InvalidPriorityError",
    "InvalidRequestError",
    "InvalidScheduleError",
    "PeriodicTaskConflictError",
    "PeriodicTaskNotFoundError",
    "ResultTimeoutError",
    "StoreFullError",
    "TaskIdInUseError",
    "TaskSystemError",
    "UnknownTaskError",
    "refuses_writes",
    "unreachable",
]


class TaskSystemError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidRequestError(TaskSystemError, ValueError):
    """The caller's input was rejected before anything was sent or stored."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidScheduleError(InvalidRequestError):
    """A periodic-task schedule (type, value or time) is not acceptable."""


class UnknownTaskError(InvalidRequestError):
    """The task name is not registered in the loaded task registry."""

    def __init__(self, task_name: str, *, known: list[str] | None = None) -> None:
        hint = f"; registered tasks include: {', '.join(known[:20])}" if known else ""
        super().__init__(f"unknown task {task_name!r}{hint}", field="task")
        self.task_name = task_name


class InvalidArgumentsError(InvalidRequestError):
    """Task arguments cannot be sent as JSON."""


class InvalidPriorityError(InvalidRequestError):
    """Priority is not an integer from 0 (lowest) to 9 (highest)."""


class TaskIdInUseError(InvalidRequestError):
    """A caller-supplied ``task_id`` is already queued, scheduled, running, finished
    within the result TTL or revoked: ids are idempotency keys, so nothing was sent."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(
            f"task_id {task_id!r} is already in use ({reason}); nothing was sent. A task id "
            "names one task: submit without task_id, or with a new one",
            field="task_id",
        )
        self.task_id = task_id
        self.reason = reason


class PeriodicTaskNotFoundError(TaskSystemError, KeyError):
    """No periodic task entry has that name."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"no periodic task named {self.name!r}"


class PeriodicTaskConflictError(TaskSystemError):
    """The entry cannot be changed that way (static entries can only be enabled/disabled)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"periodic task {name!r} cannot be changed: {reason}")
        self.name = name
        self.reason = reason


class DeadLetterNotFoundError(TaskSystemError, KeyError):
    """No dead-letter entry has that id."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(entry_id)
        self.entry_id = entry_id

    def __str__(self) -> str:
        return f"no dead-letter entry {self.entry_id!r}"


class DeadLetterNotResubmittableError(TaskSystemError):
    """The dead-letter entry holds no task that can be sent again."""

    def __init__(self, entry_id: str, reason: str) -> None:
        super().__init__(f"dead-letter entry {entry_id!r} cannot be re-submitted: {reason}")
        self.entry_id = entry_id


class BrokerUnavailableError(TaskSystemError):
    """The broker or result backend could not be reached in the bounded retry window.

    ``sent_ids`` lists tasks a bulk call did write before the failure (else empty)."""

    def __init__(self, message: str, *, sent_ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.sent_ids: list[str] = list(sent_ids or [])


class StoreFullError(BrokerUnavailableError):
    """Redis answered but refused to store anything (``maxmemory`` reached with a
    ``noeviction`` policy); retry once memory is available."""


class ResultTimeoutError(TaskSystemError, TimeoutError):
    """The task did not finish within the timeout given to ``get_result``."""

    def __init__(self, task_id: str, timeout: float | None) -> None:
        super().__init__(f"task {task_id} did not finish within {timeout} s")
        self.task_id = task_id
        self.timeout = timeout


class ClientClosedError(TaskSystemError):
    """The client was closed; its connections are gone, so it sends and reads nothing."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is closed: it cannot be used after close(); create a new client")


#: What "cannot reach the broker or backend" looks like from kombu and redis-py.
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.OperationalError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
)


@contextmanager
def unreachable(what: str, url: str | None) -> Iterator[None]:
    """Turn "cannot reach Redis/the broker" into :class:`BrokerUnavailableError` and
    "Redis refuses writes for lack of memory" into :class:`StoreFullError` (``what``
    says what failed; ``url`` is shown without its password)."""
    try:
        yield
    except BROKER_ERRORS as exc:
        raise _unavailable(what, url, exc) from exc
    except redis.exceptions.ResponseError as exc:
        if not refuses_writes(exc):
            raise
        if isinstance(exc, redis.exceptions.ReadOnlyError):
            raise _unavailable(what, url, exc) from exc
        raise StoreFullError(
            f"{what}: Redis at {maybe_sanitize_url(url)} is out of memory and "
            f"refuses writes ({type(exc).__name__}: {exc}); retry once memory is available"
        ) from exc
    except RuntimeError as exc:
        # Celery's result consumer gives up with a RuntimeError caused by the
        # connection error; the next call reconnects, so this is not fatal.
        if isinstance(exc.__cause__, BROKER_ERRORS):
            raise _unavailable(what, url, exc.__cause__) from exc
        raise


def _unavailable(what: str, url: str | None, exc: BaseException) -> BrokerUnavailableError:
    return BrokerUnavailableError(
        f"{what}: broker or result backend unreachable at "
        f"{maybe_sanitize_url(url)} ({type(exc).__name__}: {exc})"
    )


def refuses_writes(exc: redis.exceptions.ResponseError) -> bool:
    """Redis answered but will not write: out of memory (``OOM``, also when it aborted a
    MULTI/EXEC for it), or a read-only replica after a failover."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError | redis.exceptions.ReadOnlyError):
        return True
    text = str(exc)
    return text.startswith(("OOM", "READONLY")) or (
        isinstance(exc, redis.exceptions.ExecAbortError) and "OOM" in text
    )
