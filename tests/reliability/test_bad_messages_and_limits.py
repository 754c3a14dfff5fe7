"""Poison messages, dead letters, time limits, leaking tasks and durable revokes."""

from __future__ import annotations

import base64
import json
import pickle
import time
from pathlib import Path

from tests.reliability.conftest import Ledger, client_for
from tests.support.procs import prefork_only, service_env, start_worker, wait_for
from tests.support.services import RedisDb


def _env(db: RedisDb, tmp: Path, **extra: str) -> dict[str, str]:
    return service_env(db, database_url=f"sqlite+aiosqlite:///{tmp}/reliability.db", extra=extra)


def _queue_keys(db: RedisDb, queue: str) -> list[bytes]:
    return [k for k in db.client.keys(f"{queue}*") if not k.startswith(b"_kombu")]


def test_poison_messages_are_refused_dead_lettered_and_do_not_block_the_queue(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"poison-{unique}", f"poison-runs-{unique}"
    client = client_for(redis_db.url)
    # A real message for tests.work, taken from a queue no worker consumes, to forge from.
    client.app.send_task("tests.work", [10, key], queue=f"hold-{unique}", task_id=f"template-{unique}")
    (hold_key,) = _queue_keys(redis_db, f"hold-{unique}")
    template = json.loads(redis_db.client.rpop(hold_key))

    def forged(
        task_id: str,
        *,
        task: str = "tests.work",
        content_type: str = "application/json",
        body: bytes | None = None,
    ) -> str:
        message = json.loads(json.dumps(template))
        message["headers"].update(id=task_id, task=task)
        message["properties"]["correlation_id"] = task_id
        message["properties"]["delivery_info"]["routing_key"] = queue
        message["content-type"] = content_type
        if body is not None:
            message["body"] = base64.b64encode(body).decode()
        return json.dumps(message)

    poison = {
        f"pickled-{unique}": forged(
            f"pickled-{unique}",
            content_type="application/x-python-serialize",
            body=pickle.dumps(([10, key], {}, {})),
        ),
        f"garbled-{unique}": forged(f"garbled-{unique}", body=b'[[10, "x"], {"unterminated'),
        f"unknown-{unique}": forged(f"unknown-{unique}", task="no.such.task"),
    }
    for payload in poison.values():
        redis_db.client.lpush(queue, payload)
    ledger = Ledger("poison messages")
    ledger.accepted = [client.submit("tests.work", [10, key], queue=queue).id for _ in range(20)]
    worker = start_worker(
        f"poison-{unique}", _env(redis_db, session_tmp), session_tmp / "poison", queues=[queue], concurrency=1
    )
    try:
        wait_for(
            lambda: set(ledger.runs(redis_db.client, key)) >= set(ledger.accepted),
            timeout=60,
            what="the good tasks behind the poison",
        )
        wait_for(lambda: client.dead_letters()[0] >= 3, timeout=20, what="three dead letters")
    finally:
        worker.stop()
    runs = ledger.runs(redis_db.client, key)
    assert not set(poison) & set(runs), "a poison message was executed"
    entries = {e["task_id"]: e for e in client.dead_letters()[1]}
    reasons = {task_id: entries[task_id]["reason"] for task_id in poison}
    print(f"\n[poison messages] dead-lettered: {reasons}")
    assert reasons[f"unknown-{unique}"] == "unregistered"
    assert reasons[f"pickled-{unique}"] in ("undecodable", "invalid")
    assert reasons[f"garbled-{unique}"] in ("undecodable", "invalid")
    assert entries[f"unknown-{unique}"]["resubmittable"] is True
    log = worker.log()
    assert "no.such.task" in log and ("x-python-serialize" in log or "ContentDisallowed" in log)
    figures = ledger.report(runs, poison=len(poison), dead_lettered=len(poison))
    assert figures["lost"] == 0


def test_exhausted_retries_are_dead_lettered_and_can_be_resubmitted(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue = f"dlq-{unique}"
    client = client_for(redis_db.url)
    worker = start_worker(
        f"dlq-{unique}", _env(redis_db, session_tmp), session_tmp / "dlq", queues=[queue], concurrency=1
    )
    try:
        task_id = client.submit("tests.always_fails", [unique], queue=queue).id
        wait_for(lambda: client.get_status(task_id) == "FAILURE", timeout=30, what="retries to run out")
        entry = wait_for(lambda: _entry(client, task_id), timeout=10, what="the dead letter")
        assert entry["reason"] == "failed" and entry["task"] == "tests.always_fails"
        assert entry["error"] == {"type": "TransientError", "message": f"still failing: {unique}"}
        assert (
            entry["retries"] == 2
            and entry["queue"] == queue
            and "Traceback" not in (entry["traceback"] or "x")
        )
        assert entry["args"] == [unique] and entry["resubmittable"] is True
        assert client.resubmit_dead_letter(entry["id"]) == task_id
        assert _entry(client, task_id) is None
        wait_for(lambda: _entry(client, task_id), timeout=30, what="the re-submitted task to fail again")
        assert client.delete_dead_letter(task_id) is True and client.delete_dead_letter(task_id) is False
    finally:
        worker.stop()


def _entry(client, task_id: str):  # type: ignore[no-untyped-def]
    return next((e for e in client.dead_letters()[1] if e.get("task_id") == task_id), None)


@prefork_only
def test_time_limits_soft_cleans_up_hard_replaces_the_process(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"limits-{unique}", f"limits-runs-{unique}"
    client = client_for(redis_db.url)
    worker = start_worker(
        f"limits-{unique}", _env(redis_db, session_tmp), session_tmp / "limits", queues=[queue], concurrency=1
    )
    try:
        pid_before = client.get_result(client.submit("tests.hook_probe", queue=queue).id, timeout=30)["pid"]
        soft = client.submit("tests.soft_limited", [10, key], queue=queue, soft_time_limit=1, time_limit=5)
        error = client.get_result(soft.id, timeout=30, propagate=False)
        assert type(error).__name__ == "SoftTimeLimitExceeded"
        assert f"cleaned-up:{soft.id}" in [r.decode() for r in redis_db.client.lrange(key, 0, -1)]
        hard = client.submit("tests.stubborn", [30, key], queue=queue, soft_time_limit=1, time_limit=2)
        error = client.get_result(hard.id, timeout=30, propagate=False)
        assert type(error).__name__ == "TimeLimitExceeded"
        after = [client.submit("tests.work", [10, key], queue=queue).id for _ in range(5)]
        wait_for(
            lambda: set(after) <= {r.decode() for r in redis_db.client.lrange(key, 0, -1)},
            timeout=30,
            what="the tasks after the killed one",
        )
        pid_after = client.get_result(client.submit("tests.hook_probe", queue=queue).id, timeout=30)["pid"]
        dead = {e["task_id"]: e for e in client.dead_letters()[1]}
    finally:
        worker.stop()
    print(
        f"\n[time limits] soft cleaned up, hard replaced process {pid_before} -> {pid_after}, "
        f"dead-lettered: {sorted(dead[i]['error']['type'] for i in (soft.id, hard.id))}"
    )
    assert pid_after != pid_before
    assert dead[hard.id]["error"]["type"] == "TimeLimitExceeded"


@prefork_only
def test_leaking_task_recycles_its_process_and_loses_nothing(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"leak-{unique}", f"leak-runs-{unique}"
    client = client_for(redis_db.url)
    worker = start_worker(
        f"leak-{unique}",
        _env(redis_db, session_tmp),
        session_tmp / "leak",
        queues=[queue],
        concurrency=1,
        extra=["--max-memory-per-child=150000"],
    )
    ledger = Ledger("leaking task")
    try:
        ledger.accepted = [client.submit("tests.leak", [25, key], queue=queue).id for _ in range(10)]
        wait_for(lambda: len(redis_db.client.lrange(key, 0, -1)) >= 10, timeout=90, what="all leaking tasks")
    finally:
        worker.stop()
    rows = [r.decode() for r in redis_db.client.lrange(key, 0, -1)]
    pids = {row.split(":")[1] for row in rows}
    figures = ledger.report([row.split(":")[0] for row in rows], processes=len(pids))
    assert figures["lost"] == 0
    assert len(pids) >= 2, "the process never recycled"


def test_revokes_survive_worker_restarts(redis_db: RedisDb, session_tmp: Path, unique: str) -> None:
    """A worker holds an ETA task; it is revoked; the worker restarts, the message goes
    back to the queue and a new worker gets it: only the shared revoke list stops it."""
    queue, key = f"revoke-{unique}", f"revoke-runs-{unique}"
    client = client_for(redis_db.url)
    env = _env(redis_db, session_tmp)
    logs = session_tmp / "revoke"
    queued = client.submit("tests.work", [10, key], queue=f"{queue}-later").id  # no worker consumes it yet
    worker = start_worker(f"revoke-a-{unique}", env, logs, queues=[queue], concurrency=1)
    # Sent once the worker is up, with an ETA far enough ahead that a slow machine still
    # revokes it before it is due.
    held = client.submit("tests.work", [10, key], queue=queue, countdown=15).id
    due = time.time() + 15
    try:
        wait_for(
            lambda: client.app.control.inspect(timeout=1).scheduled(), timeout=20, what="the ETA task held"
        )
        client.revoke(held)
        client.revoke(queued)
    finally:
        worker.stop()  # warm shutdown: the held message goes back to the queue
    for name in ("b", "c"):  # workers that never saw the broadcast
        worker = start_worker(
            f"revoke-{name}-{unique}", env, logs, queues=[queue, f"{queue}-later"], concurrency=1
        )
        try:
            time.sleep(max(3.0, due + 2 - time.time()))  # past the ETA
        finally:
            worker.stop()
    runs = [r.decode() for r in redis_db.client.lrange(key, 0, -1)]
    statuses = client.get_statuses([held, queued])
    print(
        f"\n[durable revokes] runs of revoked tasks: {len(set(runs) & {held, queued})}, statuses {statuses}"
    )
    assert held not in runs and queued not in runs
    assert set(statuses.values()) == {"REVOKED"}
