"""``/api/v1/tasks``: submit, read, bulk status, revoke."""

from __future__ import annotations

from typing import Annotated, Any

from celery import states
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from internal.api.deps import ClientDep, MetricsDep
from internal.api.routes._common import ERRORS, IdPath
from internal.schemas import StatusesOut, StatusesQuery, TaskAccepted, TaskInfo, TaskSubmit, TaskSubmitted
from internal.services import tasks as service

router = APIRouter(prefix="/tasks", tags=["tasks"])


@router.post(
    "",
    status_code=202,
    response_model=TaskSubmitted,
    responses={
        **ERRORS,
        200: {
            "model": TaskInfo | TaskSubmitted,
            "description": "with wait > 0: the task finished; with dedupe_key: the task holding it",
        },
    },
)
async def submit_task(
    body: TaskSubmit,
    client: ClientDep,
    metrics: MetricsDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=60,
            description=(
                "submit and wait up to this many seconds; the answer is then the task as GET "
                "/tasks/{task_id} shows it: 200 if it finished, 202 if not yet"
            ),
        ),
    ] = 0,
) -> Any:
    """Send a public task; answers at once with its id (or, with ``wait``, when done)."""
    if wait <= 0:
        submitted = await service.submit_task(client=client, metrics=metrics, body=body)
        if submitted.deduplicated:
            return JSONResponse(submitted.model_dump(mode="json"), status_code=200)
        return submitted
    info = await service.submit_task_and_wait(client=client, metrics=metrics, body=body, wait=wait)
    return JSONResponse(
        info.model_dump(mode="json"), status_code=200 if info.status in states.READY_STATES else 202
    )


@router.post("/status", response_model=StatusesOut, responses=ERRORS)
async def task_statuses(body: StatusesQuery, client: ClientDep) -> StatusesOut:
    """Statuses of up to 1000 tasks in one Redis round trip."""
    return StatusesOut(statuses=await service.get_task_statuses(client=client, task_ids=body.task_ids))


@router.get("/{task_id}", response_model=TaskInfo, responses=ERRORS)
async def get_task(
    task_id: IdPath,
    client: ClientDep,
    wait: Annotated[
        float,
        Query(ge=0, le=60, description="long-poll: answer when the task is done, or after this many seconds"),
    ] = 0,
) -> TaskInfo:
    """A task's status, result or error, progress, retries, queue, worker and runtime.
    Celery cannot tell an unknown id from a queued task: both read ``PENDING``."""
    return await service.get_task(client=client, task_id=task_id, wait=wait)


@router.delete("/{task_id}", status_code=202, response_model=TaskAccepted, responses=ERRORS)
def revoke_task(
    task_id: IdPath,
    client: ClientDep,
    terminate: Annotated[bool, Query(description="also stop it if running")] = False,
) -> TaskAccepted:
    """Revoke a task: a queued one never runs; with ``terminate`` a running one stops."""
    return service.revoke_task(client=client, task_id=task_id, terminate=terminate)
