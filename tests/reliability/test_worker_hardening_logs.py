"""Log lines cannot be forged: control characters in user data reach the worker log
escaped, so a kwargs key cannot start a line of its own or send terminal escapes."""

from __future__ import annotations

from pathlib import Path

from tests.reliability.conftest import client_for
from tests.support.procs import service_env, start_worker, wait_for
from tests.support.services import RedisDb

FORGED_PREFIX = "[2026-12-01 14:00:00,000: CRITICAL/MainProcess] FORGED"


def test_control_characters_in_task_data_are_escaped_in_the_worker_log(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"logs-{unique}", f"logs-runs-{unique}"
    client = client_for(redis_db.url)
    worker = start_worker(
        f"logs-{unique}",
        service_env(redis_db, database_url=f"sqlite+aiosqlite:///{session_tmp}/logs.db"),
        session_tmp / "logs",
        queues=[queue],
        concurrency=1,
    )
    forged = "\n" + FORGED_PREFIX + " \x1b[31mred\x1b[0m\r\x85"
    try:
        # Sent as a hostile producer would (no client-side validation): tests.work has no
        # such keyword, so the worker logs the TypeError with its message and traceback.
        bad = client.app.send_task("tests.work", [1, key], kwargs={forged: 1}, queue=queue)
        error = client.get_result(bad.id, timeout=30, propagate=False)
        assert isinstance(error, TypeError)
        wait_for(lambda: "FORGED" in worker.log(), timeout=10, what="the failure in the log")
        good = client.submit("tests.work", [1, key], queue=queue).id
        wait_for(lambda: good.encode() in redis_db.client.lrange(key, 0, -1), timeout=30, what="a task after")
    finally:
        worker.stop()
    raw = worker.log_path.read_bytes()
    lines = raw.decode(errors="replace").splitlines()
    forged_lines = [line for line in lines if line.startswith(FORGED_PREFIX)]
    escaped = sum("\\n" + FORGED_PREFIX in line for line in lines)
    esc_bytes = raw.count(b"\x1b")
    print(f"\n[log escaping] forged_lines={len(forged_lines)} esc_bytes={esc_bytes} escaped={escaped}")
    assert not forged_lines, forged_lines
    assert b"\x1b" not in raw and b"\r" not in raw
    assert escaped >= 1, "the forged key should appear, escaped, in the failure's log lines"
    assert "Traceback (most recent call last):" in worker.log()  # tracebacks keep their lines
