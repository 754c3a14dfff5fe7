"""Operational views: queue lengths, workers, readiness of every dependency."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError, RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from internal.schemas import CheckOut, Readiness, WorkerInfo
from pkg.celery_task import CeleryClient

__all__ = ["list_workers", "queue_lengths", "readiness", "redis_accepts_writes"]

CHECK_TIMEOUT = 2.0


def queue_lengths(*, client: CeleryClient) -> dict[str, int]:
    """Messages waiting in every known queue."""
    return client.queue_lengths()


async def list_workers(*, client: CeleryClient, timeout: float = 1.0) -> list[WorkerInfo]:
    """Workers that answer within ``timeout``: status, active tasks, processed counts,
    pool and queues. No worker is an empty list, not an error."""
    inspect = client.app.control.inspect(timeout=timeout)
    replies = await asyncio.gather(
        asyncio.to_thread(inspect.stats),
        asyncio.to_thread(inspect.active),
        asyncio.to_thread(inspect.active_queues),
        return_exceptions=True,
    )
    stats, active, queues = (reply if isinstance(reply, dict) else {} for reply in replies)
    workers = []
    for name in sorted(set(stats) | set(active) | set(queues)):
        worker_stats: dict[str, Any] = stats.get(name) or {}
        pool = worker_stats.get("pool") or {}
        workers.append(
            WorkerInfo(
                name=name,
                status="online",
                active=[_active(task) for task in active.get(name) or []],
                processed={str(k): int(v) for k, v in (worker_stats.get("total") or {}).items()},
                pool={
                    "implementation": pool.get("implementation"),
                    "max_concurrency": pool.get("max-concurrency"),
                    "processes": pool.get("processes", []),
                },
                queues=[q["name"] for q in queues.get(name) or [] if isinstance(q, dict) and "name" in q],
            )
        )
    return workers


def _active(task: dict[str, Any]) -> dict[str, Any]:
    return {key: task.get(key) for key in ("id", "name", "args", "kwargs", "time_start", "worker_pid")}


async def _timed(probe: Any) -> CheckOut:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe(), CHECK_TIMEOUT)
    except Exception as exc:  # a health check reports every failure, it never raises
        return CheckOut(
            ok=False,
            latency_ms=None,
            error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        )
    return CheckOut(ok=True, latency_ms=round((time.perf_counter() - started) * 1000, 2), error=None)


#: Key of this process's write probe (expires by itself; never shared between processes).
PROBE_KEY = f"tasksys:readyz:{socket.gethostname()}:{os.getpid()}"


async def redis_accepts_writes(redis: Redis) -> None:
    """PING is not enough: a Redis at ``maxmemory`` with ``noeviction`` answers PING and
    reads but refuses every write, so submits would fail while readiness said ok. Write
    a tiny key with a short TTL instead; on refusal, say how full Redis is."""
    try:
        await redis.set(PROBE_KEY, "1", px=10_000)
    except OutOfMemoryError as exc:
        raise OutOfMemoryError(f"Redis is out of memory ({await _memory_figures(redis)}): {exc}") from exc


async def _memory_figures(client: Any) -> str:
    try:
        info = await client.info("memory")
    except RedisError as exc:
        return f"INFO memory failed: {exc}"
    return ", ".join(
        f"{name} {info.get(name)}" for name in ("used_memory_human", "maxmemory_human", "maxmemory_policy")
    )


async def readiness(*, client: CeleryClient, engine: AsyncEngine, redis: Redis) -> Readiness:
    """Broker and result backend (of ``client``), database (``engine``) and Redis
    (``redis``, reachable and accepting writes), checked concurrently."""

    async def database() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis_writable() -> None:
        await redis_accepts_writes(redis)

    async def celery() -> dict[str, Any]:
        return await asyncio.wait_for(asyncio.to_thread(client.ping, 1.0, workers=False), CHECK_TIMEOUT)

    celery_check, db_check, redis_check = await asyncio.gather(
        _safe_celery(celery), _timed(database), _timed(redis_writable)
    )
    checks = {**celery_check, "database": db_check, "redis": redis_check}
    ok = all(check.ok for check in checks.values())
    return Readiness(status="ok" if ok else "unavailable", checks=checks)


async def _safe_celery(probe: Any) -> dict[str, CheckOut]:
    try:
        report = await probe()
    except Exception as exc:  # timed out or failed: both parts are unknown, hence down
        failed = CheckOut(ok=False, latency_ms=None, error=f"{type(exc).__name__}: {exc}")
        return {"broker": failed, "result_backend": failed}
    return {"broker": CheckOut(**report["broker"]), "result_backend": CheckOut(**report["backend"])}
