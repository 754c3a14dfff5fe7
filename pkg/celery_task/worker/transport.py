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
import time
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
    kombu_brpop_start,
    poll_queue_keys,
    poll_reply,
    report_transport_as,
    rotate_queue,
    send_poll_command,
    stock_message_priority,
)
from .messages import SafeMessage, refused_payload
from .qos import ALLOW_OOM, ScriptedQoS, redis_version, supports_script_flags

__all__ = [
    "FETCH_BATCH_MAX",
    "FETCH_IDLE_WAIT",
    "PRIORITY_STEPS",
    "STOCK_PRIORITY_STEPS",
    "TRANSPORT_PATH",
    "PriorityRedisChannel",
    "PriorityRedisTransport",
    "check_fetch_idle_wait",
    "check_filing_steps",
    "redis_priority_queue_keys",
]

logger = logging.getLogger(__name__)

#: One Redis sub-queue per priority level, so 0..9 are ten distinct steps.
PRIORITY_STEPS: list[int] = list(range(10))
#: The steps stock kombu files on and polls (its default ``priority_steps``).
STOCK_PRIORITY_STEPS: list[int] = list(kombu_redis.PRIORITY_STEPS)


#: Most messages one fetch pops (each is recorded as unacked in the same script).
FETCH_BATCH_MAX = 64
#: Seconds an idle worker waits between two fetches that found nothing (transport
#: option ``fetch_idle_wait``); the wait is a server-side timeout, not a sleep.
FETCH_IDLE_WAIT = 0.05
#: Seconds the idle wait uses BLPOP after Redis refused a BLMOVE (it is out of memory).
BLMOVE_BACKOFF = 5.0
#: A key nobody writes: a BLPOP on it is that wait where Redis has no BLMOVE.
FETCH_IDLE_KEY = "tasksys:fetch:idle"

