"""The worker's result backend against real Redis: a state that is not final never
replaces a final one, whichever process or thread wrote that."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from celery import Celery, states

from pkg.celery_task._errors import ResultTimeoutError
from pkg.celery_task._options import configure
from pkg.celery_task._results import RESULT_RECHECK_SECONDS
from pkg.celery_task.worker.backend import TimedRedisBackend
from tests.support.services import RedisDb

pytestmark = pytest.mark.integration


@pytest.fixture()
def app(redis_db: RedisDb) -> Celery:
    from tests.reliability.conftest import client_for

    app = client_for(redis_db.url).app
    configure(app, started_delay=0)  # STARTED written at once: the race is explicit
    assert type(app.backend) is TimedRedisBackend
    return app


@pytest.mark.parametrize("final", [states.REVOKED, states.FAILURE, states.SUCCESS])
@pytest.mark.parametrize("late", [states.STARTED, "PROGRESS", states.RETRY])
def test_a_late_progress_state_never_replaces_a_final_one(
    app: Celery, unique: str, final: str, late: str
) -> None:
    task_id = f"late-{unique}"
    result = RuntimeError("boom") if final == states.FAILURE else None
    app.backend.store_result(task_id, result, final)
    app.backend.store_result(task_id, {"step": 1}, late)  # e.g. the STARTED of a revoked task
    assert app.backend.get_task_meta(task_id)["status"] == final


def test_states_still_move_forward(app: Celery, unique: str) -> None:
    task_id = f"forward-{unique}"
    for state in (states.STARTED, "PROGRESS", states.RETRY, states.STARTED, states.SUCCESS):
        app.backend.store_result(task_id, None, state)
        assert app.backend.get_task_meta(task_id)["status"] == state
    app.backend.store_result(f"revoked-{unique}", None, states.STARTED)
    app.backend.store_result(f"revoked-{unique}", None, states.REVOKED)
    assert app.backend.get_task_meta(f"revoked-{unique}")["status"] == states.REVOKED


def test_a_wait_returns_a_stored_result_whose_notification_was_missed(redis_db: RedisDb, unique: str) -> None:
    """Celery's Redis wait listens for the result's PUBLISH only; a result stored
    without one (a notification lost under load) is still returned, not timed out."""
    from tests.reliability.conftest import client_for

    client = client_for(redis_db.url)
    backend = client.app.backend
    task_id = f"unnotified-{unique}"
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(client.get_result(task_id, timeout=30)))
    began = time.monotonic()
    waiter.start()
    time.sleep(0.5)  # the waiter is subscribed and waiting on the notification
    meta = {"status": states.SUCCESS, "result": 42, "traceback": None, "children": [], "task_id": task_id}
    backend.client.set(backend.get_key_for_task(task_id), backend.encode(meta))  # no PUBLISH
    waiter.join(timeout=40)
    assert got == [42]
    assert time.monotonic() - began < 30 - RESULT_RECHECK_SECONDS, "it waited for the timeout"
    backend.client.delete(backend.get_key_for_task(task_id))


def test_a_wait_for_a_result_never_stored_still_times_out(redis_db: RedisDb, unique: str) -> None:
    from tests.reliability.conftest import client_for

    client = client_for(redis_db.url)
    with pytest.raises(ResultTimeoutError):
        client.get_result(f"never-{unique}", timeout=RESULT_RECHECK_SECONDS + 0.5)
    with pytest.raises(ResultTimeoutError):
        client.get_result(f"never-{unique}", timeout=0)


def test_deferred_started_states_are_stored_in_one_batch_and_never_after_a_later_state(
    redis_db: RedisDb, unique: str
) -> None:
    """With a STARTED delay, tasks still running after it get STARTED (written together,
    through the store script); one that finished or retried first never does."""
    from tests.reliability.conftest import client_for

    app = client_for(redis_db.url).app
    configure(app, started_delay=0.3)
    running = [f"running-{unique}-{i}" for i in range(30)]
    for task_id in running:
        app.backend.store_result(task_id, None, states.STARTED)
    app.backend.store_result(f"quick-{unique}", None, states.STARTED)
    app.backend.store_result(f"quick-{unique}", 7, states.SUCCESS)
    app.backend.store_result(f"retried-{unique}", None, states.STARTED)
    app.backend.store_result(f"retried-{unique}", None, states.RETRY)
    assert app.backend.get_task_meta(running[0])["status"] == states.PENDING  # not yet
    deadline = time.monotonic() + 10
    while app.backend.get_task_meta(running[-1])["status"] != states.STARTED:
        assert time.monotonic() < deadline, "the deferred STARTED states never landed"
        time.sleep(0.05)
    assert {app.backend.get_task_meta(t)["status"] for t in running} == {states.STARTED}
    time.sleep(0.5)
    assert app.backend.get_task_meta(f"quick-{unique}")["status"] == states.SUCCESS
    assert app.backend.get_task_meta(f"retried-{unique}")["status"] == states.RETRY
