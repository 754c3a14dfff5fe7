"""The client's lifecycle and its Redis clients, against a real Redis: a closed client
refuses to work, closing twice is safe and disconnects its signal receivers, the async
side leaks no connection, and a caller's own Redis client serves the state store."""

from __future__ import annotations

import asyncio

import pytest
import redis
from celery import signals

from pkg.celery_task import CeleryClient, ClientClosedError, InvalidRequestError
from tests.support.services import RedisDb


def _client(db: RedisDb, **extra: object) -> CeleryClient:
    return CeleryClient(app_name="lifecycle", broker_url=db.url, backend_url=db.url, timezone="UTC", **extra)


def _connections(db: RedisDb) -> int:
    """Connections on ``db``'s number, counted from a connection on another number."""
    watcher = redis.Redis(host="127.0.0.1", port=6379, db=0 if db.number != 0 else 1)
    try:
        return sum(1 for entry in watcher.client_list() if int(entry["db"]) == db.number)
    finally:
        watcher.close()


def test_a_closed_client_refuses_every_call_and_closes_once(redis_db: RedisDb) -> None:
    client = _client(redis_db)
    receivers = len(signals.task_failure.receivers)
    client.submit("lifecycle.noop")
    client.close()
    assert len(signals.task_failure.receivers) == receivers - 1
    client.close()  # twice is safe
    assert len(signals.task_failure.receivers) == receivers - 1
    for call in (
        lambda: client.submit("lifecycle.noop"),
        lambda: client.get_status("x"),
        lambda: client.list_periodic_tasks(),
        lambda: client.queue_lengths(),
        lambda: client.register_worker_hooks(on_startup=print),
        lambda: asyncio.run(client.submit_async("lifecycle.noop")),
    ):
        with pytest.raises(ClientClosedError, match=r"CeleryClient\(app_name='lifecycle'.* is closed"):
            call()


def test_many_clients_in_one_process_do_not_pile_up_receivers(redis_db: RedisDb) -> None:
    before = len(signals.task_failure.receivers)
    for _ in range(5):
        _client(redis_db).close()
    assert len(signals.task_failure.receivers) == before


def test_concurrent_first_submits_on_a_loop_leave_no_connection_behind(redis_db: RedisDb) -> None:
    client = _client(redis_db)
    baseline = _connections(redis_db)

    async def burst() -> list[str]:
        ids = await asyncio.gather(*(client.submit_async("lifecycle.noop") for _ in range(20)))
        assert len(client._parts.aio._publishers) == 1
        await client.aclose()
        await client.aclose()  # twice is safe
        return list(ids)

    ids = asyncio.run(burst())
    assert len(set(ids)) == 20
    assert client.queue_lengths(["default"]) == {"default": 20}
    client.close()
    assert _connections(redis_db) <= baseline


def test_a_callers_redis_client_holds_the_schedule(redis_db: RedisDb, other_redis_db: RedisDb) -> None:
    own = redis.Redis(host="127.0.0.1", port=6379, db=other_redis_db.number, decode_responses=True)
    client = _client(redis_db, redis_client=own)
    client.load_tasks()
    client.add_periodic_task("celery.backend_cleanup", "interval", 3600, name="lifecycle-entry")
    assert [e["name"] for e in client.list_periodic_tasks()] == ["lifecycle-entry"]
    assert other_redis_db.client.exists("redbeat:lifecycle-entry") == 1
    assert redis_db.client.exists("redbeat:lifecycle-entry") == 0
    client.close()
    pool = redis.ConnectionPool(host="127.0.0.1", port=6379, db=other_redis_db.number, decode_responses=True)
    pooled = _client(redis_db, redis_client=pool)
    assert [e["name"] for e in pooled.list_periodic_tasks()] == ["lifecycle-entry"]
    pooled.close()


def test_a_redis_client_that_does_not_decode_is_refused(redis_db: RedisDb) -> None:
    with pytest.raises(InvalidRequestError, match=r"decode_responses=True"):
        _client(redis_db, redis_client=redis.Redis(host="127.0.0.1", port=6379, db=redis_db.number))
