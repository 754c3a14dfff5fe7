"""Kombu's Redis QoS (the unacked index) with one atomic script per delivery, ack and
requeue, which also go through while Redis is out of memory."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from .._compat import held_message, hold_in_memory, raw_payload, release_in_memory, restore_targets
from .greenio import deferred, on_loop_pipeline, pipelined, succeeded

if TYPE_CHECKING:
    from .transport import PriorityRedisChannel
    from .window import FetchWindow

__all__ = [
    "ALLOW_OOM",
    "OOM_BACKOFF_MAX",
    "ScriptedQoS",
    "redis_version",
    "retry_out_of_memory",
    "supports_script_flags",
]

logger = logging.getLogger(__name__)

# The unacked bookkeeping of kombu's Redis QoS (ZADD+HSET on delivery, ZREM+HDEL on
# ack), each as one atomic script call instead of a MULTI/EXEC of four commands. The ack
# also drops the message's flow-control slot leases (KEYS[3..], members ARGV[2..]).
_HOLD_SCRIPT = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
"""
_RELEASE_SCRIPT = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
for i = 3, #KEYS do
    redis.call('ZREM', KEYS[i], ARGV[i - 1])
end
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
ALLOW_OOM = "#!lua flags=allow-oom\n"

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


class ScriptedQoS(kombu_redis.QoS):
    """Kombu's Redis QoS with the same keys and the same atomicity, in one command per
    delivery and per ack: the worker's consumer makes both round trips for every task."""

    channel: PriorityRedisChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        #: The flow gate's slot leases: dropped with the ack when they live on this
        #: Redis (``take_for_ack(tag)``), else by the holder; given back on a reject
        #: (``settled(tag)``); renewed by the heartbeat (``renew(now)``).
        self.lease_holders: list[Any] = []
        #: Tags the channel's fetch script recorded as unacked already, while their
        #: delivery runs: ``append`` then only notes them in memory.
        self._recorded: set[str] = set()
        #: The asyncio pool's :class:`~.window.FetchWindow` while its hub runs on the
        #: loop: a fetch then takes no more than the window has room for.
        self.fetch_window: FetchWindow | None = None

    def can_consume(self) -> bool:
        """kombu's prefetch check, and room in the fetch window to start a fetch (a
        fetch already sent is always read)."""
        allowed = bool(super().can_consume())  # type: ignore[no-untyped-call]
        window = self.fetch_window
        if not allowed or window is None or self.channel.polling():
            return allowed
        return window.room() > 0

    def can_consume_max_estimate(self) -> int | None:
        """How many messages one fetch may take: kombu's prefetch room, capped by the
        fetch window's (None: no limit)."""
        estimate: int | None = super().can_consume_max_estimate()  # type: ignore[no-untyped-call]
        window = self.fetch_window
        if window is None:
            return estimate
        room = window.room()
        return room if estimate is None else min(estimate, room)

    def note_held(self, delivery_tag: str) -> None:
        """The message under ``delivery_tag`` is recorded as unacked in Redis already."""
        self._recorded.add(delivery_tag)

    def unnote_held(self, delivery_tag: str) -> None:
        """Its delivery is over (appended or not)."""
        self._recorded.discard(delivery_tag)

    def forget_held(self, delivery_tag: str) -> None:
        """Drop a recorded message nothing will acknowledge (it was delivered as a
        refused message under a tag of its own)."""
        self._release(delivery_tag)

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self._recorded:
            self._recorded.discard(delivery_tag)
            hold_in_memory(self, message, delivery_tag)
            return
        delivery = message.delivery_info
        payload = dumps([raw_payload(message), delivery["exchange"], delivery["routing_key"]])  # type: ignore[no-untyped-call]

        def hold() -> None:
            with self.channel.conn_or_acquire() as client:
                self.channel.script(client, "hold", _HOLD_SCRIPT)(
                    keys=[self.unacked_index_key, self.unacked_key],
                    args=[time.time(), delivery_tag, payload],
                    client=client,
                )

        retry_out_of_memory(f"holding message {delivery_tag}", hold)
        hold_in_memory(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        leases = [lease for holder in self.lease_holders for lease in holder.take_for_ack(delivery_tag)]
        self._release(delivery_tag, leases)
        release_in_memory(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self._requeue(delivery_tag)
        else:
            self._release(delivery_tag)
        release_in_memory(self, delivery_tag)
        self._settled(delivery_tag)

    def _settled(self, delivery_tag: str) -> None:
        for holder in self.lease_holders:
            holder.settled(delivery_tag)

    def _release(self, delivery_tag: str, leases: Sequence[tuple[str, str]] = ()) -> None:
        keys = [self.unacked_index_key, self.unacked_key, *(key for key, _ in leases)]
        args = [delivery_tag, *(member for _, member in leases)]

        def release() -> None:
            with self.channel.conn_or_acquire() as client:
                self.channel.script(client, "release", _RELEASE_SCRIPT)(keys=keys, args=args, client=client)

        def release_retried() -> None:
            retry_out_of_memory(f"acknowledging message {delivery_tag}", release)

        if not self._release_pipelined(keys, args, release_retried):
            release_retried()

    def _release_pipelined(self, keys: list[str], args: list[str], fallback: Callable[[], None]) -> bool:
        """On the asyncio pool's loop thread: the ack, sent with the other writes of the
        loop turn (:mod:`.greenio`). False when it is not made so (make it yourself)."""
        if not on_loop_pipeline():
            return False
        with self.channel.conn_or_acquire() as client:
            sha = self.channel.script(client, "release", _RELEASE_SCRIPT).sha

            def commands(pipe: Any) -> None:
                pipe.evalsha(sha, len(keys), *keys, *args)

            return deferred(client, commands, fallback) or succeeded(pipelined(client, commands))

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
        message = held_message(self, delivery_tag)
        delivery = message.delivery_info or {}
        payload = json.loads(json.dumps(raw_payload(message)))
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


def redis_version(client: redis.Redis) -> tuple[int, int]:
    """The server's (major, minor) version; (0, 0) when it cannot be read."""
    try:
        version = str(client.info("server").get("redis_version", "0"))
    except redis.RedisError:
        return (0, 0)
    parts = [int(p) if p.isdigit() else 0 for p in (version.split(".") + ["0"])[:2]]
    return (parts[0], parts[1])


def supports_script_flags(client: redis.Redis) -> bool:
    """Redis 7 and later read ``#!lua flags=...`` in scripts (older ones cannot parse it)."""
    return redis_version(client) >= (7, 0)
