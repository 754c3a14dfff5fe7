"""``/api/v1/workflows``: chain, group and chord."""

from __future__ import annotations

from fastapi import APIRouter

from internal.api.deps import ClientDep, MetricsDep
from internal.api.routes._common import ERRORS
from internal.schemas import WorkflowAccepted, WorkflowSubmit
from internal.services import tasks as service

router = APIRouter(prefix="/workflows", tags=["workflows"])


@router.post("", status_code=202, response_model=WorkflowAccepted, responses=ERRORS)
def submit_workflow(body: WorkflowSubmit, client: ClientDep, metrics: MetricsDep) -> WorkflowAccepted:
    """Send a workflow; its overall result is at ``GET /tasks/{workflow_id}``."""
    return service.submit_workflow(client=client, metrics=metrics, body=body)
