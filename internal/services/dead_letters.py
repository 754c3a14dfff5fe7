"""Dead-letter operations behind the HTTP API; they raise domain errors only."""

from __future__ import annotations

from internal.schemas import DeadLetter, DeadLetterList, TaskAccepted
from pkg.celery_task import CeleryClient, DeadLetterNotFoundError

__all__ = ["delete_dead_letter", "get_dead_letter", "list_dead_letters", "resubmit_dead_letter"]


def list_dead_letters(*, client: CeleryClient, limit: int, offset: int) -> DeadLetterList:
    """A page of entries, newest first, and the total."""
    total, entries = client.dead_letters(limit=limit, offset=offset)
    return DeadLetterList(total=total, dead_letters=[DeadLetter.model_validate(e) for e in entries])


def get_dead_letter(*, client: CeleryClient, entry_id: str) -> DeadLetter:
    """One entry (:class:`DeadLetterNotFoundError` if none)."""
    return DeadLetter.model_validate(client.get_dead_letter(entry_id))


def resubmit_dead_letter(*, client: CeleryClient, entry_id: str) -> TaskAccepted:
    """Send the entry's task again and drop the entry
    (:class:`DeadLetterNotResubmittableError` if it holds no task)."""
    return TaskAccepted(task_id=client.resubmit_dead_letter(entry_id), status="PENDING")


def delete_dead_letter(*, client: CeleryClient, entry_id: str) -> None:
    """Drop an entry (:class:`DeadLetterNotFoundError` if none)."""
    if not client.delete_dead_letter(entry_id):
        raise DeadLetterNotFoundError(entry_id)
