"""Redis faults on the worker side, each while tasks run: every client connection killed
(``CLIENT KILL``), and Redis stalled (``DEBUG SLEEP``). Workers and beat ride them out:
no process exits, nothing accepted is lost, and everything runs again by itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.reliability.conftest import Ledger, worker_and_beat
from tests.support.hardening_tasks import read_runs
from tests.support.procs import wait_for


def _kill_clients(admin: redis.Redis) -> None:
    """Drop every other client connection: the workers', beat's, the producer's."""
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


def _stall(admin: redis.Redis) -> None:
    """Redis answers nobody for 3 s."""
    admin.execute_command("DEBUG", "SLEEP", "3")


@pytest.mark.parametrize(
    "fault, inject", [("client_kill_workers", _kill_clients), ("debug_sleep_3s", _stall)]
)
def test_workers_and_beat_ride_out_redis_faults(
    session_tmp: Path, unique: str, fault: str, inject: Callable[[redis.Redis], None]
) -> None:
    with worker_and_beat(session_tmp, f"{fault}-{unique}", debug_commands=True) as rig:
        client, worker, beat, runs_file = rig.client, rig.worker, rig.beat, rig.runs_file
        ledger = Ledger(fault)
        refused = 0
        try:
            main_pid = worker.pid
            ledger.accepted = [
                client.submit("tests.hardening.append_file", [str(runs_file), 100]).id for _ in range(40)
            ]
            wait_for(lambda: read_runs(runs_file), timeout=30, what="the first task to run")
            faulting = threading.Thread(target=inject, args=(rig.admin,))
            faulting.start()
            for _ in range(20):  # submits during the fault: accepted, or refused with an error
                try:
                    ledger.accepted.append(
                        client.submit("tests.hardening.append_file", [str(runs_file), 100]).id
                    )
                except Exception:
                    refused += 1
                time.sleep(0.05)
            faulting.join()
            over = time.monotonic()
            done_before = len(set(read_runs(runs_file)))
            wait_for(
                lambda: (
                    len(set(read_runs(runs_file))) > done_before
                    or set(read_runs(runs_file)) >= set(ledger.accepted)
                ),
                timeout=60,
                what="a task to finish after the fault",
            )
            recovery = time.monotonic() - over
            wait_for(
                lambda: set(read_runs(runs_file)) >= set(ledger.accepted),
                timeout=120,
                interval=0.5,
                what="every accepted task to run",
            )
            after_wall = time.time()
            wait_for(
                lambda: rig.ticks_file.exists() and rig.ticks_file.stat().st_mtime > after_wall + 1,
                timeout=30,
                what="beat to fire after the fault",
            )
            assert worker.alive() and worker.pid == main_pid and beat.alive()
        finally:
            beat_code, worker_code = rig.stop()
    runs = [r for r in read_runs(runs_file) if r in set(ledger.accepted)]
    figures = ledger.report(runs, refused_submits=refused, recovery_s=round(recovery, 1))
    print(
        f"fault={fault} accepted={figures['accepted']} completed={figures['completed']} "
        f"duplicated={figures['duplicated']} lost={figures['lost']} refused_submits={refused} "
        f"recovery_s={recovery:.1f}"
    )
    assert "Unrecoverable error" not in worker.log() + beat.log()
    assert figures["lost"] == 0
    assert worker_code == 0 and beat_code == 0, (worker_code, beat_code)
