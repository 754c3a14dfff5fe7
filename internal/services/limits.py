"""Flow limits behind the HTTP API: list them, replace one task's at runtime, reset it.
Only public tasks are addressable, as for submits."""

from __future__ import annotations

from internal.schemas import FlowLimitList, FlowLimitsIn, FlowLimitsOut
from internal.services.tasks import require_public
from pkg.celery_task import CeleryClient

__all__ = ["list_limits", "put_limits", "reset_limits"]


def list_limits(*, client: CeleryClient) -> FlowLimitList:
    """Every public task with limits, declared or set at runtime."""
    rows = [row for row in client.limits() if client.is_public(row["task"])]
    return FlowLimitList(items=[FlowLimitsOut(**row) for row in rows])


def _one(client: CeleryClient, task: str) -> FlowLimitsOut:
    for row in client.limits():
        if row["task"] == task:
            return FlowLimitsOut(**row)
    none = dict.fromkeys(
        ("global_rate_limit", "rate_limit_per_key", "concurrency_limit", "concurrency_limit_per_key")
    )
    return FlowLimitsOut(task=task, **none, source="declared", throttled=0)


def put_limits(*, client: CeleryClient, task: str, body: FlowLimitsIn) -> FlowLimitsOut:
    """Replace the task's limits on every worker (applied within about a second)."""
    require_public(client, task)
    client.set_limits(task, **body.model_dump())
    return _one(client, task)


def reset_limits(*, client: CeleryClient, task: str) -> FlowLimitsOut:
    """Drop the runtime limits: the ones the task's code declares apply again."""
    require_public(client, task)
    client.reset_limits(task)
    return _one(client, task)
