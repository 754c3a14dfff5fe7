"""Redis result backend that also records when a task started and how long it ran.

``BaseTask`` stamps ``started_at`` on the request when the body starts; finished
results then carry ``date_started`` and ``runtime_ms`` next to Celery's ``date_done``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend

__all__ = ["TimedRedisBackend"]


class TimedRedisBackend(CeleryRedisBackend):  # type: ignore[misc]
    """Celery's Redis backend plus ``date_started`` and ``runtime_ms`` in the result."""

    def _get_result_meta(
        self,
        result: Any,
        state: str,
        traceback: Any,
        request: Any,
        format_date: bool = True,
        encode: bool = False,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = super()._get_result_meta(
            result, state, traceback, request, format_date=format_date, encode=encode
        )
        started_at = getattr(request, "started_at", None) if request is not None else None
        if started_at is not None:
            meta["date_started"] = datetime.fromtimestamp(started_at, UTC).isoformat()
            if state in self.READY_STATES:
                finished = datetime.now(UTC).timestamp()
                meta["runtime_ms"] = round((finished - started_at) * 1000, 3)
        return meta
