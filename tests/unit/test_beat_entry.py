"""Schedule-entry arithmetic of the beat scheduler (no Redis: entries are built in memory)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.schedules import crontab, schedule

from pkg.celery_task import CeleryClient, ScheduleEntry


@pytest.fixture(scope="module")
def client() -> CeleryClient:
    return CeleryClient("beat-unit", "redis://127.0.0.1:6379/15")


def entry(client: CeleryClient, sched: object, last_run_ago: float | None, **kwargs: object) -> ScheduleEntry:
    now = client.app.now()
    last = None if last_run_ago is None else now - timedelta(seconds=last_run_ago)
    return ScheduleEntry(
        name="e", task="math.number_sum", schedule=sched, last_run_at=last, app=client.app, **kwargs
    )


def test_a_late_run_advances_from_its_due_time_and_beat_wakes_for_the_next_one(client: CeleryClient) -> None:
    late = entry(client, schedule(timedelta(seconds=1)), last_run_ago=1.3)  # due 0.3 s ago
    due, next_check = late.is_due()
    assert due is True
    assert 0.6 < next_check < 0.75  # the next due time, not a full second from now
    assert (late._due_time_if_on_schedule() - late.last_run_at) == timedelta(seconds=1)


def test_a_run_a_whole_period_late_restarts_from_now(client: CeleryClient) -> None:
    very_late = entry(client, schedule(timedelta(seconds=1)), last_run_ago=2.5)
    assert very_late._due_time_if_on_schedule() is None


def test_disabled_entries_leave_the_due_index(client: CeleryClient) -> None:
    assert entry(client, schedule(timedelta(seconds=5)), 1, enabled=False).score == -1
    assert entry(client, schedule(timedelta(seconds=5)), 1).score > 0


def test_next_run_of_a_cron_entry_is_exact(client: CeleryClient) -> None:
    daily = entry(client, crontab(minute="30", hour="8"), last_run_ago=60)
    assert daily.due_at.microsecond == 0 and daily.due_at.second == 0
    assert (daily.due_at.hour, daily.due_at.minute, daily.due_at.utcoffset()) == (8, 30, timedelta(hours=8))
