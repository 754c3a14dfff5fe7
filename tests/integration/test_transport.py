"""Redis bookkeeping against real Redis: the transport's scripted unacked index (same keys
and payload as kombu's) and the trimmed dead-letter list."""

from __future__ import annotations

import json

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
