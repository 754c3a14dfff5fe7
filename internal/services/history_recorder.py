"""Task history, database side: turn the workers' stream records into ``task_history``
rows and ``task_transitions``, idempotently (a replayed record is a no-op), and the
retention sweep."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from internal.models import TaskHistory, TaskTransition

__all__ = ["RECORD_STATUS", "apply_records", "delete_older_than", "parse_entry"]

#: The status a record type moves a task to.
RECORD_STATUS = {
    "sent": "PENDING",
    "received": "RECEIVED",
    "started": "STARTED",
    "retried": "RETRY",
    "succeeded": "SUCCESS",
    "failed": "FAILURE",
    "revoked": "REVOKED",
}
_FINAL = {"SUCCESS", "FAILURE", "REVOKED"}


def parse_entry(entry_id: str, fields: dict[Any, Any]) -> dict[str, Any] | None:
    """The record of one stream entry (with ``record_id``), or None if it is malformed."""
    raw = fields.get(b"r", fields.get("r"))
    if not isinstance(raw, str | bytes):
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if (
        not isinstance(record, dict)
        or record.get("type") not in RECORD_STATUS
        or not isinstance(record.get("task_id"), str)
        or not 0 < len(record["task_id"]) <= 255
        or not isinstance(record.get("at"), int | float)
    ):
        return None
    record["record_id"] = entry_id
    return record


def _text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _short(value: Any, limit: int) -> str | None:
    return None if value is None else str(value)[:limit]


async def _insert_transition(session: AsyncSession, record: dict[str, Any], at: datetime) -> bool:
    """Insert the record's transition; False if that record was already applied."""
    detail = {k: record[k] for k in ("error", "detail", "retries", "runtime_ms") if record.get(k) is not None}
    try:
        async with session.begin_nested():
            session.add(
                TaskTransition(
                    record_id=record["record_id"],
                    task_id=record["task_id"],
                    type=record["type"],
                    at=at,
                    worker=_short(record.get("worker"), 255),
                    detail=_text(detail) if detail else None,
                )
            )
            await session.flush()
    except IntegrityError:
        return False
    return True


def _merge(row: TaskHistory, record: dict[str, Any], at: datetime) -> None:
    """Fold one record into ``row``: timestamps kept earliest (received, started) or set
    (finished); the status follows the latest record, except that a final one (success,
    failure, revoked) is never replaced by a non-final one."""
    kind = record["type"]
    status = RECORD_STATUS[kind]
    current = row.status
    if current == "PENDING":
        move = True
    elif current in _FINAL:
        move = status in _FINAL and at >= _last_at(row)
    else:
        move = status in _FINAL or at >= _last_at(row)
    if move:
        row.status = status
    for name, limit in (("task", 255), ("queue", 200), ("worker", 255), ("parent_id", 255), ("root_id", 255)):
        value = record.get(name)
        if value is not None and (getattr(row, name) is None or name == "worker"):
            setattr(row, name, _short(value, limit))
    for name in ("args", "kwargs"):
        if name in record and getattr(row, name) is None:
            setattr(row, name, _text(record[name]))
    if isinstance(record.get("retries"), int):
        row.retries = max(row.retries or 0, record["retries"])
    if at < _aware(row.seen_at):
        row.seen_at = at
    if kind == "sent" and (row.sent_at is None or at < _aware(row.sent_at)):
        row.sent_at = at
    if kind == "received" and (row.received_at is None or at < _aware(row.received_at)):
        row.received_at = at
    if kind == "started":
        row.started_at = at if row.started_at is None else max(_aware(row.started_at), at)
    if status in _FINAL:
        row.finished_at = at
        if "runtime_ms" in record and record["runtime_ms"] is not None:
            row.runtime_ms = float(record["runtime_ms"])
        if kind == "succeeded":
            row.result = _text(record.get("result"))
        error = record.get("error")
        if isinstance(error, dict):
            row.error_type = _short(error.get("type"), 255)
            row.error_message = _short(error.get("message"), 4096)
        if record.get("traceback") is not None:
            row.traceback = _short(record["traceback"], 65536)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _last_at(row: TaskHistory) -> datetime:
    stamps = [_aware(v) for v in (row.finished_at, row.started_at, row.received_at) if v is not None]
    return max(stamps) if stamps else _aware(row.seen_at)


async def apply_records(engine: AsyncEngine, records: list[dict[str, Any]]) -> int:
    """Write ``records`` (in time order) in one transaction; how many were new."""
    applied = 0
    records = sorted(records, key=lambda r: r["at"])
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        rows: dict[str, TaskHistory] = {}
        for record in records:
            at = datetime.fromtimestamp(record["at"], UTC)
            if not await _insert_transition(session, record, at):
                continue
            applied += 1
            task_id = record["task_id"]
            row = rows.get(task_id)
            if row is None:
                row = await session.get(TaskHistory, task_id)
            if row is None:
                row = TaskHistory(task_id=task_id, status="PENDING", retries=0, seen_at=at)
                session.add(row)
            rows[task_id] = row
            _merge(row, record, at)
    return applied


async def delete_older_than(engine: AsyncEngine, days: int, now: datetime | None = None) -> int:
    """Delete history rows (and their transitions) finished, or if unfinished last seen,
    more than ``days`` days before ``now``; how many rows went."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    old = or_(
        TaskHistory.finished_at < cutoff,
        (TaskHistory.finished_at.is_(None)) & (TaskHistory.seen_at < cutoff),
    )
    async with AsyncSession(engine) as session, session.begin():
        ids = list((await session.scalars(select(TaskHistory.task_id).where(old).limit(10_000))).all())
        if ids:
            await session.execute(delete(TaskTransition).where(TaskTransition.task_id.in_(ids)))
            await session.execute(delete(TaskHistory).where(TaskHistory.task_id.in_(ids)))
    return len(ids)
