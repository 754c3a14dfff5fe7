"""What operators and health checks ask: which queues exist, how long they are, and
whether the broker, the result backend and the workers answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from celery import Celery

from ._errors import BROKER_ERRORS, unreachable
from ._options import options_of
from ._redis import clients_for, is_redis_url
from .worker import PRIORITY_STEPS, redis_priority_queue_keys

__all__ = ["Operations"]

logger = logging.getLogger(__name__)


class Operations:
    """Queue lengths and reachability for one app."""

    def __init__(self, app: Celery, *, default_queue: str, task_routes: Mapping[str, Any]) -> None:
        self.app = app
        self.default_queue = default_queue
        self.task_routes = task_routes
        self.url = str(app.conf.broker_url)
        self.redis_broker = is_redis_url(self.url)

    def known_queues(self) -> list[str]:
        """The default queue, every queue a route names, and ``tasksys_known_queues``."""
        names = {self.default_queue, *options_of(self.app).known_queues}
        for route in self.task_routes.values():
            if isinstance(route, Mapping) and isinstance(route.get("queue"), str):
                names.add(route["queue"])
        return sorted(names)

    def queue_lengths(self, queues: Iterable[str] | None) -> dict[str, int]:
        """Messages waiting per queue (priority sub-queues summed)."""
        names = list(queues) if queues is not None else self.known_queues()
        with unreachable("could not read queue lengths", self.url), self.broker_connection() as conn:
            channel = conn.default_channel
            if self.redis_broker:
                with channel.client.pipeline(transaction=False) as pipe:
                    for name in names:
                        for key in redis_priority_queue_keys(name, channel.sep):
                            pipe.llen(key)
                    counts = pipe.execute()
                per_queue = len(PRIORITY_STEPS)
                return {
                    name: int(sum(counts[i * per_queue : (i + 1) * per_queue]))
                    for i, name in enumerate(names)
                }
            lengths = {}
            for name in names:
                try:
                    lengths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
                except conn.channel_errors:
                    lengths[name] = 0
                    channel = conn.channel()
            return lengths

    @contextmanager
    def broker_connection(self, timeout: float = 2.0) -> Iterator[Any]:
        """A broker connection that is established once, quickly, or fails (kombu's own
        retry loop would wait ``broker_connection_timeout`` first)."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout)
            yield conn

    def ping(self, timeout: float, *, workers: bool) -> dict[str, Any]:
        """``{ok, latency_ms, error}`` for broker and backend, and the answering workers."""
        report: dict[str, Any] = {
            "broker": _probe(self._ping_broker, timeout),
            "backend": _probe(self._ping_backend, timeout),
        }
        if workers:
            answered: list[str] = []
            if report["broker"]["ok"]:
                try:
                    replies = self.app.control.ping(timeout=timeout) or []
                    answered = sorted(name for reply in replies for name in reply)
                except BROKER_ERRORS as exc:
                    logger.warning("worker ping failed: %s", exc)
            report["workers"] = answered
        return report

    def _ping_broker(self, timeout: float) -> None:
        if self.redis_broker:
            self._ping_redis(self.url, timeout)
            return
        with self.broker_connection(timeout):
            return  # other brokers: establishing the connection is the probe

    def _ping_backend(self, timeout: float) -> None:
        backend_url = self.app.conf.result_backend
        if is_redis_url(backend_url):
            self._ping_redis(str(backend_url), timeout)

    def _ping_redis(self, url: str, timeout: float) -> None:
        """PING on a fresh connection bounded by ``timeout`` (pooled clients wait their
        10 s socket timeout on a Redis that accepts connections but does not answer)."""
        client = clients_for(self.app).sync_client(url, timeout)
        try:
            client.ping()
        finally:
            client.close()


def _probe(probe: Callable[[float], None], timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        probe(timeout)
    except Exception as exc:  # a health probe reports any failure, it never raises
        return {"ok": False, "latency_ms": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2), "error": None}
