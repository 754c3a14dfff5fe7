"""Prometheus metrics of the API, in a registry of its own (one per app instance).

Every label value comes from a bounded set, so hostile input cannot grow ``/metrics``:
``method`` is a standard HTTP method or ``other``; ``route`` a route template or
``unmatched``; ``status`` an HTTP status (100-599) or ``other``; ``task`` a public task
name or ``other``; ``queue`` a known queue (routes, the default queue, configured
queues) or ``other``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pkg.celery_task import BrokerUnavailableError, CeleryClient

__all__ = ["HTTP_METHODS", "OTHER", "Metrics"]

logger = logging.getLogger(__name__)

#: The label value of anything outside a label's known set.
OTHER = "other"
#: Methods kept as they are in the ``method`` label (RFC 9110 plus PATCH).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class _QueueLengthCollector(Collector):
    """Reads queue lengths from the broker when Prometheus scrapes."""

    def __init__(self, client: CeleryClient) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("tasksys_broker_up", "1 if the broker answered the last scrape")
        lengths = GaugeMetricFamily("tasksys_queue_length", "Messages waiting in a queue", labels=["queue"])
        try:
            for queue, length in self.client.queue_lengths().items():
                lengths.add_metric([queue], length)
            up.add_metric([], 1)
        except BrokerUnavailableError as exc:
            logger.warning("metrics: queue lengths unavailable: %s", exc)
            up.add_metric([], 0)
        yield up
        yield lengths


class _TaskCountCollector(Collector):
    """Per-task counts every process adds to Redis (throttled starts, deduplicated
    submits), read when Prometheus scrapes, so each API process shows the same totals;
    task names outside the public ones are summed as ``other``."""

    def __init__(
        self, metrics: Metrics, name: str, documentation: str, read: Callable[[], dict[str, int]]
    ) -> None:
        self.metrics = metrics
        self.name = name
        self.documentation = documentation
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=["task"])
        try:
            counts = self.read()
        except BrokerUnavailableError as exc:
            logger.warning("metrics: %s unavailable: %s", self.name, exc)
            counts = {}
        totals: dict[str, int] = {}
        for task, count in counts.items():
            label = self.metrics.task_label(task)
            totals[label] = totals.get(label, 0) + count
        for label, count in sorted(totals.items()):
            family.add_metric([label], count)
        yield family


class _SubmittedCounter:
    """``tasks_submitted.labels(task=..., queue=...)`` with both values bounded."""

    def __init__(self, counter: Counter, metrics: Metrics) -> None:
        self._counter = counter
        self._metrics = metrics

    def labels(self, *, task: str, queue: str) -> Counter:
        """The child counter for this task and queue (``other`` when unknown)."""
        metrics = self._metrics
        return self._counter.labels(task=metrics.task_label(task), queue=metrics.queue_label(queue))


class Metrics:
    """Tasks submitted (by task and queue), request latency (by method, route and
    status), queue lengths, throttled starts and deduplicated submits (by task; read at
    scrape time). Queue labels are the client's ``known_queues()`` (routes, default,
    ``CELERY_QUEUES``, ``CELERY_EXTRA_QUEUES``)."""

    def __init__(self, client: CeleryClient) -> None:
        self.client = client
        self._known_queues: frozenset[str] | None = None
        self.registry = CollectorRegistry()
        self.tasks_submitted = _SubmittedCounter(
            Counter(
                "tasksys_tasks_submitted",
                "Tasks accepted for sending through the API",
                ["task", "queue"],
                registry=self.registry,
            ),
            self,
        )
        self.request_latency = Histogram(
            "tasksys_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.registry.register(_QueueLengthCollector(client))
        self.registry.register(
            _TaskCountCollector(
                self,
                "tasksys_tasks_throttled",
                "Task starts that waited for a flow-control permit (each waiting task once)",
                client.throttled_counts,
            )
        )
        self.registry.register(
            _TaskCountCollector(
                self,
                "tasksys_tasks_deduplicated",
                "Submits answered with the task already holding their dedupe_key (nothing sent)",
                client.deduplicated_counts,
            )
        )

    def count_submitted(self, *, task: str, queue: str) -> None:
        """Count one task accepted for sending (the services' ``SubmitCounter``)."""
        self.tasks_submitted.labels(task=task, queue=queue).inc()

    def observe_request(self, *, method: str, route: str, status: int, seconds: float) -> None:
        """Record one request's latency; ``route`` must already be a template."""
        self.request_latency.labels(
            method=method if method in HTTP_METHODS else OTHER,
            route=route,
            status=str(status) if 100 <= status <= 599 else OTHER,
        ).observe(seconds)

    def task_label(self, task: str) -> str:
        """``task`` if it is a public task of the client, else ``other``."""
        return task if self.client.is_public(task) else OTHER

    def queue_label(self, queue: str) -> str:
        """``queue`` if the system knows it, else ``other``."""
        if self._known_queues is None:  # fixed per client: routes and configured queues
            self._known_queues = frozenset(self.client.known_queues())
        return queue if queue in self._known_queues else OTHER
