"""A reusable Celery client for FastAPI services: at-least-once delivery on Redis, one
0 (lowest) .. 9 (highest) priority scale on every broker, a dynamic Redis-backed beat
schedule (RedBeat), durable revokes and worker lifecycle hooks with a long-lived
event loop per worker process.

Imports nothing from ``internal/``.
"""

from ._beat import RedisScheduler, ScheduleEntry
from ._client import MAX_PRIORITY, MIN_PRIORITY, TASK_STATES, THROUGHPUT_PROFILE, CeleryClient, public_state
from ._errors import (
    BrokerUnavailableError,
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
from ._request import TaskRequest
from ._schedules import SCHEDULE_TYPES, describe_interval, describe_schedule, parse_schedule
from ._task import BaseTask, PermanentError, TransientError
from .worker import STOCK_PRIORITY_STEPS, PriorityRedisTransport

__all__ = [
    "ENTRY_NAME_PATTERN",
    "ID_PATTERN",
    "MAX_ARGUMENT_DEPTH",
    "MAX_DELAY",
    "MAX_EXPIRES",
    "MAX_INTERVAL",
    "MAX_PRIORITY",
    "MIN_INTERVAL",
    "MIN_PRIORITY",
    "SCHEDULE_TYPES",
    "STOCK_PRIORITY_STEPS",
    "TASK_STATES",
    "THROUGHPUT_PROFILE",
    "BaseTask",
    "BrokerUnavailableError",
    "CeleryClient",
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
]
