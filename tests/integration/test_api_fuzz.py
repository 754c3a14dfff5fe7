"""Fuzz every operation of the OpenAPI schema against a live API: never a 5xx."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import API_TOKEN, Stack
from tests.support.procs import ManagedProcess, service_env, wait_for
from tests.support.services import RedisDb, free_port, reserve_redis_db

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fuzz_api(stack: Stack, session_tmp) -> Iterator[str]:
    """An API on a Redis database of its own (no worker), so fuzzed requests touch nothing else."""
    db: RedisDb = reserve_redis_db()
    port = free_port()
    env = {**service_env(db, database_url=stack.database_url), "API_TOKEN": API_TOKEN}
    argv = [sys.executable, "-m", "internal.api.server", "--host", "127.0.0.1", "--port", str(port)]
    proc = ManagedProcess("fuzz-api", argv, env, session_tmp / "fuzz").start()
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        wait_for(lambda: _up(httpx, base), timeout=60, what="fuzz API")
        yield base
    finally:
        proc.stop()
        assert "Traceback" not in proc.log(), proc.log()[-5000:]
        db.release()


def _up(httpx, base: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        return httpx.get(base + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_no_server_errors(fuzz_api: str, tmp_path: Path) -> None:
    """schemathesis (CLI) over every operation, bounded examples, in every phase
    including stateful sequences, checking only for 5xx."""
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{fuzz_api}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "20261124",
            "--header",
            f"Authorization: Bearer {API_TOKEN}",
            # above the long-poll cap (wait <= 60 s): a fuzzed wait on an unknown id is
            # answered only when it runs out, which is the documented behaviour
            "--request-timeout",
            "65",
            "--continue-on-failure",
            # every phase, the stateful one too: sequences built from the schema's links
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its example cache stays out of the checkout; each run starts afresh
    )
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
