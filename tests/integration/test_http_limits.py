"""HTTP server limits, against a real API process started the documented way
(``python -m internal.api.server``), probed with raw sockets: header size, header
deadline, keep-alive timeout, connection cap; memory stays bounded."""

from __future__ import annotations

import contextlib
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.procs import ManagedProcess, service_env, wait_for
from tests.support.services import HOST, RedisDb, free_port

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 3.0
KEEPALIVE_TIMEOUT = 2
MAX_HEADER_BYTES = 64 * 1024
#: Generous: the machine is shared and has two cores.
SLACK = 10.0
MIB = 1024 * 1024


@dataclass
class LimitedApi:
    """A running ``python -m internal.api.server`` and how to reach it."""

    proc: ManagedProcess
    port: int
    http: str

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def rss(self) -> int:
        """Resident memory of the API process, in bytes."""
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def healthz(self) -> int:
        """Status of ``GET /healthz`` on a fresh connection."""
        return httpx.get(self.base_url + "/healthz", timeout=10).status_code


def start_api(db: RedisDb, log_dir: Path, name: str, **limits: str) -> LimitedApi:
    """Start the API the way the README documents for production, with ``API_*`` limits."""
    port = free_port()
    env = service_env(db, database_url=f"sqlite+aiosqlite:///{log_dir}/{name}.db", extra=limits)
    argv = [sys.executable, "-m", "internal.api.server", "--host", HOST, "--port", str(port)]
    proc = ManagedProcess(name, argv, env, log_dir).start()
    api = LimitedApi(proc=proc, port=port, http=limits.get("API_HTTP", "auto"))

    def up() -> bool:
        try:
            return api.healthz() == 200
        except httpx.HTTPError:
            assert proc.alive(), proc.log()[-3000:]
            return False

    wait_for(up, timeout=60, what=f"{name} to answer /healthz")
    return api


@pytest.fixture(scope="module", params=["httptools", "h11"])
def limited_api(
    request: pytest.FixtureRequest, session_db: RedisDb, session_tmp: Path
) -> Iterator[LimitedApi]:
    """The API with short timeouts (so the tests are quick), once per HTTP parser."""
    api = start_api(
        session_db,
        session_tmp / "http-limits",
        f"limits-{request.param}",
        API_HTTP=request.param,
        API_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        API_KEEPALIVE_TIMEOUT=str(KEEPALIVE_TIMEOUT),
        API_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        API_MAX_CONNECTIONS="1000",
    )
    try:
        yield api
    finally:
        api.proc.stop()


