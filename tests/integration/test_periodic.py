"""Dynamic periodic tasks against real beat processes (RedBeat in Redis), no restarts."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import pytest

from internal.infra.celery import STATIC_BEAT_SCHEDULE
from pkg.celery_task import CeleryClient
from tests.conftest import Stack
from tests.support.procs import wait_for
from tests.support.services import RedisDb

pytestmark = pytest.mark.integration


def fired(db: RedisDb, key: str) -> list[float]:
    return [json.loads(raw)["t"] for raw in db.client.lrange(key, 0, -1)]


def test_static_entries_are_listed_after_beat_starts(stack: Stack, client: CeleryClient) -> None:
    entries = {e["name"]: e for e in client.list_periodic_tasks()}
    for name in STATIC_BEAT_SCHEDULE:
        assert entries[name]["static"] is True
        assert entries[name]["task"] == STATIC_BEAT_SCHEDULE[name]["task"]
    assert entries["task_sum_every_15_min"]["schedule"] == {
        "type": "cron",
        "value": "*/15 * * * *",
        "description": "every 15 minutes (Asia/Shanghai)",
    }
    assert entries["task_daily_report_morning"]["kwargs"] == {"x": 100, "y": 200}
    assert entries["task_daily_report_morning"]["schedule"]["description"] == (
        "at 08:30 every day (Asia/Shanghai)"
    )
    assert entries["task_daily_report_morning"]["next_run_at"].endswith("08:30:00+08:00")
    assert entries["task_heartbeat_30s"]["args"] == [1, 1]
    assert entries["task_heartbeat_30s"]["schedule"]["description"] == "every 30 seconds"


def test_interval_entry_add_disable_enable_remove_on_running_beat(
    stack: Stack, client: CeleryClient, unique: str
) -> None:
    key, name = f"tick-{unique}", f"tick-{unique}"
    assert client.add_periodic_task("tests.record", "interval", 1, name=name, args=[key, "tick"]) == name
    wait_for(lambda: len(fired(stack.db, key)) >= 3, timeout=15, what="3 runs of a new 1 s entry")

    client.disable_periodic_task(name)
    assert client.get_periodic_task(name)["enabled"] is False
    time.sleep(1.5)  # a run already sent may still execute
    count = len(fired(stack.db, key))
    time.sleep(3)
    assert len(fired(stack.db, key)) == count, "a disabled entry fired"

    client.enable_periodic_task(name)
    wait_for(lambda: len(fired(stack.db, key)) >= count + 2, timeout=15, what="runs after enabling")
    entry = client.get_periodic_task(name)
    assert entry["enabled"] is True and entry["total_run_count"] >= count + 2

    assert client.remove_periodic_task(name) is True
    time.sleep(1.5)
    count = len(fired(stack.db, key))
    time.sleep(3)
    assert len(fired(stack.db, key)) == count, "a removed entry fired"
    assert client.remove_periodic_task(name) is False
    assert name not in {e["name"] for e in client.list_periodic_tasks()}


def test_interval_runs_do_not_drift(stack: Stack, client: CeleryClient, unique: str) -> None:
    key, name = f"drift-{unique}", f"drift-{unique}"
    client.add_periodic_task("tests.record", "interval", 1, name=name, args=[key, "tick"])
    try:
        wait_for(lambda: len(fired(stack.db, key)) >= 8, timeout=20, what="8 runs")
    finally:
        client.remove_periodic_task(name)
    times = fired(stack.db, key)[:8]
    # Seven 1 s periods: a scheduler that counted from each send would add its latency 7 times.
    assert abs((times[-1] - times[0]) - 7.0) < 0.5, times


def test_once_entry_fires_exactly_once(stack: Stack, client: CeleryClient, unique: str) -> None:
    key, name = f"once-{unique}", f"once-{unique}"
    when = datetime.now().astimezone() + timedelta(seconds=2)
    client.add_periodic_task("tests.record", "once", when, name=name, args=[key, "once"])
    entry = client.get_periodic_task(name)
    assert entry["schedule"]["type"] == "once"
    assert entry["next_run_at"] is not None
    wait_for(lambda: fired(stack.db, key), timeout=15, what="the one-time run")
    time.sleep(3)
    (ran_at,) = fired(stack.db, key)
    assert ran_at >= when.timestamp() - 1.0
    entry = client.get_periodic_task(name)
    assert entry["enabled"] is False and entry["next_run_at"] is None and entry["total_run_count"] == 1
    client.remove_periodic_task(name)