# Pop up to ARGV[2] messages from KEYS[3..] (in order, each from its tail as BRPOP
# does) and record each (where its key's flag ARGV[i] is '1') in the unacked index
# (KEYS[1], score ARGV[1]) and hash (KEYS[2]) under its own delivery tag, as the QoS
# would after the pop: no moment exists at which a popped message is recorded
# nowhere. The hash value is kombu's ``[payload, exchange, routing_key]`` with the
# payload kept byte for byte. Reply: flat (key, message, tag) triples; the tag is ''
# for a message that is not a kombu payload (or of a no-ack consumer), which the
# worker then records (or refuses) itself.
_FETCH_SCRIPT = """
local limit = tonumber(ARGV[2])
local out = {}
local n = 0
for i = 3, #KEYS do
    while n < limit do
        local item = redis.call('RPOP', KEYS[i])
        if not item then break end
        local ok, msg = pcall(cjson.decode, item)
        local tag = ''
        if ARGV[i] == '1' and ok and type(msg) == 'table' and type(msg.properties) == 'table' then
            local props = msg.properties
            local info = type(props.delivery_info) == 'table' and props.delivery_info or {}
            if type(props.delivery_tag) == 'string' and props.delivery_tag ~= '' then
                tag = props.delivery_tag
                local exchange, routing_key = info.exchange or '', info.routing_key or ''
                redis.call('ZADD', KEYS[1], ARGV[1], tag)
                redis.call('HSET', KEYS[2], tag,
                    '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
            end
        end
        out[#out + 1] = KEYS[i]
        out[#out + 1] = item
        out[#out + 1] = tag
        n = n + 1
    end
    if n >= limit then break end
end
return out
"""


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

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        """kombu's, noting the queues consumed without acknowledgements (the fetch
        records no message of theirs as unacked)."""
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[no-untyped-call]

    def basic_cancel(self, consumer_tag: str) -> Any:
        """kombu's; a queue no longer consumed is no longer a no-ack queue."""
        found = super().basic_cancel(consumer_tag)  # type: ignore[no-untyped-call]
        self._no_ack_queues &= set(self.active_queues)
        return found

    def polling(self) -> bool:
        """A poll (fetch or idle wait) was sent and its reply is not read yet."""
        return self._poll_mode is not None

    def _atomic_fetch(self) -> bool:
        """Fetch with the script (not with kombu's BRPOP): always, except under a
        ``global_keyprefix``, whose prefixing kombu applies to BRPOP only."""
        return not self.global_keyprefix

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Send the next poll: the fetch script, or after a fetch that found nothing
        the idle wait, which pops nothing."""
        if not self._atomic_fetch():
            self._poll_mode = "brpop"
            kombu_brpop_start(self, timeout)
            return
        polled = poll_queue_keys(self)
        if not polled:
            return
        if self._fetch_empty:
            self._poll_mode = "wait"
            self._send_idle_wait(polled)
            return
        estimate = self.qos.can_consume_max_estimate()  # None: no prefetch limit
        limit = FETCH_BATCH_MAX if estimate is None else max(1, estimate)
        sha = self._fetch_sha
        if sha is None:  # sent as a raw EVALSHA, so loaded here (again after NOSCRIPT)
            with self.conn_or_acquire() as client:
                script = self.script(client, "fetch", _FETCH_SCRIPT)
                sha = self._fetch_sha = str(client.script_load(script.script))
        self._poll_mode = "fetch"
        keys = [self.unacked_index_key, self.unacked_key, *(key for _, key in polled)]
        # Messages of a no-ack consumer (remote-control replies) are never acknowledged.
        record = ["0" if queue in self._no_ack_queues else "1" for queue, _ in polled]
        args = [time.time(), min(limit, FETCH_BATCH_MAX), *record]
        send_poll_command(self, "EVALSHA", sha, len(keys), *keys, *args)

    def _send_idle_wait(self, polled: list[tuple[str, str]]) -> None:
        """Wait on the server, popping nothing, for up to ``fetch_idle_wait`` seconds:
        a BLMOVE of the list the last message came from onto itself (tail to tail, so
        it moves nothing) returns the moment that list has a message; messages on the
        other lists are found by the fetch that follows the timeout. Before Redis 6.2
        (no BLMOVE) the wait is a BLPOP on a key nobody writes."""
        wait = self._fetch_idle_wait
        if self._blmove is None:
            with self.conn_or_acquire() as client:
                self._blmove = redis_version(client) >= (6, 2)
        if not self._blmove or time.monotonic() < self._blmove_off_until:
            self._wait_command = "BLPOP"
            send_poll_command(self, "BLPOP", FETCH_IDLE_KEY, wait)
            return
        key = self._wait_key
        if key is None or all(key != k for _, k in polled):
            step = self._get_message_priority({"properties": {}})  # where a plain message goes
            steps = list(self.priority_steps)
            at = steps.index(step) * (len(polled) // len(steps)) if step in steps else 0
            key = polled[at][1]
        self._wait_command = "BLMOVE"
        send_poll_command(self, "BLMOVE", key, key, "RIGHT", "RIGHT", wait)

    def _brpop_read(self, **options: Any) -> bool:
        """Read the poll's reply and hand each message to the consumer. A fetched
        message is already recorded as unacked (the QoS only notes it in memory); a
        popped item that is not JSON is delivered as a refused message (dead-lettered
        by the consumer) instead of raising out of the event loop and losing it."""
        try:
            mode = self._poll_mode
            if mode == "wait":
                self._fetch_empty = False
                try:
                    poll_reply(self, self._wait_command, **options)
                except redis.ResponseError as exc:  # BLMOVE is refused while Redis is full
                    logger.debug("idle wait refused (%s); waiting with BLPOP for a while", exc)
                    self._blmove_off_until = time.monotonic() + BLMOVE_BACKOFF
                raise Empty()
            if mode != "fetch":
                reply = brpop_reply(self, **options)
                if reply is None:
                    raise Empty()
                self._deliver_item(*reply, held="")
                return True
            try:
                found = poll_reply(self, "EVALSHA", **options)
            except redis.ResponseError as exc:
                if "NOSCRIPT" not in str(exc):
                    logger.warning("fetching messages failed (will retry): %s", exc)
                self._fetch_sha = None
                self._fetch_empty = True
                raise Empty() from None
            if not found:
                self._fetch_empty = True
                raise Empty()
            for i in range(0, len(found), 3):
                key = self._wait_key = _text(found[i])
                queue = key.rsplit(self.sep, 1)[0]
                rotate_queue(self, queue)
                self._deliver_item(queue, found[i + 1], held=_text(found[i + 2]))
            return True
        finally:
            self._poll_mode = None
            brpop_done(self)

    def _deliver_item(self, queue: str, item: bytes | str, held: str) -> None:
        """Deliver one popped item; ``held`` is its delivery tag when the fetch script
        recorded it as unacked already."""
        try:
            payload = loads(item if isinstance(item, str) else item.decode("utf-8"))  # type: ignore[no-untyped-call]
        except (ValueError, TypeError, RecursionError) as exc:
            what = f"{type(exc).__name__}: {exc}"
            logger.error("refusing an unreadable message from queue %r: %s", queue, what)
            deliver(self, refused_payload(item, queue, exc), queue)
            if held:  # recorded under its own tag, which nothing will acknowledge
                self.qos.forget_held(held)
            return
        if held:
            self.qos.note_held(held)
        try:
            deliver(self, payload, queue)
        finally:
            if held:
                self.qos.unnote_held(held)

    _filing_steps: list[int] | None = None
    _poll_mode: str | None = None
    _fetch_empty = False
    _fetch_sha: str | None = None
    _fetch_idle_wait = FETCH_IDLE_WAIT
    _wait_key: str | None = None
    _blmove: bool | None = None
    _blmove_off_until = 0.0
    _wait_command = "BLPOP"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._no_ack_queues: set[str] = set()
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        options = getattr(self.connection.client, "transport_options", None) or {}
        steps = options.get("priority_filing_steps")
        if steps is not None:
            self._filing_steps = check_filing_steps(steps, self.priority_steps)
        wait = options.get("fetch_idle_wait")
        if wait is not None:
            self._fetch_idle_wait = check_fetch_idle_wait(wait)

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


def check_fetch_idle_wait(value: Any) -> float:
    """``fetch_idle_wait`` as seconds: a number in (0, 1], else a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"fetch_idle_wait must be a number of seconds in (0, 1], not {value!r}")
    return float(value)


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


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
