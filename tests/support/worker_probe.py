"""A remote-control probe into a worker's event loop for tests: the inspect command
``tasksys_timer_entries`` reports its timer heap. Workers load it with
``CELERY_EXTRA_INCLUDE=tests.support.tasks,tests.support.worker_probe``."""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

#: The ``CELERY_EXTRA_INCLUDE`` value that loads this probe next to the usual test tasks.
INCLUDE = "tests.support.tasks,tests.support.worker_probe"


@inspect_command(name="tasksys_timer_entries")  # type: ignore[untyped-decorator]
def timer_entries(state: Any, **_: Any) -> dict[str, int]:
    """Entries in the event loop's timer heap, and how many of them are cancelled."""
    hub = getattr(state.consumer, "hub", None)
    timer = hub.timer if hub is not None else state.consumer.timer
    entries = timer.queue  # kombu's public snapshot of the heap
    return {"entries": len(entries), "canceled": sum(1 for item in entries if item.entry.canceled)}
