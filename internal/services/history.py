"""Queries over the durable task history (``task_history``, ``task_transitions``) and
the queue-length samples: the list with keyset paging, one task, and statistics.

Every time range is validated (``since < until``, at most ``MAX_RANGE``) before any
query runs; a database that does not answer raises :class:`HistoryUnavailableError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from internal.models import QueueLengthSample, TaskHistory, TaskTransition
from internal.schemas import (
    HistoryDetail,
    HistoryError,
    HistoryEvent,
    HistoryItem,
    HistoryPage,
    QueueSamplePoint,
    QueueStatsOut,
    RuntimePercentiles,
    TaskStats,
    TaskStatsOut,
    ThroughputBucket,
    ThroughputOut,
)
from internal.services.errors import InvalidInputError, ServiceError

__all__ = [
    "MAX_BUCKETS",
    "MAX_RANGE",
    "HistoryNotFoundError",
    "HistoryUnavailableError",
    "get_task_history",
    "list_history",
    "queue_stats",
    "task_stats",
    "throughput",
]

#: The widest time range a statistics query may cover.
MAX_RANGE = timedelta(days=31)
#: The most buckets a throughput query may return.
MAX_BUCKETS = 10_000
#: The most queue-length samples one query returns.
MAX_SAMPLES = 50_000
#: Children listed with a task.
MAX_CHILDREN = 100
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")


class HistoryUnavailableError(ServiceError):
    """The database holding the history did not answer."""


class HistoryNotFoundError(ServiceError):
    """No history row for this task id."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no history for task {task_id!r}")
        self.task_id = task_id


def _utc(value: datetime) -> datetime:
    """``value`` as naive UTC, the form stored (a naive input is taken as UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _aware(value: datetime | None) -> datetime | None:
    return None if value is None else _as_utc(value)


def _as_utc(value: datetime) -> datetime:
    """A stored (naive UTC) time as an aware one."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _range(since: datetime | None, until: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    end = _utc(until) if until is not None else datetime.now(UTC).replace(tzinfo=None)
    start = _utc(since) if since is not None else end - default
    if start >= end:
        raise InvalidInputError(
            f"since ({start.isoformat()}) must be before until ({end.isoformat()})", field="since"
        )
    if end - start > MAX_RANGE:
        raise InvalidInputError(
            f"the range since..until spans {end - start}; at most {MAX_RANGE.days} days are accepted",
            field="since",
        )
    return start, end


def encode_cursor(seen_at: datetime, task_id: str) -> str:
    """The opaque cursor after the row ``(seen_at, task_id)``."""
    raw = json.dumps([_utc(seen_at).isoformat(), task_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(seen_at, task_id)`` a cursor points after; InvalidInputError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        seen, task_id = json.loads(raw)
        if not isinstance(seen, str) or not isinstance(task_id, str) or len(task_id) > 255:
            raise ValueError("cursor fields have the wrong type")
        return _utc(datetime.fromisoformat(seen)), task_id
    except (ValueError, TypeError, binascii.Error) as exc:
        raise InvalidInputError(
            "cursor is not a value returned as next_cursor by this endpoint", field="cursor"
        ) from exc


def _item(row: TaskHistory) -> HistoryItem:
    error = None
    if row.error_type is not None or row.error_message is not None:
        error = HistoryError(type=row.error_type, message=row.error_message)
    return HistoryItem(
        task_id=row.task_id,
        task=row.task,
        status=row.status,
        queue=row.queue,
        worker=row.worker,
        args=row.args,
        kwargs=row.kwargs,
        result=row.result,
        error=error,
        traceback=row.traceback,
        retries=row.retries,
        parent_id=row.parent_id,
        root_id=row.root_id,
        sent_at=_aware(row.sent_at),
        received_at=_aware(row.received_at),
        started_at=_aware(row.started_at),
        finished_at=_aware(row.finished_at),
        runtime_ms=row.runtime_ms,
    )


async def _rows(engine: AsyncEngine, statement: Any) -> list[Any]:
    try:
        async with engine.connect() as conn:
            result = await conn.execute(statement)
            return list(result.all())
    except (SQLAlchemyError, OSError) as exc:
        raise HistoryUnavailableError(
            f"the history database is not answering ({type(exc).__name__})"
        ) from exc


def _orm(row: Any) -> TaskHistory:
    return TaskHistory(**dict(row._mapping))


async def list_history(
    *,
    engine: AsyncEngine,
    limit: int,
    task: str | None = None,
    status: str | None = None,
    queue: str | None = None,
    worker: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    q: str | None = None,
    cursor: str | None = None,
) -> HistoryPage:
    """A page of history newest first (by ``sent_at``, else first-seen time, then task
    id), filtered; ``q`` matches a task id exactly or a task name by substring."""
    table = TaskHistory.__table__
    conditions: list[Any] = []
    if since is not None and until is not None and _utc(since) >= _utc(until):
        raise InvalidInputError("since must be before until", field="since")
    for column, value in (("task", task), ("status", status), ("queue", queue), ("worker", worker)):
        if value is not None:
            conditions.append(table.c[column] == value)
    if since is not None:
        conditions.append(table.c.seen_at >= _utc(since))
    if until is not None:
        conditions.append(table.c.seen_at < _utc(until))
    if q:
        escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(or_(table.c.task_id == q, table.c.task.like(f"%{escaped}%", escape="\\")))
    if cursor is not None:
        seen_at, task_id = decode_cursor(cursor)
        conditions.append(
            or_(table.c.seen_at < seen_at, and_(table.c.seen_at == seen_at, table.c.task_id < task_id))
        )
    statement = (
        select(table)
        .where(*conditions)
        .order_by(table.c.seen_at.desc(), table.c.task_id.desc())
        .limit(limit + 1)
    )
    rows = await _rows(engine, statement)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].seen_at, rows[-1].task_id) if more and rows else None
    return HistoryPage(items=[_item(_orm(r)) for r in rows], next_cursor=next_cursor)


