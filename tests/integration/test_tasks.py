"""Submitting tasks to a real worker process over real Redis, and reading them back."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from pkg.celery_task import CeleryClient, ResultTimeoutError
from tests.conftest import Stack
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration


def events(stack: Stack, key: str) -> list[dict]:
    return [json.loads(raw) for raw in stack.db.client.lrange(key, 0, -1)]


def test_submit_and_get_result(stack: Stack, client: CeleryClient) -> None:
    result = client.submit("math.number_sum", (1, 2))
    assert client.get_result(result.id, timeout=20) == 3
    assert client.get_status(result.id) == "SUCCESS"


def test_kwargs_and_given_task_id(stack: Stack, client: CeleryClient, unique: str) -> None:
    task_id = f"my-id-{unique}"
    result = client.submit("math.number_sum", kwargs={"x": 100, "y": 200}, task_id=task_id)
    assert result.id == task_id
    assert client.get_result(task_id, timeout=20) == 300


def test_get_statuses_in_one_call(stack: Stack, client: CeleryClient, unique: str) -> None:
    done = [client.submit("math.number_sum", (i, i)).id for i in range(5)]
    for task_id in done:
        client.get_result(task_id, timeout=20)
    never_seen = f"never-seen-{unique}"
    statuses = client.get_statuses([*done, never_seen])
    assert statuses == {**dict.fromkeys(done, "SUCCESS"), never_seen: "PENDING"}


def test_countdown_delays_execution(stack: Stack, client: CeleryClient, unique: str) -> None:
    key = f"countdown-{unique}"
    sent = time.time()
    result = client.submit("tests.record", (key, "late"), countdown=2)
    client.get_result(result.id, timeout=20)
    (event,) = events(stack, key)
    assert event["t"] - sent >= 1.9


def test_eta_delays_execution(stack: Stack, client: CeleryClient, unique: str) -> None:
    key = f"eta-{unique}"
    eta = datetime.now(UTC) + timedelta(seconds=2)
    result = client.submit("tests.record", (key, "at-eta"), eta=eta)
    client.get_result(result.id, timeout=20)
    (event,) = events(stack, key)
    assert event["t"] >= eta.timestamp() - 0.1


def test_expired_task_does_not_run(stack: Stack, client: CeleryClient, unique: str) -> None:
    key = f"expired-{unique}"
    result = client.submit("tests.record", (key, "never"), countdown=3, expires=1)
    wait_for(lambda: client.get_status(result.id) == "REVOKED", timeout=20, what="expired task to be REVOKED")
    time.sleep(1)
    assert events(stack, key) == []


def test_get_result_timeout_raises(stack: Stack, client: CeleryClient) -> None:
    result = client.submit("tests.sleep", (3,))
    started = time.monotonic()
    with pytest.raises(ResultTimeoutError) as info:
        client.get_result(result.id, timeout=0.5)
    assert time.monotonic() - started < 3
    assert isinstance(info.value, TimeoutError)
    assert client.get_result(result.id, timeout=20) == 3


def test_get_result_without_propagate_returns_the_error(stack: Stack, client: CeleryClient) -> None:
    result = client.submit("math.number_sum", ("a", 1))
    error = client.get_result(result.id, timeout=20, propagate=False)
    assert isinstance(error, Exception)
    assert "x must be a number" in str(error)


def test_scheduled_tasks_wait_in_cron_queue(stack: Stack, client: CeleryClient) -> None:
    before = client.queue_lengths(["cron_queue"])["cron_queue"]
    result = client.submit("internal.aps_tasks.record_queue_lengths")
    try:
        assert client.queue_lengths(["cron_queue"])["cron_queue"] == before + 1
        time.sleep(1)  # the running worker consumes only `default`
        assert client.get_status(result.id) == "PENDING"
        assert client.queue_lengths()["cron_queue"] == before + 1
    finally:
        client.app.control.purge()  # only reaches queues a worker consumes; empty cron_queue ourselves
        stack.db.client.delete(*_queue_keys(stack, "cron_queue"))


def test_video_transcode_lands_in_video_queue_at_top_priority(stack: Stack, client: CeleryClient) -> None:
    # A producer that does not load the task registry (another service) sends by name.
    from internal.config.setting import setting
    from internal.infra.celery import build_celery_client

    producer = build_celery_client(setting)
    producer.submit("internal.business.video.transcode", ("video-1",))
    try:
        assert client.queue_lengths(["video_queue"]) == {"video_queue": 1}
        (raw,) = [m for key in _queue_keys(stack, "video_queue") for m in stack.db.client.lrange(key, 0, -1)]
        message = json.loads(raw)
        assert message["headers"]["task"] == "internal.business.video.transcode"
        assert message["properties"]["priority"] == 9  # the seed's 10, clamped to the top of 0..9
    finally:
        stack.db.client.delete(*_queue_keys(stack, "video_queue"))


def _queue_keys(stack: Stack, queue: str) -> list[str]:
    return [k.decode() for k in stack.db.client.keys(f"{queue}*") if not k.startswith(b"_kombu")]


def test_chain_group_chord(stack: Stack, client: CeleryClient) -> None:
    chained = client.chain(
        client.signature("math.number_sum", (1, 2)), client.signature("math.number_sum", (10,))
    )
    assert client.get_result(chained.id, timeout=30) == 13

    grouped = client.group(*(client.signature("math.number_sum", (i, i)) for i in range(4)))
    assert grouped.get(timeout=30) == [0, 2, 4, 6]
    restored = client.app.GroupResult.restore(grouped.id)
    assert restored is not None and restored.get(timeout=5) == [0, 2, 4, 6]

    chorded = client.chord(
        [client.signature("math.number_sum", (i, 1)) for i in range(3)], client.signature("tests.total")
    )
    assert client.get_result(chorded.id, timeout=30) == 6


def test_revoke_countdown_task_never_runs(stack: Stack, client: CeleryClient, unique: str) -> None:
    key = f"revoked-{unique}"
    result = client.submit("tests.record", (key, "should not run"), countdown=3)
    client.revoke(result.id)
    assert client.get_status(result.id) == "REVOKED"
    time.sleep(4.5)
    assert events(stack, key) == []
    assert client.get_status(result.id) == "REVOKED"


def test_revoke_terminate_stops_running_task(stack: Stack, client: CeleryClient, unique: str) -> None:
    key = f"terminate-{unique}"
    result = client.submit("tests.sleep", (30, key))
    wait_for(lambda: events(stack, key), timeout=20, what="long task to start")
    client.revoke(result.id, terminate=True)
    wait_for(lambda: client.get_status(result.id) == "REVOKED", timeout=20, what="terminated task REVOKED")
    time.sleep(1)
    assert [e["value"] for e in events(stack, key)] == ["started"]


def test_transient_failure_is_retried_then_succeeds(stack: Stack, client: CeleryClient, unique: str) -> None:
    key = f"flaky-{unique}"
    result = client.submit("tests.flaky", (key, 2))
    statuses = set()

    def finished() -> bool:
        statuses.add(client.get_status(result.id))
        return client.get_status(result.id) == "SUCCESS"

    wait_for(finished, timeout=30, interval=0.02, what="flaky task to succeed")
    assert client.get_result(result.id, timeout=5) == 3
    assert "RETRY" in statuses
    meta = client.get_task_metas([result.id])[result.id]
    assert meta["retries"] == 2


def test_number_sum_with_non_numbers_fails_at_once(stack: Stack, client: CeleryClient) -> None:
    result = client.submit("math.number_sum", ("1", 2))
    error = client.get_result(result.id, timeout=20, propagate=False)
    assert "x must be a number (int or float), got str '1'" in str(error)
    meta = client.get_task_metas([result.id])[result.id]
    assert meta["status"] == "FAILURE"
    assert meta["retries"] == 0


def test_progress_is_reported(stack: Stack, client: CeleryClient) -> None:
    result = client.submit("tests.progress", (5, 0.3))
    meta = wait_for(
        lambda: (m := client.get_task_metas([result.id])[result.id]).get("status") == "PROGRESS" and m,
        timeout=20,
        interval=0.05,
        what="PROGRESS state",
    )
    assert client.get_status(result.id) in ("PROGRESS", "SUCCESS")
    assert meta["result"]["total"] == 5
    assert meta["result"]["message"].startswith("step ")
    assert client.get_result(result.id, timeout=20) == 5
