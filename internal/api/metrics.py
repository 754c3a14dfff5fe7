"""Prometheus metrics of the API, in a registry of its own (one per app instance)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pkg.celery_task import BrokerUnavailableError, CeleryClient

__all__ = ["Metrics"]

logger = logging.getLogger(__name__)


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


class Metrics:
    """Tasks submitted (by task and queue), request latency (by method, route and
    status) and queue lengths (read at scrape time)."""

    def __init__(self, client: CeleryClient) -> None:
        self.registry = CollectorRegistry()
        self.tasks_submitted = Counter(
            "tasksys_tasks_submitted",
            "Tasks accepted for sending through the API",
            ["task", "queue"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "tasksys_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.registry.register(_QueueLengthCollector(client))