async def get_task_history(*, engine: AsyncEngine, task_id: str) -> HistoryDetail:
    """One task's row, its transitions oldest first, and its children."""
    table = TaskHistory.__table__
    rows = await _rows(engine, select(table).where(table.c.task_id == task_id))
    if not rows:
        raise HistoryNotFoundError(task_id)
    transitions = TaskTransition.__table__
    events = await _rows(
        engine,
        select(transitions.c.type, transitions.c.at, transitions.c.worker, transitions.c.detail)
        .where(transitions.c.task_id == task_id)
        .order_by(transitions.c.at, transitions.c.id),
    )
    children = await _rows(
        engine,
        select(table)
        .where(table.c.parent_id == task_id, table.c.task_id != task_id)
        .order_by(table.c.seen_at, table.c.task_id)
        .limit(MAX_CHILDREN),
    )
    item = _item(_orm(rows[0]))
    return HistoryDetail(
        **item.model_dump(),
        events=[
            HistoryEvent(type=e.type, at=_as_utc(e.at), worker=e.worker, detail=e.detail) for e in events
        ],
        children=[_item(_orm(c)) for c in children],
    )


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


async def task_stats(*, engine: AsyncEngine, since: datetime | None, until: datetime | None) -> TaskStatsOut:
    """Per task name: counts by final status, tasks that retried, failure rate (failed /
    finished) and runtime percentiles, over tasks first seen in ``[since, until)``."""
    start, end = _range(since, until, timedelta(days=1))
    table = TaskHistory.__table__
    rows = await _rows(
        engine,
        select(table.c.task, table.c.status, table.c.retries, table.c.runtime_ms).where(
            table.c.seen_at >= start, table.c.seen_at < end
        ),
    )
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    runtimes: dict[str, list[float]] = defaultdict(list)
    for name, status, retries, runtime in rows:
        key = name or "<unknown>"
        bucket = counts[key]
        bucket["total"] += 1
        bucket[status] += 1
        if retries:
            bucket["retried"] += 1
        if runtime is not None and status in FINAL_STATES:
            runtimes[key].append(float(runtime))
    out: dict[str, TaskStats] = {}
    for name, bucket in sorted(counts.items()):
        values = sorted(runtimes[name])
        finished = bucket["SUCCESS"] + bucket["FAILURE"]
        out[name] = TaskStats(
            total=bucket["total"],
            succeeded=bucket["SUCCESS"],
            failed=bucket["FAILURE"],
            retried=bucket["retried"],
            revoked=bucket["REVOKED"],
            failure_rate=bucket["FAILURE"] / finished if finished else 0.0,
            runtime_ms=RuntimePercentiles(
                p50=_percentile(values, 0.50),
                p95=_percentile(values, 0.95),
                p99=_percentile(values, 0.99),
                max=values[-1] if values else None,
            ),
        )
    return TaskStatsOut(since=start.replace(tzinfo=UTC), until=end.replace(tzinfo=UTC), tasks=out)


async def throughput(
    *, engine: AsyncEngine, since: datetime | None, until: datetime | None, bucket: int
) -> ThroughputOut:
    """Tasks that finished in each ``bucket``-second slice of ``[since, until)``, by final status."""
    start, end = _range(since, until, timedelta(hours=1))
    count = math.ceil((end - start).total_seconds() / bucket)
    if count > MAX_BUCKETS:
        raise InvalidInputError(
            f"since..until in {bucket}-second buckets makes {count} buckets; at most {MAX_BUCKETS} "
            "are accepted (widen bucket or narrow the range)",
            field="bucket",
        )
    table = TaskHistory.__table__
    rows = await _rows(
        engine,
        select(table.c.finished_at, table.c.status).where(
            table.c.finished_at >= start, table.c.finished_at < end, table.c.status.in_(FINAL_STATES)
        ),
    )
    slots: list[dict[str, int]] = [dict.fromkeys(FINAL_STATES, 0) for _ in range(count)]
    for finished_at, status in rows:
        index = int((_utc(finished_at) - start).total_seconds() // bucket)
        if 0 <= index < count:
            slots[index][status] += 1
    buckets = [
        ThroughputBucket(start=(start + timedelta(seconds=i * bucket)).replace(tzinfo=UTC), counts=slot)
        for i, slot in enumerate(slots)
    ]
    return ThroughputOut(
        since=start.replace(tzinfo=UTC), until=end.replace(tzinfo=UTC), bucket=bucket, buckets=buckets
    )


async def queue_stats(
    *, engine: AsyncEngine, since: datetime | None, until: datetime | None
) -> QueueStatsOut:
    """Queue-length samples in ``[since, until)`` per queue, oldest first (at most ``MAX_SAMPLES``)."""
    start, end = _range(since, until, timedelta(hours=1))
    table = QueueLengthSample.__table__
    rows = await _rows(
        engine,
        select(table.c.queue, table.c.length, table.c.sampled_at)
        .where(table.c.sampled_at >= start, table.c.sampled_at < end)
        .order_by(table.c.sampled_at, table.c.id)
        .limit(MAX_SAMPLES),
    )
    queues: dict[str, list[QueueSamplePoint]] = defaultdict(list)
    for queue, length, sampled_at in rows:
        queues[queue].append(QueueSamplePoint(at=_as_utc(sampled_at), length=length))
    return QueueStatsOut(since=start.replace(tzinfo=UTC), until=end.replace(tzinfo=UTC), queues=dict(queues))
