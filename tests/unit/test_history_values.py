"""Pure logic of the worker's history records: truncation and masking, and the
option checks (hostile values refused, naming the option)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from pkg.celery_task._errors import InvalidRequestError
from pkg.celery_task._options import Options
from pkg.celery_task.worker.history import MASK, mask_kwargs, truncate


def test_truncate_keeps_small_values_and_cuts_large_ones() -> None:
    assert truncate([1, "a"], 100) == [1, "a"]
    cut = truncate("é" * 5000, 101)
    assert set(cut) == {"truncated"} and len(cut["truncated"].encode()) <= 101
    assert truncate(object(), 10_000)  # not JSON: stored by repr, never raises


def test_mask_by_key_name_case_insensitive() -> None:
    masked = mask_kwargs({"Password": "p", "api_key": "k", "x": 1}, ("password", "api_key"))
    assert masked == {"Password": MASK, "api_key": MASK, "x": 1}
    assert mask_kwargs(None, ("password",)) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"history": "yes"},
        {"history_max_value_bytes": 0},
        {"history_max_value_bytes": 2**40},
        {"history_mask_keys": "password"},
        {"history_mask_keys": tuple(str(i) for i in range(101))},
        {"history_mask_keys": ("x" * 201,)},
        {"history_stream_maxlen": -1},
    ],
)
def test_bad_history_options_refused(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError, match="tasksys_history"):
        Options(redis_url="redis://127.0.0.1:6379/0", **changes)  # type: ignore[arg-type]


def test_flush_keeps_records_while_redis_is_down_then_sends_them(redis_db: Any) -> None:
    from celery import Celery

    from pkg.celery_task._options import configure
    from pkg.celery_task.worker.history import TaskHistory

    app = Celery("history-flush", set_as_current=False)
    configure(app, Options(redis_url="redis://127.0.0.1:1/0", history=True))
    history = TaskHistory(app)
    history._pid = os.getpid()  # no timer thread: this test flushes by hand
    for n in range(3):
        history._add({"type": "received", "task_id": f"t{n}"})
    assert history.flush() == 0  # refused connection: kept, no exception
    assert len(history._buffer) == 3
    configure(app, redis_url=redis_db.url)
    history._client = None
    assert history.flush() == 3
    assert redis_db.client.xlen("tasksys:history") == 3
    assert history.flush() == 0
