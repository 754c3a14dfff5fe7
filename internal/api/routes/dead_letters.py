"""``/api/v1/dead-letters``: tasks that failed for good and messages workers refused."""

from __future__ import annotations

from fastapi import APIRouter, Response

from internal.api.deps import ClientDep
from internal.api.routes._common import ERRORS, WITH_CONFLICT, IdPath, PageLimit, PageOffset
from internal.schemas import DEFAULT_PAGE_SIZE, DeadLetter, DeadLetterList, TaskAccepted
from internal.services import dead_letters as service

router = APIRouter(prefix="/dead-letters", tags=["dead letters"])


@router.get("", response_model=DeadLetterList, responses=ERRORS)
def list_dead_letters(
    client: ClientDep, limit: PageLimit = DEFAULT_PAGE_SIZE, offset: PageOffset = 0
) -> DeadLetterList:
    """Entries, newest first, with why each is there and its error."""
    return service.list_dead_letters(client=client, limit=limit, offset=offset)


@router.get("/{entry_id}", response_model=DeadLetter, responses=ERRORS)
def get_dead_letter(entry_id: IdPath, client: ClientDep) -> DeadLetter:
    """One entry, with its traceback."""
    return service.get_dead_letter(client=client, entry_id=entry_id)


@router.post("/{entry_id}/resubmit", status_code=202, response_model=TaskAccepted, responses=WITH_CONFLICT)
def resubmit_dead_letter(entry_id: IdPath, client: ClientDep) -> TaskAccepted:
    """Send the task again (same id, args, kwargs, queue) and remove the entry."""
    return service.resubmit_dead_letter(client=client, entry_id=entry_id)


@router.delete("/{entry_id}", status_code=204, response_class=Response, responses=ERRORS)
def delete_dead_letter(entry_id: IdPath, client: ClientDep) -> Response:
    """Remove an entry."""
    service.delete_dead_letter(client=client, entry_id=entry_id)
    return Response(status_code=204)
