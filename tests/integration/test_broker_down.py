"""With the broker unreachable, producers fail fast with a clear, password-free error."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from pkg.celery_task import BrokerUnavailableError, CeleryClient
from tests.support.procs import REPO_ROOT
from tests.support.services import free_port

pytestmark = pytest.mark.integration


def test_submit_fails_fast_when_nothing_listens() -> None:
    port = free_port()
    client = CeleryClient(
        "down", f"redis://:s3cr3t-pw@127.0.0.1:{port}/0", f"redis://:s3cr3t-pw@127.0.0.1:{port}/0"
    )
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as info:
        client.submit("math.number_sum", (1, 2))
    elapsed = time.monotonic() - started
    print(f"submit with the broker down failed after {elapsed:.2f} s")
    assert elapsed < 3
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "s3cr3t-pw" not in str(info.value)
    report = client.ping(timeout=1)
    assert report["broker"]["ok"] is False and report["backend"]["ok"] is False
    assert report["workers"] == []
    assert "s3cr3t-pw" not in repr(report)


def test_init_celery_says_what_is_wrong_without_the_password() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_"))}
    env.update(REDIS_PORT=str(free_port()), REDIS_PASSWORD="s3cr3t-pw", PYTHONPATH=str(REPO_ROOT))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", "from internal.infra.celery import init_celery; init_celery()"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert time.monotonic() - started < 15
    assert "BrokerUnavailableError: Celery cannot reach its broker" in proc.stderr
    assert "Start Redis or set REDIS_HOST/REDIS_PORT" in proc.stderr
    assert "s3cr3t-pw" not in proc.stderr + proc.stdout
