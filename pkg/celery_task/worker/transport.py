"""Kombu Redis transport on which priority means the same as on RabbitMQ: 9 is highest.

Kombu's Redis channel files a message under a sub-queue per priority step and polls
step 0 first, so natively 0 is the highest priority. This channel reverses the mapping
where a message is filed (publish and unacked restore), and only there: the message
keeps the caller's 0-9 value, so retries and canvas callbacks that copy a message's
priority keep their meaning.

With the transport option ``priority_filing_steps`` (for example
:data:`STOCK_PRIORITY_STEPS`) messages are filed only on those steps, our 0-9 meaning
mapped onto them (our ``p`` files where stock kombu files ``9 - p``), while workers still
poll, purge and count every step of ``priority_steps``: stock Celery workers on the same
queues then see every message, and messages filed before the switch are still consumed.

Connections on this transport report a plain ``redis://`` URL (:data:`TRANSPORT_PATH`
is registered with kombu as reporting ``redis``), so Flower and other tools that read
the broker URL treat it as the Redis broker it is.

Refused messages are in :mod:`.messages`, the scripted unacked index in :mod:`.qos`.
"""

from __future__ import annotations

import logging
from bisect import bisect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.utils.json import loads

from .._compat import (
    brpop_done,
    brpop_reply,
    channel_client,
    channel_pool,
    deliver,
    report_transport_as,
    stock_message_priority,
)
from .messages import SafeMessage, refused_payload
from .qos import ALLOW_OOM, ScriptedQoS, supports_script_flags

__all__ = [
    "PRIORITY_STEPS",
    "STOCK_PRIORITY_STEPS",
    "TRANSPORT_PATH",
    "PriorityRedisChannel",
    "PriorityRedisTransport",
    "check_filing_steps",
    "redis_priority_queue_keys",
]

logger = logging.getLogger(__name__)

#: One Redis sub-queue per priority level, so 0..9 are ten distinct steps.
PRIORITY_STEPS: list[int] = list(range(10))
#: The steps stock kombu files on and polls (its default ``priority_steps``).
STOCK_PRIORITY_STEPS: list[int] = list(kombu_redis.PRIORITY_STEPS)


class PriorityRedisChannel(kombu_redis.Channel):
    """Redis channel that files priority 9 in the sub-queue polled first, reuses one
    client per connection pool (kombu builds a new ``redis.Redis``, with its ~170
    response callbacks, for every publish and every ack), and acks with scripts."""

    QoS = ScriptedQoS
    Message = SafeMessage
    _shared_client: redis.Redis | None = None
    _scripts: dict[str, Any] | None = None

    def script(self, client: redis.Redis, name: str, source: str) -> Any:
        """The script ``source`` (call it with ``client=``): EVALSHA, and loaded again
        when Redis answers NOSCRIPT (after a restart). On Redis 7+ it is flagged
        ``allow-oom``: every script here only moves or deletes a message."""
        if self._scripts is None:
            self._scripts = {}
        found = self._scripts.get(name)
        if found is None:
            if supports_script_flags(client):
                source = ALLOW_OOM + source
            found = self._scripts[name] = client.register_script(source)
        return found

    @contextmanager
    def conn_or_acquire(self, client: redis.Redis | None = None) -> Iterator[redis.Redis]:
        if client:
            yield client
            return
        shared = self._shared_client
        pool = channel_pool(self)
        if shared is None or shared.connection_pool is not pool:
            if pool is None and getattr(self.connection, "client", None) is None:
                # Closing after a lost connection: kombu would rebuild a pool from a
                # connection that is gone and crash the worker (AttributeError). Report
                # a connection error, which the close path ignores; the unacked
                # messages stay in Redis and come back after the visibility timeout.
                raise redis.ConnectionError("the channel's connection is closed")
            shared = self._shared_client = channel_client(self)
        yield shared

    def _brpop_read(self, **options: Any) -> bool:
        """Kombu's BRPOP read, except that a popped item that is not JSON is delivered
        as a refused message (dead-lettered by the consumer) instead of raising out of
        the event loop and losing it."""
        try:
            reply = brpop_reply(self, **options)
            if reply is None:
                raise Empty()
            queue, item = reply
            try:
                payload = loads(item if isinstance(item, str) else item.decode("utf-8"))  # type: ignore[no-untyped-call]
            except (ValueError, TypeError, RecursionError) as exc:
                logger.error(
                    "refusing an unreadable message from queue %r: %s: %s", queue, type(exc).__name__, exc
                )
                payload = refused_payload(item, queue, exc)
            deliver(self, payload, queue)
            return True
        finally:
            brpop_done(self)

    _filing_steps: list[int] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        options = getattr(self.connection.client, "transport_options", None) or {}
        steps = options.get("priority_filing_steps")
        if steps is not None:
            self._filing_steps = check_filing_steps(steps, self.priority_steps)

    def _get_message_priority(self, message: dict[str, Any], reverse: bool = False) -> int:
        """The step a message is filed on (publish and restore): reversed, so 9 is
        polled first, and snapped down to ``priority_filing_steps`` when set."""
        priority = stock_message_priority(self, message, reverse=not reverse)
        steps = self._filing_steps
        return steps[bisect(steps, priority) - 1] if steps else priority


def check_filing_steps(steps: Any, polled: list[int]) -> list[int]:
    """``priority_filing_steps`` as a list: ascending steps starting at 0, each one a
    step workers poll (in ``priority_steps``), else a ``ValueError`` saying so."""
    if not isinstance(steps, list | tuple) or not all(type(s) is int for s in steps):
        raise ValueError(f"priority_filing_steps must be a list of integers, not {steps!r}")
    found = list(steps)
    if not found or found[0] != 0 or found != sorted(set(found)) or not set(found) <= set(polled):
        raise ValueError(
            f"priority_filing_steps {found!r} must ascend from 0 and be among priority_steps {polled!r}"
        )
    return found


class PriorityRedisTransport(kombu_redis.Transport):
    """Redis transport using :class:`PriorityRedisChannel`."""

    Channel = PriorityRedisChannel


#: The ``broker_transport`` value naming :class:`PriorityRedisTransport`.
TRANSPORT_PATH = f"{__name__}:{PriorityRedisTransport.__name__}"
# Its connections report redis:// URLs (on rediss:// URLs too: without broker_use_ssl
# kombu connects this class without TLS, with it Flower reads broker_use_ssl itself).
report_transport_as(TRANSPORT_PATH, "redis")


def redis_priority_queue_keys(queue: str, sep: str = kombu_redis.Channel.sep) -> list[str]:
    """All Redis list keys that hold messages of ``queue`` (one per priority step)."""
    return [queue] + [f"{queue}{sep}{step}" for step in PRIORITY_STEPS if step]
