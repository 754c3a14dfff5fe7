"""Kombu Redis transport on which priority means the same as on RabbitMQ: 9 is highest.

Kombu's Redis channel files a message under a sub-queue per priority step and polls
step 0 first, so natively 0 is the highest priority. This channel reverses the mapping
where a message is filed (publish and unacked restore), and only there: the message
keeps the caller's 0-9 value, so retries and canvas callbacks that copy a message's
priority keep their meaning.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

__all__ = ["PRIORITY_STEPS", "PriorityRedisTransport", "redis_priority_queue_keys"]

#: One Redis sub-queue per priority level, so 0..9 are ten distinct steps.
PRIORITY_STEPS: list[int] = list(range(10))


class PriorityRedisChannel(kombu_redis.Channel):
    """Redis channel that files priority 9 in the sub-queue polled first, and reuses
    one client per connection pool (kombu builds a new ``redis.Redis``, with its ~170
    response callbacks, for every publish and every ack)."""

    _pool: Any

    _shared_client: redis.Redis | None = None

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
