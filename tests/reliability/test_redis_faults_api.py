"""Redis faults as the API sees them, on a private redis-server (AOF on) with a real
worker and a real API (``python -m internal.api.server``): stale pooled connections
after a restart or ``CLIENT KILL`` cost no 503, a stall (``CLIENT PAUSE``) gives only
successes or 503s, and a Redis out of memory makes ``/readyz`` (and submits) say so.
Each fault prints one summary line; none loses a task or answers a 5xx other than 503."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from tests.support.procs import ManagedProcess, service_env, start_worker, wait_for
from tests.support.services import HOST, PrivateRedis, free_port, private_redis


@dataclass
class Rig:
    """A private Redis, one worker and one API on it."""

    server: PrivateRedis
    worker: ManagedProcess
    api: ManagedProcess
    base_url: str

    def redis(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.server.port, socket_timeout=10)

    def api_redis_addresses(self) -> list[str]:
        """``ip:port`` of every connection the API process holds to Redis."""
        return [
            f"{conn.laddr.ip}:{conn.laddr.port}"
            for conn in psutil.Process(self.api.pid).net_connections(kind="tcp")
            if conn.raddr and conn.raddr.port == self.server.port
        ]


@pytest.fixture(scope="module")
def rig(session_tmp: Path) -> Iterator[Rig]:
    with private_redis(appendonly=True) as server:
        logs = session_tmp / "redis-faults-api"
        env = service_env(server.url, database_url=f"sqlite+aiosqlite:///{logs}/faults.db")
        worker = start_worker("faults-worker", env, logs, queues=["default"], concurrency=2)
        port = free_port()
        argv = [sys.executable, "-m", "internal.api.server", "--host", HOST, "--port", str(port)]
        api = ManagedProcess("faults-api", argv, env, logs).start()
        base_url = f"http://{HOST}:{port}"
        try:
            wait_for(lambda: _ready(base_url), timeout=60, what="the API to be ready")
            yield Rig(server=server, worker=worker, api=api, base_url=base_url)
        finally:
            api.stop()
            worker.stop()


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Traffic:
    """What a burst of requests got: statuses, 503 reasons, ids accepted."""

    statuses: Counter[int] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)
    first_ok: float | None = None

    def note(self, what: str, response: httpx.Response | None) -> None:
        status = response.status_code if response is not None else 0
        self.statuses[status] += 1
        self.reasons[f"{what} {status}"] += 1
        if response is not None and status < 300 and self.first_ok is None:
            self.first_ok = time.monotonic()

    @property
    def non503_5xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500 and status != 503)

    @property
    def unavailable(self) -> int:
        return self.statuses[503]


async def _burst(
    base_url: str, key: str, *, posts: int, polls: int, traffic: Traffic, wait: float = 5
) -> None:
    """``posts`` submits, then ``polls`` long-polls spread over the ids accepted so far
    (and earlier ones), at most 25 requests at a time."""
    limit = asyncio.Semaphore(25)
    pool = httpx.Limits(max_connections=25)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=pool) as http:

        async def post() -> None:
            async with limit:
                try:
                    r = await http.post("/api/v1/tasks", json={"task": "tests.work", "args": [1, key]})
                except httpx.HTTPError:
                    traffic.note("POST", None)
                    return
                traffic.note("POST", r)
                if r.status_code == 202:
                    traffic.accepted.append(r.json()["task_id"])

        async def poll(task_id: str) -> None:
            async with limit:
                try:
                    r = await http.get(f"/api/v1/tasks/{task_id}", params={"wait": wait})
                except httpx.HTTPError:
                    traffic.note("GET", None)
                    return
                traffic.note("GET", r)

        await asyncio.gather(*(post() for _ in range(posts)))
        ids = traffic.accepted or ["faults-unknown-id"]
        await asyncio.gather(*(poll(ids[i % len(ids)]) for i in range(polls)))


def _settle(rig: Rig, key: str, accepted: list[str]) -> tuple[int, int, int]:
    """Wait for every accepted task to run; completed, duplicated, lost."""
    db = rig.redis()
    try:
        wait_for(
            lambda: set(accepted) <= {raw.decode() for raw in db.lrange(key, 0, -1)},
            timeout=120,
            interval=0.5,
            what="every accepted task to run",
        )
        runs = [raw.decode() for raw in db.lrange(key, 0, -1)]
    finally:
        db.close()
    completed = len(set(runs) & set(accepted))
    return completed, len(runs) - len(set(runs)), len(set(accepted) - set(runs))


def _summary(
    fault: str, traffic: Traffic, counts: tuple[int, int, int], recovery_s: float, api_log: str = ""
) -> None:
    """The fault's summary line, then statuses and the API's reasons for any 503/500."""
    completed, duplicated, lost = counts
    print(
        f"\nfault={fault} accepted={len(traffic.accepted)} completed={completed} duplicated={duplicated} "
        f"lost={lost} non503_5xx={traffic.non503_5xx} recovery_s={recovery_s:.2f}"
    )
    print(f"  requests={dict(traffic.reasons)}")
    problems = Counter(
        line.split("broker unavailable: ", 1)[-1][:200]
        for line in api_log.splitlines()
        if "broker unavailable" in line or "Exception in ASGI" in line
    )
    for reason, n in problems.most_common(8):
        print(f"  API log, {n} x {reason}")


def _warm(rig: Rig, key: str) -> None:
    """Fill the API's pools with connections (submits, waits and reads in parallel)."""
    warm = Traffic()
    asyncio.run(_burst(rig.base_url, key, posts=60, polls=120, traffic=warm, wait=2))
    assert warm.statuses.keys() <= {200, 202}, warm.statuses


