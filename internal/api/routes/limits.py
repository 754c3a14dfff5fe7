"""``/api/v1/limits``: flow limits (global and per-key rates, concurrency) of tasks,
changed at runtime without restarting workers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from internal.api.deps import ClientDep
from internal.api.routes._common import ERRORS
from internal.schemas import IDENTIFIER, FlowLimitList, FlowLimitsIn, FlowLimitsOut
from internal.services import limits as service

router = APIRouter(prefix="/limits", tags=["flow control"])

TaskPath = Annotated[str, Path(min_length=1, max_length=200, pattern=IDENTIFIER)]


@router.get("", response_model=FlowLimitList, responses=ERRORS)
def list_limits(client: ClientDep) -> FlowLimitList:
    """Every task with limits: what is in force, whether the code declares it or it was
    set at runtime, and how many starts waited for a permit."""
    return service.list_limits(client=client)


@router.put("/{task}", response_model=FlowLimitsOut, responses=ERRORS)
def put_limits(task: TaskPath, body: FlowLimitsIn, client: ClientDep) -> FlowLimitsOut:
    """Replace the task's limits on every worker within about a second."""
    return service.put_limits(client=client, task=task, body=body)


@router.delete("/{task}", response_model=FlowLimitsOut, responses=ERRORS)
def reset_limits(task: TaskPath, client: ClientDep) -> FlowLimitsOut:
    """Drop the runtime limits: the task's declared ones apply again."""
    return service.reset_limits(client=client, task=task)
