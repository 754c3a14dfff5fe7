"""Periodic-task operations behind the HTTP API; they raise domain errors only."""

from __future__ import annotations

from typing import Any

from internal.schemas import (
    PeriodicTask,
    PeriodicTaskCreate,
    PeriodicTaskList,
    PeriodicTaskPatch,
    PeriodicTaskPut,
)
from internal.services.errors import InvalidInputError
from internal.services.tasks import require_known_queue, require_public
from pkg.celery_task import CeleryClient, PeriodicTaskConflictError

__all__ = [
    "create_periodic_task",
    "delete_periodic_task",
    "get_periodic_task",
    "list_periodic_tasks",
    "patch_periodic_task",
    "put_periodic_task",
]


def list_periodic_tasks(*, client: CeleryClient, limit: int, offset: int) -> PeriodicTaskList:
    """A page of entries, static and dynamic, sorted by name, with the total."""
    total, entries = client.periodic_tasks_page(limit=limit, offset=offset)
    return PeriodicTaskList(
        total=total,
        limit=limit,
        offset=offset,
        periodic_tasks=[PeriodicTask.model_validate(entry) for entry in entries],
    )


def get_periodic_task(*, client: CeleryClient, name: str) -> PeriodicTask:
    """One entry (:class:`PeriodicTaskNotFoundError` if none)."""
    return PeriodicTask.model_validate(client.get_periodic_task(name))


def _store(client: CeleryClient, name: str, body: PeriodicTaskPut, *, replace: bool) -> PeriodicTask:
    require_public(client, body.task)
    require_known_queue(client, body.queue)
    client.add_periodic_task(
        body.task,
        body.schedule.type,
        body.schedule.value,
        name=name,
        args=body.args,
        kwargs=body.kwargs,
        queue=body.queue,
        enabled=body.enabled,
        replace=replace,
    )
    return get_periodic_task(client=client, name=name)


def create_periodic_task(*, client: CeleryClient, body: PeriodicTaskCreate) -> PeriodicTask:
    """A new entry; :class:`PeriodicTaskConflictError` if the name exists."""
    return _store(client, body.name, body, replace=False)


def put_periodic_task(*, client: CeleryClient, name: str, body: PeriodicTaskPut) -> PeriodicTask:
    """Create or replace an entry (static entries: :class:`PeriodicTaskConflictError`).
    A ``name`` in the body must be the path's (the body may be an entry as ``GET`` returned it)."""
    if body.name is not None and body.name != name:
        message = f"name {body.name!r} in the body differs from {name!r} in the path; omit it or match it"
        raise InvalidInputError(message, field="name")
    return _store(client, name, body, replace=True)


def patch_periodic_task(*, client: CeleryClient, name: str, body: PeriodicTaskPatch) -> PeriodicTask:
    """Change the given fields. Static entries accept only ``enabled``."""
    current = client.get_periodic_task(name)
    changes = body.model_dump(exclude_unset=True)
    if set(changes) <= {"enabled"}:
        if "enabled" in changes and changes["enabled"] is not None:
            toggle = client.enable_periodic_task if changes["enabled"] else client.disable_periodic_task
            return PeriodicTask.model_validate(toggle(name))
        return PeriodicTask.model_validate(current)
    if current["static"]:
        raise PeriodicTaskConflictError(name, "it is a static entry; only 'enabled' can change")
    merged: dict[str, Any] = {
        "task": current["task"],
        "schedule": {"type": current["schedule"]["type"], "value": current["schedule"]["value"]},
        "args": current["args"],
        "kwargs": current["kwargs"],
        "queue": current["queue"],
        "enabled": current["enabled"],
    }
    merged.update({k: v for k, v in changes.items() if v is not None or k == "queue"})
    try:
        replacement = PeriodicTaskPut.model_validate(merged)
    except ValueError as exc:
        raise InvalidInputError(f"the patched entry is invalid: {exc}") from exc
    return _store(client, name, replacement, replace=True)


def delete_periodic_task(*, client: CeleryClient, name: str) -> None:
    """Delete an entry: :class:`PeriodicTaskNotFoundError` if none,
    :class:`PeriodicTaskConflictError` for static entries."""
    if not client.remove_periodic_task(name):
        client.get_periodic_task(name)  # raises PeriodicTaskNotFoundError
