"""The dashboard's view of task history: the history service's answers as plain dicts,
with stored argument text decoded back to values where it is whole JSON."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from internal.services import history

__all__ = ["ServiceHistory"]

#: Filters the tasks page passes on to the history query.
_FILTERS = ("task", "status", "queue", "worker", "q", "since", "until")


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    """``args``/``kwargs`` as values; text that is not whole JSON (truncated) stays text
    and is marked, so it is shown but never re-sent as if it were the original."""
    for field in ("args", "kwargs"):
        text = row.get(field)
        if isinstance(text, str):
            try:
                row[field] = json.loads(text)
            except ValueError:
                row[f"{field}_truncated"] = True
    return row


class ServiceHistory:
    """:class:`internal.dashboard.views.HistoryReader` over the application database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def page(self, filters: dict[str, Any], limit: int, cursor: str | None) -> dict[str, Any]:
        """``{items, next_cursor}``, newest first."""
        chosen = {k: v for k, v in filters.items() if k in _FILTERS and v not in (None, "")}
        result = await history.list_history(engine=self._engine, limit=limit, cursor=cursor, **chosen)
        page = result.model_dump(mode="json")
        page["items"] = [_decoded(item) for item in page["items"]]
        return page

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """One row with ``events`` and ``children``, or ``None``."""
        try:
            detail = await history.get_task_history(engine=self._engine, task_id=task_id)
        except history.HistoryNotFoundError:
            return None
        row = _decoded(detail.model_dump(mode="json"))
        row["children"] = [_decoded(child) for child in row["children"]]
        return row

    async def task_stats(self, since: datetime, until: datetime) -> dict[str, dict[str, Any]]:
        """Per task name: total, succeeded, failed, retried, revoked, failure_rate, runtime_ms."""
        stats = await history.task_stats(engine=self._engine, since=since, until=until)
        return {name: s.model_dump(mode="json") for name, s in stats.tasks.items()}

    async def throughput(self, since: datetime, until: datetime, bucket: int) -> list[dict[str, Any]]:
        """``[{start, counts: {status: n}}]`` per bucket."""
        out = await history.throughput(engine=self._engine, since=since, until=until, bucket=bucket)
        return [b.model_dump(mode="json") for b in out.buckets]

    async def runs(self, task: str, since: datetime, limit: int) -> list[dict[str, Any]]:
        """Recent rows of one task name (for the schedules' last runs)."""
        page = await self.page({"task": task, "since": since}, limit, None)
        return list(page["items"])
