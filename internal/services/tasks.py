"""Task and workflow operations behind the HTTP API: submit, read, revoke, workflows.

Only tasks marked ``public=True`` in code can be submitted; everything else (Celery's
own ``celery.*`` tasks, internal tasks) is "unknown" to outside callers.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from celery import states
from celery.result import AsyncResult, GroupResult

from internal.schemas import (
    TaskAccepted,
    TaskError,
    TaskInfo,
    TaskProgress,
    TaskSubmit,
    TaskSubmitted,
    WorkflowAccepted,
    WorkflowStep,
    WorkflowSubmit,
)
from internal.services.errors import InvalidInputError
from pkg.celery_task import CeleryClient, UnknownTaskError, public_state

__all__ = [
    "SubmitCounter",
    "get_task",
    "get_task_statuses",
    "require_known_queue",
    "require_public",
    "revoke_task",
    "submit_task",
    "submit_task_and_wait",
    "submit_workflow",
]


class SubmitCounter(Protocol):
    """Counts tasks accepted for sending, by task and queue (the API's metrics)."""

    def count_submitted(self, *, task: str, queue: str) -> None:
        """Count one task."""


def require_public(client: CeleryClient, task_name: str) -> None:
    """:class:`UnknownTaskError` unless the task is registered and marked public."""
    if not client.is_public(task_name):
        raise UnknownTaskError(task_name)


def require_known_queue(client: CeleryClient, queue: str | None, *, field: str = "queue") -> None:
    """:class:`InvalidInputError` unless ``queue`` is one the system knows (the default queue, the routes'
    queues, ``CELERY_QUEUES`` and ``CELERY_EXTRA_QUEUES``): outside callers never
    create queues, so hostile names can neither reach internal keys nor pile up."""
    if queue is None:
        return
    known = client.known_queues()
    if queue not in known:
        message = f"queue {queue!r} is not a known queue; accepted: {', '.join(known)}"
        raise InvalidInputError(message, field=field)


async def submit_task(*, client: CeleryClient, metrics: SubmitCounter, body: TaskSubmit) -> TaskSubmitted:
    """Validate and send one task without blocking the event loop; nothing is sent when
    anything is rejected, or when a task holding ``dedupe_key`` is returned instead."""
    require_public(client, body.task)
    require_known_queue(client, body.queue)
    task_id = await client.submit_async(
        body.task,
        body.args,
        body.kwargs,
        dedupe_key=body.dedupe_key,
        dedupe_ttl=body.dedupe_ttl,
        **_options(body),
    )
    if getattr(task_id, "deduplicated", False):
        status = (await client.get_statuses_async([task_id]))[task_id]
        return TaskSubmitted(task_id=task_id, status=status, deduplicated=True)
    metrics.count_submitted(task=body.task, queue=client.resolve_queue(body.task, body.queue))
    return TaskSubmitted(task_id=task_id, status=states.PENDING)


async def submit_task_and_wait(
    *, client: CeleryClient, metrics: SubmitCounter, body: TaskSubmit, wait: float
) -> TaskInfo:
    """Send a task and wait up to ``wait`` seconds for it to finish (listening before it
    is sent, so a fast result is never missed); the task as ``get_task`` shows it."""
    require_public(client, body.task)
    require_known_queue(client, body.queue)
    if body.dedupe_key is not None or body.dedupe_ttl is not None:
        field = "dedupe_key" if body.dedupe_key is not None else "dedupe_ttl"
        message = f"{field} cannot be combined with wait; submit, then GET /tasks/{{task_id}}?wait="
        raise InvalidInputError(message, field=field)
    options = _options(body)
    task_id, meta = await client.submit_and_wait_async(
        body.task, body.args, body.kwargs, timeout=wait, task_id=options.pop("task_id"), **options
    )
    metrics.count_submitted(task=body.task, queue=client.resolve_queue(body.task, body.queue))
    return _info_from_meta(task_id, meta)


def _options(body: TaskSubmit) -> dict[str, Any]:
    return {
        "task_id": body.task_id,
        "queue": body.queue,
        "priority": body.priority,
        "countdown": body.countdown,
        "eta": body.eta,
        "expires": body.expires,
        "flow_key": body.flow_key,
    }


def _error(value: Any) -> TaskError | None:
    if isinstance(value, BaseException):
        return TaskError(type=type(value).__name__, message=str(value))
    if isinstance(value, dict) and "exc_type" in value:
        return TaskError(type=str(value["exc_type"]), message=str(value.get("exc_message", "")))
    return None


def _info_from_meta(task_id: str, meta: dict[str, Any]) -> TaskInfo:
    status = public_state(meta.get("status"))  # as the batch read shows it
    raw = meta.get("result")
    progress = TaskProgress(**raw) if status == "PROGRESS" and isinstance(raw, dict) else None
    error = _error(raw) if status in (states.FAILURE, states.RETRY, states.REVOKED) else None
    return TaskInfo(
        task_id=task_id,
        task=meta.get("name"),
        status=status,
        result=raw if status == states.SUCCESS else None,
        error=error,
        progress=progress,
        retries=meta.get("retries"),
        queue=meta.get("queue"),
        worker=meta.get("worker"),
        date_done=meta.get("date_done"),
        runtime_ms=meta.get("runtime_ms"),
    )


def _group_info(client: CeleryClient, group: GroupResult) -> TaskInfo:
    ids = [child.id for child in group.results]
    metas = client.get_task_metas(ids)
    children = [_info_from_meta(child_id, metas[child_id]) for child_id in ids]
    failed = next((c for c in children if c.status in (states.FAILURE, states.REVOKED)), None)
    if failed is not None:
        status, error = states.FAILURE, failed.error
    elif all(c.status == states.SUCCESS for c in children):
        status, error = states.SUCCESS, None
    elif any(c.status != states.PENDING for c in children):
        status, error = states.STARTED, None
    else:
        status, error = states.PENDING, None
    done = [c.date_done for c in children if c.date_done]
    return TaskInfo(
        task_id=group.id,
        task="group",
        status=status,
        error=error,
        result=[c.result for c in children] if status == states.SUCCESS else None,
        date_done=max(done) if status in states.READY_STATES and done else None,
    )


async def get_task(*, client: CeleryClient, task_id: str, wait: float = 0.0) -> TaskInfo:
    """State, result or error, progress, retries, queue, worker and timing of one task
    (or of a group workflow). With ``wait`` > 0, answers as soon as the task is done,
    or after ``wait`` seconds. An id never seen reads as ``PENDING``."""
    if wait > 0:
        meta = await client.wait_async(task_id, wait)
    else:
        meta = (await client.get_task_metas_async([task_id]))[task_id]
    if meta.get("status", states.PENDING) == states.PENDING and "name" not in meta:
        group = await asyncio.to_thread(client.app.GroupResult.restore, task_id)
        if group is not None:
            return await asyncio.to_thread(_group_info, client, group)
    return _info_from_meta(task_id, meta)


async def get_task_statuses(*, client: CeleryClient, task_ids: list[str]) -> dict[str, str]:
    """Statuses of up to 1000 tasks, in one Redis round trip."""
    return await client.get_statuses_async(task_ids)


def revoke_task(*, client: CeleryClient, task_id: str, terminate: bool) -> TaskAccepted:
    """Revoke (and with ``terminate`` stop) a task; the revoke outlives worker restarts."""
    client.revoke(task_id, terminate=terminate)
    return TaskAccepted(task_id=task_id, status=states.REVOKED)


def submit_workflow(
    *, client: CeleryClient, metrics: SubmitCounter, body: WorkflowSubmit
) -> WorkflowAccepted:
    """Send a chain, group or chord of public tasks."""
    callback = body.callback
    if (body.type == "chord") != (callback is not None):
        message = (
            "a chord needs a callback"
            if callback is None
            else (f"a {body.type} takes no callback; use type chord")
        )
        raise InvalidInputError(message, field="callback")
    steps = [*body.steps, *([callback] if callback else [])]
    for step in steps:
        require_public(client, step.task)
    signatures = [_signature(client, step) for step in body.steps]
    if callback is not None:
        body_result = client.chord(signatures, _signature(client, callback))
        header = body_result.parent
        ids = [*(child.id for child in getattr(header, "results", None) or []), body_result.id]
        workflow_id = body_result.id
    elif body.type == "chain":
        last = client.chain(*signatures)
        ids = _chain_ids(last)
        workflow_id = last.id
    else:
        group = client.group(*signatures)
        ids = [child.id for child in group.results]
        workflow_id = group.id
    for step in steps:
        metrics.count_submitted(task=step.task, queue=client.resolve_queue(step.task))
    return WorkflowAccepted(workflow_id=workflow_id, task_ids=ids)


def _signature(client: CeleryClient, step: WorkflowStep) -> Any:
    return client.signature(step.task, step.args, step.kwargs)


def _chain_ids(last: AsyncResult) -> list[str]:
    ids: list[str] = []
    node: AsyncResult | None = last
    while node is not None:
        ids.append(node.id)
        node = node.parent
    return ids[::-1]
