"""Base task of this application: the library's base plus database errors worth retrying."""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy.exc import DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from pkg.celery_task import BaseTask

__all__ = ["AppTask"]


class AppTask(BaseTask):
    """Retries lost database connections and pool timeouts as transient errors."""

    transient_errors: ClassVar[tuple[type[BaseException], ...]] = (
        *BaseTask.transient_errors,
        DisconnectionError,
        PoolTimeoutError,
    )
