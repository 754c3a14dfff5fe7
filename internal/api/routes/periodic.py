"""``/api/v1/periodic-tasks``: the dynamic schedule, picked up by beat without restart."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from internal.api.deps import get_client
from internal.api.errors import ErrorBody
from internal.api.routes.tasks import ERRORS
from internal.schemas import (
    DEFAULT_PAGE_SIZE,
    ENTRY_NAME,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    PeriodicTask,
    PeriodicTaskCreate,
    PeriodicTaskList,
    PeriodicTaskPatch,
    PeriodicTaskPut,
)
from internal.services import periodic as service
from pkg.celery_task import CeleryClient

router = APIRouter(prefix="/periodic-tasks", tags=["periodic tasks"])

Client = Annotated[CeleryClient, Depends(get_client)]
Name = Annotated[str, Path(min_length=1, max_length=200, pattern=ENTRY_NAME)]
WITH_CONFLICT: dict[int | str, dict[str, Any]] = {**ERRORS, 409: {"model": ErrorBody}}


@router.get("", response_model=PeriodicTaskList, responses=ERRORS)
def list_periodic_tasks(
    client: Client,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> PeriodicTaskList:
    """A page of entries (static and dynamic, sorted by name) with last and next run,
    and the total count."""
    return service.list_periodic_tasks(client=client, limit=limit, offset=offset)


@router.post("", status_code=201, response_model=PeriodicTask, responses=WITH_CONFLICT)
def create_periodic_task(body: PeriodicTaskCreate, client: Client) -> PeriodicTask:
    """Add an entry (409 if the name exists)."""
    return service.create_periodic_task(client=client, body=body)


@router.get("/{name}", response_model=PeriodicTask, responses=ERRORS)
def get_periodic_task(name: Name, client: Client) -> PeriodicTask:
    """One entry."""
    return service.get_periodic_task(client=client, name=name)


@router.put("/{name}", response_model=PeriodicTask, responses=WITH_CONFLICT)
def put_periodic_task(name: Name, body: PeriodicTaskPut, client: Client) -> PeriodicTask:
    """Create or replace an entry; static entries cannot be replaced (409)."""
    return service.put_periodic_task(client=client, name=name, body=body)


@router.patch("/{name}", response_model=PeriodicTask, responses=WITH_CONFLICT)
def patch_periodic_task(name: Name, body: PeriodicTaskPatch, client: Client) -> PeriodicTask:
    """Change some fields, e.g. ``{"enabled": false}``; static entries accept only ``enabled``."""
    return service.patch_periodic_task(client=client, name=name, body=body)


@router.delete("/{name}", status_code=204, response_class=Response, responses=WITH_CONFLICT)
def delete_periodic_task(name: Name, client: Client) -> Response:
    """Delete an entry; it never fires again. Static entries: 409 (disable them)."""
    service.delete_periodic_task(client=client, name=name)
    return Response(status_code=204)
