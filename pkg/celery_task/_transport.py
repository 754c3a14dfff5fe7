"""Kombu Redis transport on which priority means the same as on RabbitMQ: 9 is highest.

Kombu's Redis channel files a message under a sub-queue per priority step and polls
step 0 first, so natively 0 is the highest priority. This channel reverses the mapping
where a message is filed (publish and unacked restore), and only there: the message
keeps the caller's 0-9 value, so retries and canvas callbacks that copy a message's
priority keep their meaning.

Messages a worker cannot even read (not JSON, not a kombu message, a body that does
not decode) are handed to the consumer as a *refused* message instead of raising out of
the event loop: a well-formed stand-in holding the raw bytes, with the content type
:data:`REFUSED_CONTENT_TYPE` that no consumer accepts and the reason in the header
:data:`REFUSED_HEADER`. Celery then reports it as undecodable and acknowledges it, and the
worker's consumer dead-letters it; until then it is held in the unacked index like any
other message, so it is never lost between the pop and the dead letter.

With the transport option ``priority_filing_steps`` (for example
:data:`STOCK_PRIORITY_STEPS`) messages are filed only on those steps, our 0-9 meaning
mapped onto them (our ``p`` files where stock kombu files ``9 - p``), while workers still
poll, purge and count every step of ``priority_steps``: stock Celery workers on the same
queues then see every message, and messages filed before the switch are still consumed.

Connections on this transport report a plain ``redis://`` URL (:data:`TRANSPORT_PATH`
is registered with kombu as reporting ``redis``), so Flower and other tools that read
the broker URL treat it as the Redis broker it is.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from bisect import bisect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty
from kombu.transport.virtual import Message as VirtualMessage
from kombu.utils.json import dumps, loads
from kombu.utils.uuid import uuid

from ._compat import brpop_done, brpop_reply, report_transport_as, restore_targets

__all__ = [
    "PRIORITY_STEPS",
    "REFUSED_CONTENT_TYPE",
    "REFUSED_HEADER",
    "STOCK_PRIORITY_STEPS",
    "TRANSPORT_PATH",
    "PriorityRedisTransport",
    "redis_priority_queue_keys",
]

logger = logging.getLogger(__name__)

#: Content type of the stand-in for a message that could not be read.
REFUSED_CONTENT_TYPE = "application/x-tasksys-refused"
#: Header of that stand-in: ``{"type": ..., "message": ...}`` of the read error.
REFUSED_HEADER = "x-tasksys-refused"

#: One Redis sub-queue per priority level, so 0..9 are ten distinct steps.
PRIORITY_STEPS: list[int] = list(range(10))
#: The steps stock kombu files on and polls (its default ``priority_steps``).
STOCK_PRIORITY_STEPS: list[int] = list(kombu_redis.PRIORITY_STEPS)


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
# Requeue a held message: KEYS[1] index, KEYS[2] hash, KEYS[3..] destination lists;
# ARGV[1] tag, ARGV[2] payload, ARGV[3] '1' to LPUSH (kombu's "leftmost"), else RPUSH.
_REQUEUE_SCRIPT = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
    local push = ARGV[3] == '1' and 'LPUSH' or 'RPUSH'
    for i = 3, #KEYS do
        redis.call(push, KEYS[i], ARGV[2])
    end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""
# Each of them moves a message between keys (queue -> unacked -> queue, or drops it),
# so memory use does not grow: on Redis 7+ they run even when Redis is out of memory
# (``maxmemory`` with ``noeviction``), so a message popped from a queue is never lost
# for want of the few bytes that hold it, and acks still go through.
_ALLOW_OOM = "#!lua flags=allow-oom\n"

#: Longest wait between two attempts of a write Redis refused for lack of memory.
OOM_BACKOFF_MAX = 2.0


def retry_out_of_memory(what: str, call: Callable[[], Any]) -> Any:
    """``call()``, retried with capped exponential backoff for as long as Redis answers
    that it is out of memory, with a warning saying so (first time, then every ~10 s)."""
    delay, warned_at = 0.05, 0.0
    while True:
        try:
            return call()
        except redis.exceptions.OutOfMemoryError as exc:
            now = time.monotonic()
            if now - warned_at >= 10:
                logger.warning("Redis is out of memory (%s); retrying %s until it accepts it", exc, what)
                warned_at = now
            time.sleep(delay)
            delay = min(delay * 2, OOM_BACKOFF_MAX)


def refused_payload(raw: bytes | str, queue: str, exc: BaseException, original: Any = None) -> dict[str, Any]:
    """A well-formed message for ``queue`` that carries ``raw`` and why it was refused
    (with the task id and name of the ``original`` payload, when it has string ones)."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
    reason: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:500]}
    headers = original.get("headers") if isinstance(original, dict) else None
    if isinstance(headers, dict):
        reason.update({k: headers[k] for k in ("id", "task") if isinstance(headers.get(k), str)})
    return {
        "body": base64.b64encode(data).decode(),
        "content-type": REFUSED_CONTENT_TYPE,
        "content-encoding": "binary",
        "headers": {REFUSED_HEADER: reason},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": uuid(),
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
        },
    }


