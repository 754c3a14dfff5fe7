"""The worker's flow-control gate: a task with rate or concurrency limits gets a start
permit from Redis before it reaches the pool, or waits for one without a pool slot.

A waiting task's message stays held (unacked, kept alive by the heartbeat) in the
consumer, which fetches one more message for each (as Celery does for ETA tasks), so
other tasks are not slowed. A concurrency permit is a lease on the task's slot set:
the heartbeat renews it and the message's acknowledgement releases it, so a worker
that dies frees its slots within the visibility timeout.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import redis
from celery import Celery

from .._compat import gate_process_task
from .._flow import (
    FLOW_KEY_HEADER,
    THROTTLED,
    WINDOW_MARGIN,
    FlowKeys,
    Limits,
    check_flow_key,
    overrides_from,
)
from .._options import options_of
from .._redis import clients_for

__all__ = ["FlowGate"]

logger = logging.getLogger(__name__)

# Take a start permit for every limit of a task at once, or none. KEYS: the limit keys,
# then the throttled-count hash. ARGV: now, member (task id), '1' to count a refusal,
# task name, seconds a rate entry counts as pending, then per limit key: kind ('r' start
# log, 'c' lease set), limit, span (window or lease seconds). A new start is logged
# with a score in the future (now + pending): it counts in every window until the
# worker re-stamps it with the time the pool started the task. Returns {admitted,
# seconds to wait for a rate, 1 if no wait is known (slots full, or the start that
# must leave the window has not begun)}.
_PERMIT_SCRIPT = """
local now = tonumber(ARGV[1])
local pending = tonumber(ARGV[5])
local n = #KEYS - 1
local wait, unknown = 0, 0
for i = 1, n do
  local kind, limit, span = ARGV[3 * i + 3], tonumber(ARGV[3 * i + 4]), tonumber(ARGV[3 * i + 5])
  if kind == 'r' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - span)
    local count = redis.call('ZCARD', KEYS[i])
    if count >= limit then
      local oldest = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
      local at = tonumber(oldest[2])
      if at > now then
        unknown = 1
      else
        local free_at = at + span - now
        if free_at > wait then wait = free_at end
        if wait <= 0 then wait = 0.001 end
      end
    end
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if not redis.call('ZSCORE', KEYS[i], ARGV[2]) and redis.call('ZCARD', KEYS[i]) >= limit then
      unknown = 1
    end
  end
end
if wait > 0 or unknown == 1 then
  if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[n + 1], ARGV[4], 1) end
  return {0, tostring(wait), unknown}
end
for i = 1, n do
  local kind, span = ARGV[3 * i + 3], tonumber(ARGV[3 * i + 5])
  if kind == 'r' then
    redis.call('ZADD', KEYS[i], now + pending, ARGV[2] .. ':' .. ARGV[1])
    redis.call('PEXPIRE', KEYS[i], math.ceil((span + pending) * 1000) + 1000)
  else
    redis.call('ZADD', KEYS[i], now + span, ARGV[2])
    redis.call('PEXPIRE', KEYS[i], math.ceil(span * 2000) + 1000)
  end
