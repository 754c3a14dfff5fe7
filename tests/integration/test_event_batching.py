"""EventBatching against a real worker: every task event of N tasks reaches a real
``app.events.Receiver`` on the same Redis database, the worker's events arrive as
``task.multi`` batches, and a batch goes out on the flush timer, well before the
buffer limit or a shutdown would have sent it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from pkg.celery_task._options import options_of
from tests.conftest import Stack
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration

N = 20
WORKER_TYPES = ("task-received", "task-started", "task-succeeded")
#: Slack for a busy 2-core machine on top of the flush interval (an absolute bound).
SLACK = 2.0


class _Capture:
    """A real event receiver on its own thread; records each event with its arrival
    time, and how many events each broker message carried."""

    def __init__(self, app: Any) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        #: Per broker message: arrival time, routing key, (uuid, timestamp) of each event.
        self.batches: list[tuple[float, str, list[tuple[Any, float]]]] = []
        self.lock = threading.Lock()
        capture = self

        class Receiver(app.events.Receiver):  # type: ignore[name-defined,misc]
            def get_consumers(self, consumer_cls: Any, channel: Any) -> Any:
                consumers = super().get_consumers(consumer_cls, channel)
                for consumer in consumers:
                    consumer.register_callback(capture.on_message)
                return consumers

        self.connection = app.connection_for_read()
        self.receiver = Receiver(self.connection, handlers={"*": self.on_event}, app=app)
        self.thread = threading.Thread(target=self.receiver.capture, kwargs={"wakeup": True}, daemon=True)

    def on_event(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((time.time(), event))

    def on_message(self, body: Any, message: Any) -> None:
        arrived = time.time()
        events = [e for e in (body if isinstance(body, list) else [body]) if isinstance(e, dict)]
        stamps = [(e.get("uuid"), float(e["timestamp"])) for e in events]
        with self.lock:
            self.batches.append((arrived, str(message.delivery_info.get("routing_key")), stamps))

    def of_type(self, kind: str, ids: set[str]) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t, e) for t, e in self.events if e.get("type") == kind and e.get("uuid") in ids]

    def heard_from(self, hostname_prefix: str) -> bool:
        with self.lock:
            return any(
                e.get("type") == "worker-heartbeat" and str(e.get("hostname", "")).startswith(hostname_prefix)
                for _, e in self.events
            )

    def stop(self) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=10)
        self.connection.release()


def test_task_events_arrive_complete_batched_and_flushed_on_the_timer(
    stack: Stack, client: Any, unique: str
) -> None:
    options = options_of(client.app)
    assert options.event_buffer_limit > 3 * N, "the test needs batches the buffer limit would not send"
    capture = _Capture(client.app)
    capture.thread.start()
    try:
        # Subscribed once the worker's heartbeat (asked for by the receiver) comes in.
        wait_for(lambda: capture.heard_from("stack-worker@"), timeout=15, what="a worker heartbeat event")
        key = f"batching-{unique}"
        ids = {client.submit("tests.work", [0, key]).id for _ in range(N)}
        wait_for(
            lambda: len(capture.of_type("task-succeeded", ids)) >= N,
            timeout=30,
            what=f"{N} task-succeeded events",
        )
        time.sleep(options.event_flush_interval + 0.5)  # anything late or duplicated shows now
        counts = {
            kind: Counter(e["uuid"] for _, e in capture.of_type(kind, ids))
            for kind in ("task-sent", *WORKER_TYPES)
        }
        with capture.lock:
            batches = [
                (arrived, stamps)
                for arrived, rk, stamps in capture.batches
                if rk == "task.multi" and any(uuid in ids for uuid, _ in stamps)
            ]
        ours = [sum(uuid in ids for uuid, _ in stamps) for _, stamps in batches]
        # How long the oldest event of each batch waited, and the longest any event waited.
        waited = [arrived - min(ts for _, ts in stamps) for arrived, stamps in batches]
        interval = options.event_flush_interval
        print(
            f"\n[event batching] tasks={N} worker_events={sum(ours)} messages={len(batches)} "
            f"largest={max(ours, default=0)} oldest_waited_s={min(waited, default=0):.3f}.."
            f"{max(waited, default=0):.3f} interval_s={interval}"
        )
        for kind, seen in counts.items():
            assert seen == Counter(dict.fromkeys(ids, 1)), (
                f"{kind}: each task's event exactly once, got {seen}"
            )
        assert sum(ours) == 3 * N, "every worker task event came in a task.multi batch"
        assert len(batches) < 3 * N and max(ours) > 1, "events were batched"
        # The buffer never filled (3 N < limit) and the worker kept running, so only the
        # flush timer sends: it starts at a batch's first event and fires one interval
        # later, never before (Celery alone flushes on the next loop turn, within ms).
        assert min(waited) >= 0.9 * interval, (
            f"a batch went out {min(waited):.4f} s after its first event, before the flush timer"
        )
        assert max(waited) < interval + SLACK, (
            f"a batch waited {max(waited):.3f} s, longer than the flush interval"
        )
    finally:
        capture.stop()