def connect(api: LimitedApi) -> socket.socket:
    sock = socket.create_connection((HOST, api.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    return sock


def closed_after(sock: socket.socket, limit: float, since: float | None = None) -> tuple[float, bytes]:
    """Read until the server closes the connection: seconds it took (from ``since``,
    a ``time.monotonic()`` value, by default now) and what it sent."""
    started = time.monotonic() if since is None else since
    sock.settimeout(max(0.1, started + limit - time.monotonic()))
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for more than {limit} s") from None
    finally:
        sock.close()
    return time.monotonic() - started, received


def status_of(response: bytes) -> int | None:
    """The status code of a raw HTTP response, ``None`` if there is none."""
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


def send_huge_header(api: LimitedApi, size: int, *, terminated: bool) -> int | None:
    """Send a request whose one header is ``size`` bytes; the status the server answered
    (``None``: it closed the connection without an answer)."""
    sock = connect(api)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    tail = b"\r\n\r\n" if terminated else b""
    chunk = b"a" * MIB
    try:
        sock.sendall(head)
        for _ in range(size // MIB):
            sock.sendall(chunk)
        sock.sendall(tail)
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server closed it while we were still sending; what did it say first?
    _, response = closed_after(sock, HEADER_TIMEOUT + SLACK)
    return status_of(response)


def test_a_normal_request_with_large_but_allowed_headers_still_works(limited_api: LimitedApi) -> None:
    headers = {f"X-Fill-{i}": "v" * 1000 for i in range(40)}  # ~40 KB, under the 64 KiB limit
    response = httpx.get(limited_api.base_url + "/healthz", headers=headers, timeout=10)
    assert response.status_code == 200


def test_a_20_mib_header_is_refused_and_memory_stays_bounded(limited_api: LimitedApi) -> None:
    before = limited_api.rss()
    status = send_huge_header(limited_api, 20 * MIB, terminated=True)
    print(f"\n[{limited_api.http}] 20 MiB header: status {status}")
    assert status in (400, 431, None)

    statuses: list[int | None] = []
    threads = [
        threading.Thread(
            target=lambda: statuses.append(send_huge_header(limited_api, 20 * MIB, terminated=False))
        )
        for _ in range(10)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    after = limited_api.rss()
    print(
        f"[{limited_api.http}] ten unterminated 20 MiB headers: statuses {sorted(statuses, key=str)}, "
        f"API RSS {before / MIB:.0f} -> {after / MIB:.0f} MiB"
    )
    assert len(statuses) == 10 and set(statuses) <= {400, 431, None}
    assert after - before < 40 * MIB
    assert limited_api.healthz() == 200


def test_silent_stalled_and_dribbling_connections_are_closed(limited_api: LimitedApi) -> None:
    opened = time.monotonic()
    silent = connect(limited_api)
    stalled = connect(limited_api)
    stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
    dribbling = connect(limited_api)
    stop = threading.Event()

    def dribble() -> None:  # slowloris: a byte every 0.2 s never completes the head
        with contextlib.suppress(OSError):
            dribbling.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            while not stop.wait(0.2):
                dribbling.sendall(b"X-")

    dribbler = threading.Thread(target=dribble, daemon=True)
    dribbler.start()
    try:
        cases = (("sent nothing", silent), ("stopped mid-headers", stalled), ("dribbled", dribbling))
        for name, sock in cases:
            elapsed, response = closed_after(sock, HEADER_TIMEOUT + SLACK, since=opened)
            print(f"\n[{limited_api.http}] a connection that {name}: closed {elapsed:.1f} s after it opened")
            assert status_of(response) in (None, 408)
    finally:
        stop.set()
        dribbler.join(5)
    assert limited_api.healthz() == 200


def test_keep_alive_idle_and_a_stalled_second_request_are_closed(limited_api: LimitedApi) -> None:
    idle = connect(limited_api)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    elapsed, response = closed_after(idle, KEEPALIVE_TIMEOUT + SLACK)
    assert status_of(response) == 200
    print(f"\n[{limited_api.http}] idle keep-alive connection closed {elapsed:.1f} s after its request")

    second = connect(limited_api)
    second.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = second.recv(65536)
    assert status_of(first) == 200
    second.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ")
    elapsed, _ = closed_after(second, HEADER_TIMEOUT + KEEPALIVE_TIMEOUT + SLACK)
    print(f"[{limited_api.http}] a stalled second request closed after {elapsed:.1f} s")


def test_a_request_that_runs_longer_than_the_header_timeout_is_not_cut(limited_api: LimitedApi) -> None:
    # The deadline covers the head only: a long-poll of 2x the header timeout completes.
    wait = HEADER_TIMEOUT * 2
    response = httpx.get(f"{limited_api.base_url}/api/v1/tasks/http-limits-never?wait={wait}", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "PENDING"


def test_two_hundred_half_open_connections_are_closed_and_the_api_keeps_answering(
    limited_api: LimitedApi,
) -> None:
    sockets = []
    for i in range(200):
        sock = connect(limited_api)
        if i % 2:
            sock.sendall(b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-")
        sockets.append(sock)
    assert limited_api.healthz() == 200  # while all 200 are open
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    started = time.monotonic()
    deadline = started + HEADER_TIMEOUT + SLACK
    still_open = len(sockets)
    while still_open and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                still_open -= 1
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    print(
        f"\n[{limited_api.http}] 200 half-open connections: {200 - still_open} closed by the server "
        f"within {time.monotonic() - started:.1f} s"
    )
    assert still_open == 0
    assert limited_api.healthz() == 200


def test_connections_beyond_the_cap_get_503(session_db: RedisDb, session_tmp: Path) -> None:
    api = start_api(
        session_db,
        session_tmp / "http-limits",
        "limits-cap",
        API_HEADER_TIMEOUT=str(HEADER_TIMEOUT),
        API_MAX_CONNECTIONS="20",
    )
    held = [connect(api) for _ in range(25)]
    try:
        time.sleep(0.5)  # let the server accept them all
        assert api.healthz() == 503
        for sock in held:
            closed_after(sock, HEADER_TIMEOUT + SLACK)
        assert wait_for(lambda: api.healthz() == 200, timeout=SLACK, what="the API to answer again")
    finally:
        for sock in held:
            sock.close()
        api.proc.stop()
