"""The worker's result backend against real Redis: a state that is not final never
replaces a final one, whichever process or thread wrote that."""

from __future__ import annotations

import pytest
from celery import Celery, states

from pkg.celery_task._options import configure
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