end
return {1, '0', 0}
"""

#: Seconds between reads of the runtime overrides (a changed limit applies this soon).
REFRESH_INTERVAL = 1.0
#: Seconds between two re-stamps of rate-log entries with their tasks' start times.
RESTAMP_INTERVAL = 0.02
#: A task waiting for a concurrency slot asks again after this long, growing to the cap.
SLOT_POLL_FIRST, SLOT_POLL_MAX = 0.05, 1.0
#: Wait after Redis failed to answer a permit request (the task is kept, not dropped).
REDIS_RETRY = 1.0


#: Held tasks for which the consumer fetches a replacement message; past this many, the
#: held ones keep their prefetch slots (the worker's memory stays bounded).
MAX_HELD = 1000


class _Waiting:
    """A held request's bookkeeping: its next slot poll, and whether the consumer
    fetched a message in its place."""

    __slots__ = ("poll", "replaced")

    def __init__(self, replaced: bool) -> None:
        self.poll = SLOT_POLL_FIRST
        self.replaced = replaced


class FlowGate:
    """Start permits for limited tasks on one worker (see the module docstring)."""

    def __init__(self, app: Celery, consumer: Any) -> None:
        self.app = app
        self.consumer = consumer
        self.keys = FlowKeys(options_of(app).key_prefix)
        self._declared: dict[str, Limits] = {}
        self._overrides: dict[str, Limits] = {}
        self._refreshed = -math.inf
        self._waiting: dict[str, _Waiting] = {}
        self._leases: dict[Any, list[tuple[str, str]]] = {}
        #: Rate-log entries not yet re-stamped with their start: delivery tag ->
        #: (request, [(key, member)]).
        self._unstamped: dict[Any, tuple[Any, list[tuple[str, str]]]] = {}
        self._restamp_at: float | None = None
        self._lease_lock = threading.Lock()
        self._script: Any = None
        self._dispatch: Callable[[Any], Any] | None = None

    # -- wiring ----------------------------------------------------------------------

    def wrap(self, controller: Any, on_task_request: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Gate the controller's hand-off of requests to its pool; the handler the
        consumer should use."""
        return gate_process_task(controller, on_task_request, self.admit)

    def dispatch_with(self, handler: Callable[[Any], Any]) -> None:
        """Hand a request whose wait is over to ``handler`` (the consumer's own)."""
        self._dispatch = handler

    @cached_property
    def _redis(self) -> redis.Redis:
        """The state Redis (looked up once: RedBeat's lookup reads the whole conf)."""
        return clients_for(self.app).state()

    @property
    def lease_seconds(self) -> float:
        """How long a slot lease lasts without renewal: the broker's visibility timeout."""
        channel = getattr(getattr(self.consumer, "task_consumer", None), "channel", None)
        return float(getattr(channel, "visibility_timeout", None) or 30)

    # -- limits ----------------------------------------------------------------------

    def limits_for(self, name: str) -> Limits:
        """The task's limits: its runtime override, else what its code declares."""
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_INTERVAL:
            self._refreshed = now
            try:
                self._overrides = overrides_from(self._redis.hgetall(self.keys.limits))
            except redis.RedisError as exc:
                logger.warning("could not read flow limits (keeping the last ones): %s", exc)
        override = self._overrides.get(name)
        if override is not None:
            return override
        declared = self._declared.get(name)
        if declared is None:
            task = self.app.tasks.get(name)
            try:
                declared = Limits.of_task(task) if task is not None else Limits()
            except ValueError as exc:
                logger.error("task %s declares invalid flow limits, ignored: %s", name, exc)
                declared = Limits()
            self._declared[name] = declared
        return declared

    # -- admission -------------------------------------------------------------------

    def admit(self, request: Any) -> bool:
        """True if ``request`` may start now; otherwise it is held and handed to the
        pool again when its wait is over (it is never dropped)."""
        if self._unstamped:
            self._schedule_restamp()
        limits = self.limits_for(request.name)
        waiting = self._waiting.get(request.id)
        if not limits:
            return self._admitted(request, waiting, [])
        if waiting is not None and request.revoked():
            self._forget(request.id)
            return False
        flow_key = self._flow_key(request) if limits.uses_key else None
        specs = self._specs(request.name, limits, flow_key)
        if not specs:
            return self._admitted(request, waiting, [])
        now = time.time()
        try:
            admitted, rate_wait, full = self._permit(request, specs, now, count=waiting is None)
        except redis.RedisError as exc:
            logger.warning(
                "could not take a start permit for %s[%s] (retrying): %s", request.name, request.id, exc
            )
            self._hold(request, waiting, REDIS_RETRY)
            return False
        if admitted:
            leases = [(key, request.id) for kind, key, _, _ in specs if kind == "c"]
            starts = [(key, f"{request.id}:{now:.6f}") for kind, key, _, _ in specs if kind == "r"]
            if starts:
                self._log_start(request, starts)
            return self._admitted(request, waiting, leases)
        if waiting is None:
            waiting = self._start_waiting(request)
        delay = rate_wait
        if full:
            delay = max(delay, waiting.poll)
            waiting.poll = min(waiting.poll * 1.5, SLOT_POLL_MAX)
        self._hold(request, waiting, delay)
        return False

    def _specs(self, name: str, limits: Limits, flow_key: str | None) -> list[tuple[str, str, int, float]]:
        specs: list[tuple[str, str, int, float]] = []
        if limits.global_rate_limit is not None:
            rate = limits.global_rate_limit
            specs.append(("r", self.keys.rate(name), rate.count, rate.window + WINDOW_MARGIN))
        if limits.rate_limit_per_key is not None and flow_key is not None:
            rate = limits.rate_limit_per_key
            specs.append(("r", self.keys.rate(name, flow_key), rate.count, rate.window + WINDOW_MARGIN))
        lease = self.lease_seconds
        if limits.concurrency_limit is not None:
            specs.append(("c", self.keys.slots(name), limits.concurrency_limit, lease))
        if limits.concurrency_limit_per_key is not None and flow_key is not None:
            specs.append(("c", self.keys.slots(name, flow_key), limits.concurrency_limit_per_key, lease))
        return specs

    def _permit(
        self, request: Any, specs: list[tuple[str, str, int, float]], now: float, *, count: bool
    ) -> tuple[bool, float, bool]:
        client = self._redis
        if self._script is None:
            self._script = client.register_script(_PERMIT_SCRIPT)
        pending = f"{self.lease_seconds:.6f}"
        args: list[Any] = [f"{now:.6f}", request.id, "1" if count else "0", request.name, pending]
        for kind, _, limit, span in specs:
            args += [kind, limit, f"{span:.6f}"]
        keys = [key for _, key, _, _ in specs] + [self.keys.throttled]
        admitted, wait, full = self._script(keys=keys, args=args, client=client)
        return bool(int(admitted)), float(wait), bool(int(full))

    @staticmethod
    def _flow_key(request: Any) -> str | None:
        headers = getattr(request.message, "headers", None) or {}
        value = headers.get(FLOW_KEY_HEADER) if isinstance(headers, dict) else None
        if value is None:
            return None
        try:
            return check_flow_key(value)
        except ValueError:
            logger.warning(
                "task %s[%s] has an invalid flow key; per-key limits skipped", request.name, request.id
            )
            return None

    def _admitted(self, request: Any, waiting: _Waiting | None, leases: list[tuple[str, str]]) -> bool:
        if leases:
            with self._lease_lock:
                self._leases[request.message.delivery_tag] = leases
            _attach(request.message.channel, self)
        if waiting is not None:
            self._forget(request.id)
        return True

    def _start_waiting(self, request: Any) -> _Waiting:
        replaced = len(self._waiting) < MAX_HELD
        waiting = self._waiting[request.id] = _Waiting(replaced)
        if replaced:
            self.consumer.qos.increment_eventually()  # fetch one more while this one waits
        if not request.ignore_result:
            try:
                self.app.backend.store_result(request.id, {"waiting_for": "a start permit"}, THROTTLED)
            except Exception as exc:  # only a status: the task itself must go on
                logger.warning("could not record %s[%s] as throttled: %s", request.name, request.id, exc)
        logger.info("task %s[%s] throttled: waiting for a start permit", request.name, request.id)
        return waiting

    def _forget(self, task_id: str) -> None:
        waiting = self._waiting.pop(task_id, None)
        if waiting is not None and waiting.replaced:
            self.consumer.qos.decrement_eventually()

    def _hold(self, request: Any, waiting: _Waiting | None, delay: float) -> None:
        if waiting is None:
            self._start_waiting(request)
        dispatch = self._dispatch or self.consumer.on_task_request
        self.consumer.timer.call_after(max(delay, 0.001), dispatch, (request,))

    # -- start times -----------------------------------------------------------------

    def _log_start(self, request: Any, starts: list[tuple[str, str]]) -> None:
        """Note a permitted start whose rate-log entries wait for the real start time."""
        with self._lease_lock:
            self._unstamped[request.message.delivery_tag] = (request, starts)
        _attach(request.message.channel, self)  # to hear of a message settled unstarted
        self._schedule_restamp()

    def _schedule_restamp(self) -> None:
        """Run :meth:`restamp` soon, unless a run is due already. A run that never came
        (a consumer restart clears its timer) is replaced a second later."""
        now = time.monotonic()
        if self._restamp_at is not None and now < self._restamp_at + 1.0:
            return
        self._restamp_at = now + RESTAMP_INTERVAL
        self.consumer.timer.call_after(RESTAMP_INTERVAL, self._restamp_tick, ())

    def _restamp_tick(self) -> None:
        self._restamp_at = None
        self.restamp()
        if self._unstamped:
            self._schedule_restamp()

    def restamp(self) -> None:
        """Give each started task's rate-log entries its start time (set by the pool
        when it began the task); until then they count in every window."""
        with self._lease_lock:
            started = [
                (tag, request.time_start, starts)
                for tag, (request, starts) in self._unstamped.items()
                if getattr(request, "time_start", None)
            ]
        if not started:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for _, at, starts in started:
                    for key, member in starts:
                        pipe.zadd(key, {member: at}, xx=True)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("could not record start times in the rate log (will retry): %s", exc)
            return
        with self._lease_lock:
            for tag, _, _ in started:
                self._unstamped.pop(tag, None)

    def _never_started(self, delivery_tag: Any) -> list[tuple[str, str]]:
        """The rate-log entries of a message settled before its task started (to drop:
        that start never happened); a started one stays for :meth:`restamp`."""
        with self._lease_lock:
            found = self._unstamped.get(delivery_tag)
            if found is None or getattr(found[0], "time_start", None):
                return []
            del self._unstamped[delivery_tag]
            return found[1]

    # -- leases ----------------------------------------------------------------------

    @cached_property
    def _leases_on_broker(self) -> bool:
        """The leases live on the broker's Redis, so the ack's own script can drop them."""
        return options_of(self.app).redis_url == str(self.app.conf.broker_url)

    def take_for_ack(self, delivery_tag: Any) -> list[tuple[str, str]]:
        """A message is being acknowledged: its slot leases for the ack's script to
        drop (none if they live on another Redis: those are released here)."""
        with self._lease_lock:
            leases = self._leases.pop(delivery_tag, None) or []
        leases += self._never_started(delivery_tag)
        if not leases:
            return []
        if self._leases_on_broker:
            return leases
        self._release(leases)
        return []

    def settled(self, delivery_tag: Any) -> None:
        """A message was rejected (or returned): give its slots back."""
        with self._lease_lock:
            leases = self._leases.pop(delivery_tag, None) or []
        leases += self._never_started(delivery_tag)
        if leases:
            self._release(leases)

    def _release(self, leases: list[tuple[str, str]]) -> None:
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, member in leases:
                    pipe.zrem(key, member)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("could not release flow slots (they expire with their lease): %s", exc)

    def renew(self, now: float) -> None:
        """Extend the leases of the slots this worker holds (the heartbeat calls it)."""
        with self._lease_lock:
            leases = [lease for held in self._leases.values() for lease in held]
        if not leases:
            return
        until = now + self.lease_seconds
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, member in leases:
                    pipe.zadd(key, {member: until}, xx=True)
                    pipe.pexpire(key, int(self.lease_seconds * 2000) + 1000)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("could not renew flow slot leases (will retry): %s", exc)

    def release_all(self) -> None:
        """Give back every slot this worker holds (its messages go back to the queue)."""
        self.restamp()
        with self._lease_lock:
            tags = set(self._leases) | set(self._unstamped)
        for tag in tags:
            self.settled(tag)


def _attach(channel: Any, gate: FlowGate) -> None:
    """Make the channel's QoS tell ``gate`` when a message is settled, once."""
    qos = getattr(channel, "qos", None)
    holders = getattr(qos, "lease_holders", None)
    if holders is not None and gate not in holders:
        holders.append(gate)
