"""A reusable Celery client for FastAPI services: at-least-once delivery on Redis, one
0 (lowest) .. 9 (highest) priority scale on every broker, a dynamic Redis-backed beat
schedule (RedBeat), durable revokes, dead letters and worker lifecycle hooks with a
long-lived event loop per worker process. Imports nothing from ``internal/``.

Layout (each part declares what it needs in its constructor; none imports the façade):

- ``_client``: :class:`CeleryClient`, the façade. Builds the app, wires the parts,
  checks the client is open and delegates.
- ``_conf``: Celery's settings for at-least-once delivery; ``_options``: this
  package's own settings (typed ``Options``, stored as ``tasksys_*`` keys).
- ``_validation`` (request checks bound to an app) over ``_limits`` (pure bounds and
  name rules); ``_request``: :class:`TaskRequest`.
- ``_publish`` (sync sending) over ``_fastpath`` (the messages ``send_task`` builds,
  pipelined) and ``_taskids`` (caller ids as idempotency keys); ``_async`` (the same
  on redis.asyncio, one publisher and result reader per loop); ``_canvas`` (workflows).
- ``_results`` (states, results, revokes), ``_periodic`` (the schedule store, over
  ``_beat`` and ``_schedules``), ``_deadletter``, ``_operations`` (queues, ping).
- ``_redis``: every Redis client the parts use (a caller may pass its own).
- ``_errors``: the exception tree and the one translation of connection errors.
- ``_compat``: every private Celery/kombu/billiard/RedBeat name, pinned by tests.
- ``_outbox``: submit on commit for SQLAlchemy (an outbox row in the caller's
  transaction, published after the commit, and the relay for rows left behind).
- ``_task`` (the task base class), ``_loop`` (the per-process event loop), and
  ``worker/``: what runs only in ``celery worker`` (see its docstring).
"""

from ._beat import RedisScheduler, ScheduleEntry
from ._client import MAX_PRIORITY, MIN_PRIORITY, TASK_STATES, THROUGHPUT_PROFILE, CeleryClient, public_state
from ._dedupe import DEFAULT_DEDUPE_TTL, MAX_DEDUPE_TTL
from ._errors import (
    BrokerUnavailableError,
    ClientClosedError,
    DeadLetterNotFoundError,
    DeadLetterNotResubmittableError,
    InvalidArgumentsError,
    InvalidPriorityError,
    InvalidRequestError,
    InvalidScheduleError,
    PeriodicTaskConflictError,
    PeriodicTaskNotFoundError,
    ResultTimeoutError,
    StoreFullError,
    TaskIdInUseError,
    TaskSystemError,
    UnknownTaskError,
)
from ._limits import (
    ENTRY_NAME_PATTERN,
    ID_PATTERN,
    MAX_ARGUMENT_DEPTH,
    MAX_DELAY,
    MAX_EXPIRES,
    MAX_INTERVAL,
    MIN_INTERVAL,
    escape_control,
)
from ._loop import EventLoopThread, process_loop, run_coroutine
from ._outbox import OUTBOX_CLIENT_KEY, OUTBOX_METADATA, OUTBOX_TABLE, submit_on_commit
from ._request import TaskRequest
from ._schedules import SCHEDULE_TYPES, describe_interval, describe_schedule, parse_schedule
from ._task import BaseTask, PermanentError, TransientError
from .worker import STOCK_PRIORITY_STEPS, PriorityRedisTransport

__all__ = [
    "DEFAULT_DEDUPE_TTL",
    "ENTRY_NAME_PATTERN",
    "ID_PATTERN",
    "MAX_ARGUMENT_DEPTH",
    "MAX_DEDUPE_TTL",
    "MAX_DELAY",
    "MAX_EXPIRES",
    "MAX_INTERVAL",
    "MAX_PRIORITY",
    "MIN_INTERVAL",
    "MIN_PRIORITY",
    "OUTBOX_CLIENT_KEY",
    "OUTBOX_METADATA",
    "OUTBOX_TABLE",
    "SCHEDULE_TYPES",
    "STOCK_PRIORITY_STEPS",
    "TASK_STATES",
    "THROUGHPUT_PROFILE",
    "BaseTask",
    "BrokerUnavailableError",
    "CeleryClient",
    "ClientClosedError",
    "DeadLetterNotFoundError",
    "DeadLetterNotResubmittableError",
    "EventLoopThread",
    "InvalidArgumentsError",
    "InvalidPriorityError",
    "InvalidRequestError",
    "InvalidScheduleError",
    "PeriodicTaskConflictError",
    "PeriodicTaskNotFoundError",
    "PermanentError",
    "PriorityRedisTransport",
    "RedisScheduler",
    "ResultTimeoutError",
    "ScheduleEntry",
    "StoreFullError",
    "TaskIdInUseError",
    "TaskRequest",
    "TaskSystemError",
    "TransientError",
    "UnknownTaskError",
    "describe_interval",
    "describe_schedule",
    "escape_control",
    "parse_schedule",
    "public_state",
    "process_loop",
    "run_coroutine",
    "submit_on_commit",
]
