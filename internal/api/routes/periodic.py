"""``/api/v1/periodic-tasks``: the dynamic schedule, picked up by beat without restart."""

from __future__ import annotations

from fastapi import APIRouter, Response

from internal.api.deps import ClientDep
from internal.api.routes._common import ERRORS, WITH_CONFLICT, EntryNamePath, PageLimit, PageOffset
from internal.schemas import (
    DEFAULT_PAGE_SIZE,
    PeriodicTask,
    PeriodicTaskCreate,
    PeriodicTaskList,
    PeriodicTaskPatch,
    PeriodicTaskPut,
)
from internal.services import periodic as service

router = APIRouter(prefix="/periodic-tasks", tags=["periodic tasks"])


@router.get("", response_model=PeriodicTaskList, responses=ERRORS)
def list_periodic_tasks(
    client: ClientDep, limit: PageLimit = DEFAULT_PAGE_SIZE, offset: PageOffset = 0
) -> PeriodicTaskList:
    """A page of entries (static and dynamic, sorted by name) with last and next run,
    and the total count."""
    return service.list_periodic_tasks(client=client, limit=limit, offset=offset)


@router.post("", status_code=201, response_model=PeriodicTask, responses=WITH_CONFLICT)
def create_periodic_task(body: PeriodicTaskCreate, client: ClientDep) -> PeriodicTask:
    """Add an entry (409 if the name exists)."""
    return service.create_periodic_task(client=client, body=body)


@router.get("/{name}", response_model=PeriodicTask, responses=ERRORS)
def get_periodic_task(name: EntryNamePath, client: ClientDep) -> PeriodicTask:
    """One entry."""
    return service.get_periodic_task(client=client, name=name)


@router.put("/{name}", response_model=PeriodicTask, responses=WITH_CONFLICT)
def put_periodic_task(name: EntryNamePath, body: PeriodicTaskPut, client: ClientDep) -> PeriodicTask:
    """Create or replace an entry; static entries cannot be replaced (409)."""
    return service.put_periodic_task(client=client, name=name, body=body)


@router.patch("/{name}", response_model=PeriodicTask, responses=WITH_CONFLICT)
def patch_periodic_task(name: EntryNamePath, body: PeriodicTaskPatch, client: ClientDep) -> PeriodicTask:
    """Change some fields, e.g. ``{"enabled": false}``; static entries accept only ``enabled``."""
    return service.patch_periodic_task(client=client, name=name, body=body)


@router.delete("/{name}", status_code=204, response_class=Response, responses=WITH_CONFLICT)
def delete_periodic_task(name: EntryNamePath, client: ClientDep) -> Response:
    """Delete an entry; it never fires again. Static entries: 409 (disable them)."""
    service.delete_periodic_task(client=client, name=name)
    return Response(status_code=204)