class SafeMessage(VirtualMessage):
    """Kombu's Redis message; a payload that is not a well-formed kombu message (not a
    mapping, no properties or delivery tag, no delivery info, a body that does not
    decode) becomes a refused stand-in instead of raising in the worker's event loop."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            _check_shape(payload)
            super().__init__(payload, channel=channel, **kwargs)  # type: ignore[no-untyped-call]
        except (KeyError, TypeError, ValueError, AttributeError, LookupError, binascii.Error) as exc:
            queue = _queue_of(payload)
            logger.error("refusing a malformed message from queue %r: %s: %s", queue, type(exc).__name__, exc)
            raw = payload if isinstance(payload, bytes | str) else _dump_raw(payload)
            stand_in = refused_payload(raw, queue, exc, payload)
            super().__init__(stand_in, channel=channel, **kwargs)  # type: ignore[no-untyped-call]


def _check_shape(payload: Any) -> None:
    if not isinstance(payload, dict):
        raise TypeError(f"a message must be a JSON object, not {type(payload).__name__}")
    properties = payload["properties"]
    if not isinstance(properties, dict):
        raise TypeError("message properties must be an object")
    if not isinstance(properties["delivery_tag"], str):
        raise TypeError("the delivery tag must be a string")
    info = properties["delivery_info"]
    if not isinstance(info, dict) or not isinstance(info.get("routing_key"), str):
        raise TypeError("delivery_info must be an object with a routing_key")
    info.setdefault("exchange", "")
    if not isinstance(payload.get("headers", {}), dict | None):
        raise TypeError("message headers must be an object")


def _queue_of(payload: Any) -> str:
    try:
        return str(payload["properties"]["delivery_info"]["routing_key"])
    except (KeyError, TypeError, AttributeError):
        return ""


def _dump_raw(payload: Any) -> str:
    try:
        return str(dumps(payload))  # type: ignore[no-untyped-call]
    except (TypeError, ValueError):
        return repr(payload)


class ScriptedQoS(kombu_redis.QoS):
    """Kombu's Redis QoS with the same keys and the same atomicity, in one command per
    delivery and per ack: the worker's consumer makes both round trips for every task."""

    channel: PriorityRedisChannel

    def append(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        payload = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])  # type: ignore[no-untyped-call]

        def hold() -> None:
            with self.channel.conn_or_acquire() as client:
                self.channel.script(client, "hold", _HOLD_SCRIPT)(
                    keys=[self.unacked_index_key, self.unacked_key],
                    args=[time.time(), delivery_tag, payload],
                    client=client,
                )

        retry_out_of_memory(f"holding message {delivery_tag}", hold)
        super(kombu_redis.QoS, self).append(message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: str) -> None:
        self._release(delivery_tag)
        super(kombu_redis.QoS, self).ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self._requeue(delivery_tag)
        else:
            self._release(delivery_tag)
        super(kombu_redis.QoS, self).ack(delivery_tag)  # type: ignore[no-untyped-call]

    def _release(self, delivery_tag: str) -> None:
        def release() -> None:
            with self.channel.conn_or_acquire() as client:
                self.channel.script(client, "release", _RELEASE_SCRIPT)(
                    keys=[self.unacked_index_key, self.unacked_key], args=[delivery_tag], client=client
                )

        retry_out_of_memory(f"acknowledging message {delivery_tag}", release)

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        """Kombu's sweep of messages whose holder stopped beating; while Redis is out of
        memory it restores nothing (each restore is one transaction that fails whole,
        so nothing is lost) and says so, instead of an error with a traceback."""
        try:
            return super().restore_visible(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.exceptions.OutOfMemoryError as exc:
            logger.warning("Redis is out of memory (%s); unacked messages are restored later", exc)
            return None

    def _requeue(self, delivery_tag: str) -> None:
        """Put a held message back at the head of its queue and drop it from the unacked
        index, atomically (kombu's version leaves the index entry behind and fails when
        Redis is out of memory)."""
        message = self._delivered[delivery_tag]
        delivery = message.delivery_info or {}
        payload = json.loads(json.dumps(message._raw))
        exchange, routing_key = delivery.get("exchange"), delivery.get("routing_key")
        targets = restore_targets(self.channel, payload, exchange, routing_key)
        if not targets:
            logger.error("message %s has no queue to return to; it stays held until restored", delivery_tag)
            return
        body = targets[0][1]

        def requeue() -> None:
            with self.channel.conn_or_acquire() as client:
                self.channel.script(client, "requeue", _REQUEUE_SCRIPT)(
                    keys=[self.unacked_index_key, self.unacked_key, *(key for key, _ in targets)],
                    args=[delivery_tag, body, "1"],
                    client=client,
                )

        retry_out_of_memory(f"returning message {delivery_tag} to its queue", requeue)


class PriorityRedisChannel(kombu_redis.Channel):
    """Redis channel that files priority 9 in the sub-queue polled first, reuses one
    client per connection pool (kombu builds a new ``redis.Redis``, with its ~170
    response callbacks, for every publish and every ack), and acks with scripts."""

    QoS = ScriptedQoS
    Message = SafeMessage
    _pool: Any

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
            if _supports_script_flags(client):
                source = _ALLOW_OOM + source
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
            self.connection._deliver(payload, queue)
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
        priority = int(super()._get_message_priority(message, reverse=not reverse))  # type: ignore[no-untyped-call]
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


def _supports_script_flags(client: redis.Redis) -> bool:
    """Redis 7 and later read ``#!lua flags=...`` in scripts (older ones cannot parse it)."""
    try:
        version = str(client.info("server").get("redis_version", "0"))
    except redis.RedisError:
        return False
    major = version.split(".", 1)[0]
    return major.isdigit() and int(major) >= 7


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
