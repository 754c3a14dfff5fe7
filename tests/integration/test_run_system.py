"""The README's first command brings the whole system up and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

import httpx
import pytest

from internal.config.setting import RedisSettings, load_settings
from internal.infra.celery import build_celery_client
from tests.support.procs import REPO_ROOT, ManagedProcess, wait_for
from tests.support.services import free_port, require_redis

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_starts_embedded_redis_api_worker_beat_and_ctrl_c_stops_all(session_tmp) -> None:
    require_redis()  # only to be sure the machine is set up; the runner starts its own
    redis_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "CELERY_", "API_"))}
    env.update(
        REDIS_PORT=str(redis_port),
        API_PORT=str(api_port),
        CELERY_CONCURRENCY="2",
        DATABASE_URL=f"sqlite+aiosqlite:///{session_tmp}/run-system.db",
    )
    runner = ManagedProcess("run-system", [str(REPO_ROOT / "scripts" / "run")], env, session_tmp / "run")
    runner.start()
    try:
        runner.wait_for_log(rf"embedded redis-server started on 127.0.0.1:{redis_port}", timeout=120)
        runner.wait_for_log(r"worker\s*\|.*\bready\.", timeout=60)
        wait_for(lambda: _get(f"http://127.0.0.1:{api_port}/healthz") == 200, timeout=30, what="API up")

        settings = load_settings(env_file=None)
        settings.redis = RedisSettings(port=redis_port, db=0)
        client = build_celery_client(settings)
        assert client.get_result(client.submit("math.number_sum", (1, 2)).id, timeout=30) == 3
        client.close()

        for command in readme_curl_commands():
            command = command.replace("127.0.0.1:8000", f"127.0.0.1:{api_port}")
            command = command.replace("curl -s", "curl -sf", 1)
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, f"README command failed: {command}\n{done.stdout}{done.stderr}"

        pids = [int(p) for p in re.findall(r"\(pid (\d+)", runner.log())]
        assert len(pids) == 5  # redis-server, api, worker, beat, history-recorder
        runner.send(signal.SIGINT)
        assert runner.wait(90) == 0
        assert not [pid for pid in pids if _alive(pid)]
        log = runner.log()
        assert "Warm shutdown" in log and "embedded redis-server stopped" in log
    finally:
        runner.stop()
        shutil.rmtree(REPO_ROOT / "var" / "redis" / str(redis_port), ignore_errors=True)


def readme_curl_commands() -> list[str]:
    """The curl commands of the README's HTTP API section, continuation lines joined."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## HTTP API", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    commands = [line.strip() for line in joined.splitlines() if line.strip().startswith("curl")]
    assert len(commands) >= 15
    return commands


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0
