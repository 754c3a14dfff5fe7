"""General tasks."""

from __future__ import annotations

from numbers import Real

from internal.infra.celery import celery_client
from internal.tasks.base import AppTask
from pkg.celery_task import PermanentError

__all__ = ["number_sum"]


def _number(name: str, value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise PermanentError(f"{name} must be a number (int or float), got {type(value).__name__} {value!r}")
    return value  # type: ignore[return-value]


@celery_client.app.task(
    bind=True, name="math.number_sum", base=AppTask, max_retries=3, retry_countdown=5, public=True
)
def number_sum(self: AppTask, x: int | float, y: int | float) -> int | float:
    """Return ``x + y``. Non-numbers fail at once; transient errors retry every 5 s, 3 times."""
    return _number("x", x) + _number("y", y)
