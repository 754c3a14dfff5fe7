"""``/api/v1/workflows``: chain, group and chord."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from internal.api.deps import get_client, get_metrics
from internal.api.metrics import Metrics
from internal.api.routes.tasks import ERRORS
from internal.schemas import WorkflowAccepted, WorkflowSubmit
from internal.services import tasks as service
from pkg.celery_task import CeleryClient

router = APIRouter(prefix="/workflows", tags=["workflows"])


@router.post("", status_code=202, response_model=WorkflowAccepted, responses=ERRORS)
def submit_workflow(
    body: WorkflowSubmit,
    client: Annotated[CeleryClient, Depends(get_client)],
    metrics: Annotated[Metrics, Depends(get_metrics)],
) -> WorkflowAccepted:
    """Send a workflow; its overall result is at ``GET /tasks/{workflow_id}``."""
    return service.submit_workflow(client=client, metrics=metrics, body=body)
