"""Task history, worker side, against the session's real prefork worker: success,
failure, retry and revoke each put the right records on the ``tasksys:history`` stream,
with large args truncated (masking is unit-tested)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pkg.celery_task import CeleryClient
from tests.conftest import Stack
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration

STREAM = "tasksys:history"


def _records(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    entries = stack.db.client.xrange(STREAM)
    records = [json.loads(fields[b"r"]) for _, fields in entries]
    # Each process flushes its own buffer: the stream is ordered per process, not per task.
    return sorted((r for r in records if r["task_id"] == task_id), key=lambda r: r["at"])


def _types_after(stack: Stack, task_id: str, *needed: str) -> list[dict[str, Any]]:
    """The task's records once each of ``needed`` is among them (the main process, which
    records ``received``, and the pool child flush separately, in either order)."""

    def done() -> list[dict[str, Any]]:
        records = _records(stack, task_id)
        return records if set(needed) <= {r["type"] for r in records} else []

    return wait_for(done, 20, what=f"{', '.join(needed)} records of {task_id}")


def test_success_records_received_started_succeeded(stack: Stack, client: CeleryClient) -> None:
    result = client.submit("math.number_sum", kwargs={"x": 2, "y": 3})
    assert result.get(timeout=20) == 5
    records = _types_after(stack, result.id, "sent", "received", "started", "succeeded")
    assert [r["type"] for r in records] == ["sent", "received", "started", "succeeded"]
    sent, received, started, succeeded = records
    assert sent["task"] == "math.number_sum" and sent["at"] <= received["at"]
    assert received["task"] == "math.number_sum" and received["queue"] == "default"
    assert received["worker"].startswith("stack-worker@")
    assert received["kwargs"] == {"x": 2, "y": 3}
    assert succeeded["result"] == 5 and succeeded["runtime_ms"] >= 0
    assert started["task"] == succeeded["task"] == "math.number_sum"


def test_failure_records_error_and_traceback(stack: Stack, client: CeleryClient) -> None:
    result = client.submit("math.number_sum", ("a", 1))
    assert isinstance(client.get_result(result.id, timeout=20, propagate=False), Exception)
    failed = _types_after(stack, result.id, "failed")[-1]
    assert failed["error"]["type"]
    assert "Traceback" in failed["traceback"]


def test_retry_then_success(stack: Stack, client: CeleryClient, unique: str) -> None:
    result = client.submit("tests.flaky", (f"history-flaky-{unique}", 2))
    assert result.get(timeout=30) == 3
    records = _types_after(stack, result.id, "succeeded")
    types = [r["type"] for r in records]
    assert types.count("retried") == 2 and types[-1] == "succeeded"
    assert [r["retries"] for r in records if r["type"] == "retried"] == [1, 2]
    assert records[-1]["retries"] == 2


def test_revoked_before_start(stack: Stack, client: CeleryClient) -> None:
    # The worker discards a revoked ETA task (and signals it) when its ETA comes.
    result = client.submit("math.number_sum", (1, 1), countdown=2)
    _types_after(stack, result.id, "received")
    client.revoke(result.id)
    _types_after(stack, result.id, "revoked")


def test_large_args_truncated(stack: Stack, client: CeleryClient, unique: str) -> None:
    key = f"history-rec-{unique}"
    result = client.submit("tests.record", (key, "x" * 20_000))
    result.get(timeout=20)
    records = _types_after(stack, result.id, "received", "succeeded")
    (received,) = [r for r in records if r["type"] == "received"]
    assert set(received["args"]) == {"truncated"} and len(received["args"]["truncated"]) <= 4096
