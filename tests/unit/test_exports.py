"""The public names of pkg.celery_task are a contract: this list changes on purpose only."""

from __future__ import annotations

import ast
from pathlib import Path

import pkg.celery_task

EXPECTED = {
    "ENTRY_NAME_PATTERN",
    "ID_PATTERN",
    "MAX_ARGUMENT_DEPTH",
    "MAX_DELAY",
    "MAX_EXPIRES",
    "MAX_INTERVAL",
    "MIN_INTERVAL",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
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
}


def test_exported_members() -> None:
    assert set(pkg.celery_task.__all__) == EXPECTED
    for name in pkg.celery_task.__all__:
        member = getattr(pkg.celery_task, name)
        assert name.isupper() or member.__module__.startswith("pkg.celery_task"), name


def test_pkg_imports_nothing_from_internal() -> None:
    for path in Path(pkg.celery_task.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("internal"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("internal") for a in node.names), path


def test_errors_form_one_tree() -> None:
    from pkg.celery_task import (
        BrokerUnavailableError,
        InvalidRequestError,
        InvalidScheduleError,
        PeriodicTaskNotFoundError,
        ResultTimeoutError,
        TaskSystemError,
        UnknownTaskError,
    )

    for error in (BrokerUnavailableError, InvalidRequestError, PeriodicTaskNotFoundError, ResultTimeoutError):
        assert issubclass(error, TaskSystemError)
    assert issubclass(InvalidScheduleError, ValueError) and issubclass(UnknownTaskError, ValueError)
    assert issubclass(ResultTimeoutError, TimeoutError) and issubclass(PeriodicTaskNotFoundError, KeyError)
    from pkg.celery_task import StoreFullError, TaskIdInUseError

    assert issubclass(TaskIdInUseError, InvalidRequestError) and issubclass(TaskIdInUseError, ValueError)
    assert issubclass(StoreFullError, BrokerUnavailableError)
