"""Kombu Redis transport on which priority means the same as on RabbitMQ: 9 is highest.

Kombu's Redis channel files a message under a sub-queue per priority step and polls
step 0 first, so natively 0 is the highest priority. This channel reverses the mapping
where a message is filed (publish and unacked restore), and only there: the message
keeps the caller's 0-9 value, so retries and canvas callbacks that copy a message's
priority keep their meaning.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

__all__ = ["PRIORITY_STEPS", "PriorityRedisTransport", "redis_priority_queue_keys"]

#: One Redis sub-queue per priority level, so 0..9 are ten distinct steps.
PRIORITY_STEPS: list[int] = list(range(10))


# The unacked bookkeeping of kombu's Redis QoS (ZADD+HSET on delivery, ZREM+HDEL on
# ack), each as one atomic script call instead of a MULTI/EXEC of four commands.
_HOLD_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
"""
_RELEASE_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""


class ScriptedQoS(kombu_redis.QoS):
    """Kombu's Redis QoS with the same keys and the same atomicity, in one command per
    delivery and per ack: the worker's consumer makes both round trips for every task."""

    channel: PriorityRedisChannel

    def append(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        payload = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])  # type: ignore[no-untyped-call]
        with self.channel.conn_or_acquire() as client:
            self.channel.script(client, "hold", _HOLD_SCRIPT)(
                keys=[self.unacked_index_key, self.unacked_key],
                args=[time.time(), delivery_tag, payload],
                client=client,
            )
        super(kombu_redis.QoS, self).append(message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: str) -> None:
        self._release(delivery_tag)
        super(kombu_redis.QoS, self).ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            super().reject(delivery_tag, requeue=True)  # type: ignore[no-untyped-call]
            return
        self._release(delivery_tag)
        super(kombu_redis.QoS, self).ack(delivery_tag)  # type: ignore[no-untyped-call]

    def _release(self, delivery_tag: str) -> None:
        with self.channel.conn_or_acquire() as client:
            self.channel.script(client, "release", _RELEASE_SCRIPT)(
                keys=[self.unacked_index_key, self.unacked_key], args=[delivery_tag], client=client
            )


class PriorityRedisChannel(kombu_redis.Channel):
    """Redis channel that files priority 9 in the sub-queue polled first, reuses one
    client per connection pool (kombu builds a new ``redis.Redis``, with its ~170
    response callbacks, for every publish and every ack), and acks with scripts."""

    QoS = ScriptedQoS
    _pool: Any

    _shared_client: redis.Redis | None = None
    _scripts: dict[str, Any] | None = None

    def script(self, client: redis.Redis, name: str, source: str) -> Any:
        """The script ``source`` (call it with ``client=``): EVALSHA, and loaded again
        when Redis answers NOSCRIPT (after a restart)."""
        if self._scripts is None:
            self._scripts = {}
        found = self._scripts.get(name)
        if found is None:
            found = self._scripts[name] = client.register_script(source)
        return found

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self._pool:
            if self._pool is None and getattr(self.connection, "client", None) is None:
                # Closing after a lost connection: kombu would rebuild a pool from a
                # connection that is gone and crash the worker (AttributeError). Report
                # a connection error, which the close path ignores; the unacked
                # messages stay in Redis and come back after the visibility timeout.
                raise redis.ConnectionError("the channel's connection is closed")
            shared = self._shared_client = self._create_client()  # type: ignore[no-untyped-call]
        yield shared

    def _get_message_priority(self, message: dict[str, Any], reverse: bool = False) -> int:
        priority = super()._get_message_priority(message, reverse=not reverse)  # type: ignore[no-untyped-call]
        return int(priority)


class PriorityRedisTransport(kombu_redis.Transport):
    """Redis transport using :class:`PriorityRedisChannel`."""

    Channel = PriorityRedisChannel


def redis_priority_queue_keys(queue: str, sep: str = kombu_redis.Channel.sep) -> list[str]:
    """All Redis list keys that hold messages of ``queue`` (one per priority step)."""
    return [queue] + [f"{queue}{sep}{step}" for step in PRIORITY_STEPS if step]
