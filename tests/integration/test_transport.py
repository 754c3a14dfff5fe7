"""Redis bookkeeping against real Redis: the transport's scripted unacked index (same keys
and payload as kombu's) and the trimmed dead-letter list."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from tests.support.services import RedisDb

pytestmark = pytest.mark.integration

TRANSPORT = "pkg.celery_task.worker.transport:PriorityRedisTransport"


def held(db: RedisDb) -> tuple[dict[bytes, bytes], list[bytes]]:
    return db.client.hgetall("unacked"), db.client.zrange("unacked_index", 0, -1)


def test_delivery_is_held_until_ack_and_reject_requeues(redis_db: RedisDb, unique: str) -> None:
    exchange = Exchange(f"ex-{unique}", type="direct")
    queue = Queue(f"q-{unique}", exchange, routing_key=f"rk-{unique}")
    with Connection(redis_db.url, transport=TRANSPORT) as conn:
        producer = conn.Producer()
        for n in range(3):
            producer.publish({"n": n}, exchange=exchange, routing_key=f"rk-{unique}", declare=[queue])
        channel = conn.default_channel
        bound = queue(channel)

        first = bound.get(no_ack=False)
        assert first is not None
        hash_, index = held(redis_db)
        assert index == [first.delivery_tag.encode()]
        raw, ex, rk = json.loads(hash_[first.delivery_tag.encode()])
        assert (raw["body"], ex, rk) == (first._raw["body"], f"ex-{unique}", f"rk-{unique}")
        assert channel.qos.can_consume()
        first.ack()
        assert held(redis_db) == ({}, [])

        second = bound.get(no_ack=False)
        second.reject(requeue=False)
        assert held(redis_db) == ({}, [])

        third = bound.get(no_ack=False)
        assert third.payload == {"n": 2}
        third.reject(requeue=True)
        assert held(redis_db) == ({}, [])
        again = bound.get(no_ack=False)
        assert again.payload == {"n": 2}
        again.ack()
        assert bound.get(no_ack=False) is None
        assert held(redis_db) == ({}, [])


def test_dead_letter_list_keeps_the_newest_entries(redis_db: RedisDb) -> None:
    from pkg.celery_task._deadletter import DeadLetters

    letters = DeadLetters(redis_db.client, "t:", max_entries=3)
    for n in range(5):
        letters.record({"id": f"e{n}", "reason": "failed"})
    total, entries = letters.list()
    assert total == 3
    assert [e["id"] for e in entries] == ["e4", "e3", "e2"]
    assert redis_db.client.hlen("t:dead_letters") == 3
    assert letters.remove("e3") and not letters.remove("e3")
    assert letters.get("e3") is None and letters.get("e4") is not None


def test_one_fetch_pops_up_to_the_prefetch_and_records_each_as_kombu_does(
    redis_db: RedisDb, unique: str
) -> None:
    exchange = Exchange(f"ex-{unique}", type="direct")
    queue = Queue(f"q-{unique}", exchange, routing_key=f"rk-{unique}")
    got: list[Any] = []
    with Connection(redis_db.url, transport=TRANSPORT) as conn:
        producer = conn.Producer()
        for n, priority in enumerate([0, 9, 5, 9, 1]):
            producer.publish(
                {"n": n}, exchange=exchange, routing_key=f"rk-{unique}", declare=[queue], priority=priority
            )
        with conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)], prefetch_count=3):
            conn.drain_events(timeout=2)
            # One reply carried three messages, highest priority first (9 is highest).
            assert [m.payload["n"] for m in got] == [1, 3, 2]
            hash_, index = held(redis_db)
            assert sorted(index) == sorted(m.delivery_tag.encode() for m in got)
            for message in got:
                entry = json.loads(hash_[message.delivery_tag.encode()])
                assert entry == [message._raw, f"ex-{unique}", f"rk-{unique}"]  # what a restore reads
            for message in got:
                message.ack()
            assert held(redis_db) == ({}, [])
            conn.drain_events(timeout=2)
            assert [m.payload["n"] for m in got[3:]] == [4, 0]
            for message in got[3:]:
                message.ack()
    assert held(redis_db) == ({}, [])


def test_a_no_ack_consumer_has_nothing_recorded(redis_db: RedisDb, unique: str) -> None:
    queue = Queue(f"q-{unique}", Exchange(f"ex-{unique}", type="direct"), routing_key=f"rk-{unique}")
    got: list[Any] = []
    with Connection(redis_db.url, transport=TRANSPORT) as conn:
        rk = f"rk-{unique}"
        conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=rk, declare=[queue])
        with conn.Consumer(queue, callbacks=[lambda body, message: got.append(body)], no_ack=True):
            conn.drain_events(timeout=2)
    assert got == [{"n": 1}]
    assert held(redis_db) == ({}, [])


def test_an_idle_fetch_waits_on_the_server_and_pops_nothing_meanwhile(redis_db: RedisDb, unique: str) -> None:
    from pkg.celery_task.worker.transport import FETCH_IDLE_KEY

    queue = Queue(f"q-{unique}", Exchange(f"ex-{unique}", type="direct"), routing_key=f"rk-{unique}")
    got: list[Any] = []
    with (
        Connection(redis_db.url, transport=TRANSPORT) as conn,
        conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)]),
    ):
        for _ in range(3):
            with pytest.raises(socket.timeout):
                conn.drain_events(timeout=0.3)
        # The wait is a BLMOVE of a queue list onto itself: it blocks and pops nothing.
        mine = [c for c in redis_db.client.client_list() if c.get("db") == str(redis_db.number)]
        assert [c.get("cmd") for c in mine].count("blmove") == 1, mine
        producer = conn.Producer()
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key=f"rk-{unique}")
        conn.drain_events(timeout=2)
        # Filed on another priority list than the one waited on: found by the next fetch.
        producer.publish({"n": 2}, exchange=queue.exchange, routing_key=f"rk-{unique}", priority=9)
        conn.drain_events(timeout=2)
        assert [m.payload for m in got] == [{"n": 1}, {"n": 2}]
        for message in got:
            message.ack()
    assert not redis_db.client.exists(FETCH_IDLE_KEY)
    assert held(redis_db) == ({}, [])
