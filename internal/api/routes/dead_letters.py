"""``/api/v1/dead-letters``: tasks that failed for good and messages workers refused."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response

from internal.api.deps import get_client
from internal.api.errors import ErrorBody
from internal.api.routes.tasks import ERRORS
from internal.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    DeadLetter,
    DeadLetterList,
    TaskAccepted,
)
from internal.services import dead_letters as service
from pkg.celery_task import CeleryClient

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])

Client = Annotated[CeleryClient, Depends(get_client)]
EntryId = Annotated[str, Path(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.:\-]+$")]
WITH_CONFLICT: dict[int | str, dict[str, Any]] = {**ERRORS, 409: {"model": ErrorBody}}


@router.get("", response_model=DeadLetterList, responses=ERRORS)
def list_dead_letters(
    client: Client,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DeadLetterList:
    """Entries, newest first, with why each is there and its error."""
    return service.list_dead_letters(client=client, limit=limit, offset=offset)


@router.get("/{entry_id}", response_model=DeadLetter, responses=ERRORS)
def get_dead_letter(entry_id: EntryId, client: Client) -> DeadLetter:
    """One entry, with its traceback."""
    return service.get_dead_letter(client=client, entry_id=entry_id)


@router.post("/{entry_id}/resubmit", status_code=202, response_model=TaskAccepted, responses=WITH_CONFLICT)
def resubmit_dead_letter(entry_id: EntryId, client: Client) -> TaskAccepted:
    """Send the task again (same id, args, kwargs, queue) and remove the entry."""
    return service.resubmit_dead_letter(client=client, entry_id=entry_id)


@router.delete("/{entry_id}", status_code=204, response_class=Response, responses=ERRORS)
def delete_dead_letter(entry_id: EntryId, client: Client) -> Response:
    """Remove an entry."""
    service.delete_dead_letter(client=client, entry_id=entry_id)
    return Response(status_code=204)
