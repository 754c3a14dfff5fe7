"""The unacked-message heartbeat: a live worker keeps the messages it holds from being
restored to another worker, and kombu's default unacked index is still swept."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.transport import redis as kombu_redis

from .._compat import channel_client, held_tags
from .._options import options_of

__all__ = ["LegacyUnackedSweep", "UnackedHeartbeat"]

logger = logging.getLogger(__name__)

#: Transport options the legacy sweep's stock connection keeps from ours (where the
#: keys are and how to connect); everything else is kombu's default, as stock workers use.
_LEGACY_OPTIONS = frozenset(
    {"global_keyprefix", "socket_connect_timeout", "socket_timeout", "health_check_interval", "sep"}
)


class LegacyUnackedSweep:
    """Restores kombu's default unacked index (``unacked_index``) exactly as a stock
    kombu worker would: entries older than ``timeout`` go back to their queue, filed on
    stock's priority steps. Our workers keep their own index, so without this the
    entries our versions before it left there (or stock workers that died while no
    stock worker runs) would never come back."""

    interval = 60.0
    batch = 1000

    def __init__(self, connection: Any, timeout: float) -> None:
        self._connection = connection
        self.timeout = timeout
        self._next = 0.0

    @classmethod
    def for_channel(cls, channel: kombu_redis.Channel, timeout: float | None) -> LegacyUnackedSweep | None:
        """The sweep for a worker on ``channel``; ``None`` when it uses kombu's default
        index itself (kombu sweeps it then) or ``timeout`` is 0 / ``None``."""
        if not timeout or channel.unacked_index_key == kombu_redis.Channel.unacked_index_key:
            return None
        conn = channel.connection.client
        options = {k: v for k, v in (conn.transport_options or {}).items() if k in _LEGACY_OPTIONS}
        options["visibility_timeout"] = float(timeout)
        return cls(conn.clone(transport="redis", transport_options=options), float(timeout))

    def maybe_sweep(self, now: float) -> None:
        """Sweep at the first call and then every :attr:`interval` seconds."""
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            qos = self._connection.default_channel.qos
            with qos.channel.conn_or_acquire() as client:
                stale = int(client.zcount(qos.unacked_index_key, 0, now - self.timeout))
            if stale:
                logger.warning(
                    "restoring %d message(s) held more than %d s in kombu's default unacked index %r",
                    stale,
                    self.timeout,
                    qos.unacked_index_key,
                )
                qos.restore_visible(num=self.batch, interval=1)
        except (redis.RedisError, KombuOperationalError, OSError) as exc:
            logger.warning("could not sweep kombu's default unacked index (will retry): %s", exc)

    def close(self) -> None:
        """Release the sweep's connection."""
        self._connection.release()


class UnackedHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: refreshes the Redis transport's unacked-index timestamps of the
    messages this worker holds (running, reserved, waiting for their ETA).

    With a short ``visibility_timeout`` a dead worker's messages come back within about
    that long, and a live worker's long or ETA-held messages are never restored to
    another worker while it keeps beating. A thread, not the event loop, beats, so a
    task blocking the main thread (solo pool) does not stop it. The same thread runs the
    :class:`LegacyUnackedSweep` of kombu's default index.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, c: Any) -> None:
        self._halt()
        channel = c.task_consumer.channel if c.task_consumer is not None else None
        if not isinstance(channel, kombu_redis.Channel):
            return
        interval = float(
            options_of(c.app).unacked_heartbeat_interval or max(1.0, channel.visibility_timeout / 6)
        )
        legacy = LegacyUnackedSweep.for_channel(channel, options_of(c.app).legacy_unacked_timeout)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._beat,
            args=(channel, interval, stop, legacy),
            name="tasksys-unacked-heartbeat",
            daemon=True,
        )
        self._stop, self._thread = stop, thread
        thread.start()

    @staticmethod
    def _beat(
        channel: kombu_redis.Channel,
        interval: float,
        stop: threading.Event,
        legacy: LegacyUnackedSweep | None = None,
    ) -> None:
        client = channel_client(channel)
        key = channel.unacked_index_key
        try:
            while not stop.wait(interval):
                now = time.time()
                if legacy is not None:
                    legacy.maybe_sweep(now)
                for holder in list(getattr(channel.qos, "lease_holders", ())):
                    holder.renew(now)
                tags = held_tags(channel.qos)
                if not tags:
                    continue
                try:
                    client.zadd(key, dict.fromkeys(tags, now), xx=True)
                except redis.RedisError as exc:
                    logger.warning("unacked heartbeat failed (will retry): %s", exc)
        finally:
            if legacy is not None:
                legacy.close()

    def _halt(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._stop = self._thread = None

    def stop(self, c: Any) -> None:
        self._halt()

    def shutdown(self, c: Any) -> None:
        self._halt()
