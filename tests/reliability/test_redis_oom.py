"""Redis runs out of memory (``maxmemory`` below use, ``noeviction``) while tasks run and
beat fires: workers and beat back off and carry on, nothing accepted is lost or run
twice, and everything recovers by itself when memory is available again."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import redis

from tests.reliability.conftest import Ledger, client_for, worker_and_beat
from tests.support.hardening_tasks import read_runs
from tests.support.procs import ManagedProcess, service_env, wait_for, worker_argv
from tests.support.services import private_redis


def test_redis_out_of_memory_loses_nothing_and_stops_nobody(session_tmp: Path, unique: str) -> None:
    with worker_and_beat(session_tmp, f"oom-{unique}") as rig:
        admin, client, worker, beat, runs_file = rig.admin, rig.client, rig.worker, rig.beat, rig.runs_file
        admin.config_set("maxmemory-policy", "noeviction")
        ledger = Ledger("oom")
        try:
            main_pid = worker.pid
            ledger.accepted = [
                client.submit("tests.hardening.append_file", [str(runs_file), 250]).id for _ in range(40)
            ]
            wait_for(lambda: read_runs(runs_file), timeout=30, what="the first task to run")
            # Ballast (SETRANGE allocates it without a large query buffer), so that the
            # queue draining while Redis refuses writes cannot end the state by itself.
            admin.setrange(f"ballast-{unique}", 2_000_000, "x")
            _fill_up(admin, unique)
            refused = 0
            for _ in range(5):  # submits while Redis refuses writes fail, or are accepted
                try:
                    ledger.accepted.append(
                        client.submit("tests.hardening.append_file", [str(runs_file), 250]).id
                    )
                except Exception:
                    refused += 1
            time.sleep(8)
            assert _refused(admin, unique), "the out-of-memory state did not last"
            alive_during = worker.alive() and beat.alive()
            admin.config_set("maxmemory", "0")
            lifted, lifted_wall = time.monotonic(), time.time()
            wait_for(
                lambda: set(read_runs(runs_file)) >= set(ledger.accepted),
                timeout=120,
                interval=0.5,
                what="every accepted task to run",
            )
            recovery = time.monotonic() - lifted
            wait_for(
                lambda: rig.ticks_file.exists() and rig.ticks_file.stat().st_mtime > lifted_wall + 1,
                timeout=30,
                what="beat to fire after the limit was lifted",
            )
            statuses = client.get_statuses(ledger.accepted)
            after = client.submit("tests.hardening.append_file", [str(runs_file)]).id
            wait_for(lambda: after in read_runs(runs_file), timeout=30, what="a task after recovery")
            assert worker.alive() and worker.pid == main_pid and beat.alive()
            assert alive_during, "a process exited while Redis was out of memory"
            assert client.app.control.inspect(timeout=2).ping(), "the worker does not answer ping"
        finally:
            with contextlib.suppress(redis.RedisError):
                admin.config_set("maxmemory", "0")
            beat_code, worker_code = rig.stop()
    runs = [r for r in read_runs(runs_file) if r in set(ledger.accepted)]
    figures = ledger.report(runs, refused_submits=refused, recovery_s=round(recovery, 1))
    print(
        f"oom: accepted={figures['accepted']} completed={figures['completed']} "
        f"duplicated={figures['duplicated']} lost={figures['lost']} recovery_s={recovery:.1f}"
    )
    log = worker.log() + beat.log()
    assert "Unrecoverable error" not in log
    assert "out of memory" in log.lower(), "no warning said why the worker waited"
    assert {statuses[i] for i in ledger.accepted} == {"SUCCESS"}, statuses
    assert figures["lost"] == 0 and figures["duplicated"] == 0
    assert worker_code == 0 and beat_code == 0, (worker_code, beat_code)


@pytest.mark.parametrize("pool", ["prefork", "asyncio"])
def test_a_store_refused_past_the_retry_period_requeues_the_task(
    session_tmp: Path, unique: str, pool: str
) -> None:
    """Redis refuses a task's result store for longer than the retry period (2 s here,
    600 s by default): its message is requeued, not acknowledged without a result; the
    task runs again and its result is stored once memory is back; the worker process
    stays up. On prefork the pool process exits; on the asyncio pool (a sync and an
    ``async def`` task) the pool reports the job lost."""
    from tests.support.hardening_tasks import INCLUDE

    name = f"oom-give-up-{pool}-{unique}"
    runs_file = session_tmp / f"{name}-runs.txt"
    with private_redis() as server:
        env = service_env(
            server.url,
            database_url=f"sqlite+aiosqlite:///{session_tmp}/{name}.db",
            extra={"CELERY_EXTRA_INCLUDE": INCLUDE, "TASKSYS_TEST_OOM_RETRY_PERIOD": "2"},
        )
        argv = worker_argv(
            queues=["default"],
            hostname=f"{name}@%h",
            concurrency=2,
            pool="custom" if pool == "asyncio" else "prefork",
        )
        argv[argv.index("-A") + 1] = "tests.support.short_oom_retry.app"
        worker = ManagedProcess(name, argv, env, session_tmp / name).start()
        admin = redis.Redis.from_url(server.url, socket_timeout=10)
        client = client_for(server.url)
        try:
            worker.wait_for_log(r"\bready\.", timeout=60)
            names = ["tests.hardening.append_file"]
            if pool == "asyncio":
                names.append("tests.hardening.append_file_async")
            admin.config_set("maxmemory-policy", "noeviction")
            ids = [client.submit(task, [str(runs_file), 1500]).id for task in names]
            started = lambda: all(client.get_status(i) == "STARTED" for i in ids)  # noqa: E731
            wait_for(started, timeout=30, what="the tasks to start")
            admin.setrange(f"ballast-{unique}", 2_000_000, "x")
            _fill_up(admin, unique)
            # Each run ends 1.5 s in; its store is refused for 2 s, then the message is
            # requeued (the requeue only moves data, so Redis takes it) and runs again.
            wait_for(
                lambda: all(read_runs(runs_file).count(i) >= 2 for i in ids),
                timeout=60,
                interval=0.5,
                what="every task to run again",
            )
            assert worker.alive()
            admin.config_set("maxmemory", "0")
            assert [client.get_result(i, timeout=60) for i in ids] == ids
            assert client.get_statuses(ids) == dict.fromkeys(ids, "SUCCESS")
        finally:
            with contextlib.suppress(redis.RedisError):
                admin.config_set("maxmemory", "0")
            code = worker.stop()
            admin.close()
            client.close()
    log = worker.log()
    assert "cannot be stored" in log and "requeued" in log, log[-3000:]
    assert code == 0, code


def _fill_up(admin: redis.Redis, unique: str) -> None:
    """Set ``maxmemory`` just below what Redis uses now, until it refuses writes."""
    for _ in range(10):
        memory = admin.info("memory")
        # Client buffers come and go (~100-300 KB here); stay below use without them.
        used = int(memory["used_memory"]) - int(memory.get("mem_clients_normal", 0))
        admin.config_set("maxmemory", str(used - 128 * 1024))
        time.sleep(0.2)
        if _refused(admin, unique):
            return
    raise AssertionError("could not bring Redis to refuse writes")


def _refused(admin: redis.Redis, unique: str) -> bool:
    try:
        admin.set(f"oom-check-{unique}", "1")
    except redis.exceptions.OutOfMemoryError:
        return True
    admin.delete(f"oom-check-{unique}")
    return False