def test_restart_leaves_no_stale_connection_behind(rig: Rig) -> None:
    key = "faults-restart"
    _warm(rig, key)
    rig.server.stop()
    rig.server.start()  # same port, AOF: returns once Redis answers PING
    back, mark = time.monotonic(), len(rig.api.log())
    traffic = Traffic()
    asyncio.run(_burst(rig.base_url, key, posts=100, polls=400, traffic=traffic))
    counts = _settle(rig, key, traffic.accepted)
    _summary("redis_restart", traffic, counts, (traffic.first_ok or back) - back, rig.api.log()[mark:])
    assert traffic.unavailable == 0 and traffic.non503_5xx == 0
    assert counts[2] == 0
    assert rig.worker.alive() and rig.api.alive()


def test_killed_idle_connections_are_replaced(rig: Rig) -> None:
    key = "faults-client-kill"
    _warm(rig, key)
    time.sleep(1)  # idle
    db = rig.redis()
    try:
        addresses = rig.api_redis_addresses()
        killed = sum(int(db.execute_command("CLIENT", "KILL", "ADDR", addr)) for addr in addresses)
    finally:
        db.close()
    assert killed > 0
    started, mark = time.monotonic(), len(rig.api.log())
    traffic = Traffic()
    asyncio.run(_burst(rig.base_url, key, posts=100, polls=200, traffic=traffic))
    counts = _settle(rig, key, traffic.accepted)
    recovery = (traffic.first_ok or started) - started
    _summary(f"client_kill_api_{killed}_connections", traffic, counts, recovery, rig.api.log()[mark:])
    assert traffic.unavailable == 0 and traffic.non503_5xx == 0
    assert counts[2] == 0


def test_a_stall_gives_successes_or_503_never_500(rig: Rig) -> None:
    # DEBUG SLEEP needs enable-debug-command, which the private server does not set;
    # CLIENT PAUSE stalls every client's commands the same way (Redis answers nothing).
    key = "faults-stall"
    _warm(rig, key)
    traffic = Traffic()
    mark = len(rig.api.log())

    def stall() -> None:
        time.sleep(0.5)
        db = rig.redis()
        try:
            db.execute_command("CLIENT", "PAUSE", "2000", "ALL")
            time.sleep(2)
        finally:
            db.close()

    staller = threading.Thread(target=stall)
    staller.start()
    asyncio.run(_burst(rig.base_url, key, posts=100, polls=200, traffic=traffic))
    staller.join(30)
    stalled_end = time.monotonic()
    after = Traffic()
    asyncio.run(_burst(rig.base_url, key, posts=10, polls=10, traffic=after))
    traffic.accepted += after.accepted
    counts = _settle(rig, key, traffic.accepted)
    recovery = max(0.0, (after.first_ok or stalled_end) - stalled_end)
    _summary("stall_client_pause_2s", traffic, counts, recovery, rig.api.log()[mark:])
    assert traffic.non503_5xx == 0 and after.non503_5xx == 0
    assert set(after.statuses) <= {200, 202}, after.statuses  # recovered
    assert counts[2] == 0


def test_out_of_memory_is_reported_by_readyz_and_submits_get_503(rig: Rig) -> None:
    db = rig.redis()
    http = httpx.Client(base_url=rig.base_url, timeout=10)
    try:
        assert http.get("/readyz").status_code == 200
        used = int(db.info("memory")["used_memory"])
        db.config_set("maxmemory-policy", "noeviction")
        db.config_set("maxmemory", str(max(1024 * 1024, used // 2)))
        ready = http.get("/readyz")
        submit = http.post("/api/v1/tasks", json={"task": "tests.work", "args": [1, "faults-oom"]})
        print(f"\n/readyz with Redis full: {ready.status_code} {ready.json()['checks']['redis']['error']}")
        print(f"POST /api/v1/tasks with Redis full: {submit.status_code} {submit.text[:300]}")
        assert ready.status_code == 503
        error = ready.json()["checks"]["redis"]["error"]
        assert error.startswith("OutOfMemoryError: Redis is out of memory") and "maxmemory" in error
        assert submit.status_code == 503 and submit.json()["error"]["code"] == "store_full"
        started = time.monotonic()
        revoke = http.delete("/api/v1/tasks/oom-revoke")
        assert revoke.status_code == 503 and revoke.json()["error"]["code"] == "store_full"
        assert time.monotonic() - started < 5  # producers fail fast; only workers wait
        assert "OutOfMemoryError" in rig.api.log()  # the API's log says why
    finally:
        db.config_set("maxmemory", "0")
        db.close()
    try:
        wait_for(lambda: http.get("/readyz").status_code == 200, timeout=10, what="/readyz after lifting")
        submit = http.post("/api/v1/tasks", json={"task": "tests.work", "args": [1, "faults-oom"]})
        assert submit.status_code == 202
    finally:
        http.close()
