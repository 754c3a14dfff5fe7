"""What each dashboard page shows and what its actions do, built on the services
(``internal/services``) and the client; no HTTP, no templates here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from internal.config.setting import Settings
from internal.dashboard import schedule_times
from internal.dashboard.charts import line_chart, stacked_bars
from internal.dashboard.fingerprint import FailureGroup, group_failures
from internal.models import QueueLengthSample
from internal.services import dead_letters as dead_letter_service
from internal.services import operations
from internal.services.errors import InvalidInputError
from pkg.celery_task import CeleryClient, DeadLetterNotFoundError, PeriodicTaskNotFoundError, TaskIdInUseError

__all__ = ["Context", "HistoryReader", "NotFound"]

#: Newest dead letters read for grouping (the list itself keeps at most 10,000).
MAX_GROUPED = 5000
#: Largest edited ``args``/``kwargs`` JSON accepted from the edit form.
MAX_EDIT_BYTES = 64 * 1024
#: Header linking a re-submitted task to the one it replaces.
RESUBMITTED_FROM = "resubmitted_from"
#: Namespace of the ids of edited re-submissions (one id per dead-letter entry).
_RESUBMIT_NS = uuid.UUID("8a6f0d52-5b8e-4d8e-9a55-6c1f3e2b7d10")
FINAL_STATUSES = ("SUCCESS", "FAILURE", "REVOKED", "RETRY")


class NotFound(Exception):
    """The page's object does not exist."""


class HistoryReader(Protocol):
    """Task history as the dashboard reads it (the shapes of ``/api/v1/history`` and
    ``/api/v1/stats/*``)."""

    async def page(self, filters: dict[str, Any], limit: int, cursor: str | None) -> dict[str, Any]:
        """``{items, next_cursor}``, newest first."""

    async def get(self, task_id: str) -> dict[str, Any] | None:
        """One row with ``events`` and ``children``, or ``None``."""

    async def task_stats(self, since: datetime, until: datetime) -> dict[str, dict[str, Any]]:
        """Per task name: total, succeeded, failed, retried, revoked, failure_rate, runtime_ms."""

    async def throughput(self, since: datetime, until: datetime, bucket: int) -> list[dict[str, Any]]:
        """``[{start, counts: {status: n}}]`` per bucket."""

    async def runs(self, task: str, since: datetime, limit: int) -> list[dict[str, Any]]:
        """Recent rows of one task name (for schedules' last runs)."""


@dataclass
class Context:
    """What the views need: the API app's client, database engine and settings."""

    client: CeleryClient
    engine: AsyncEngine | None
    settings: Settings
    history: HistoryReader | None = None

    @property
    def timezone(self) -> str:
        """The schedules' time zone."""
        return self.settings.app.timezone


def pretty_json(value: Any) -> str:
    """Indented JSON for display (escaped by the template like any other text)."""
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def compact_json(value: Any) -> str:
    """One-line JSON for display (escaped by the template; unlike ``tojson`` it shows
    ``<`` as ``<``, not ``\\u003c``)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def bounded_int(raw: str | None, default: int, low: int, high: int) -> int:
    """A query-string integer clamped to ``low..high`` (``default`` if absent or not a number)."""
    try:
        value = int(raw) if raw is not None else default
    except ValueError:
        return default
    return max(low, min(high, value))


def _bounded_id(value: str, what: str) -> str:
    """An id or name from a URL or form: 1-255 characters, else :class:`NotFound`."""
    if not value or len(value) > 255:
        raise NotFound(f"no {what} with that id (ids are 1-255 characters)")
    return value


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# -- overview ------------------------------------------------------------------------


async def _queue_samples(ctx: Context, since: datetime) -> dict[str, list[tuple[datetime, float]]]:
    if ctx.engine is None:
        return {}
    query = (
        select(QueueLengthSample.queue, QueueLengthSample.length, QueueLengthSample.sampled_at)
        .where(QueueLengthSample.sampled_at >= since)
        .order_by(QueueLengthSample.sampled_at)
        .limit(20_000)
    )
    series: dict[str, list[tuple[datetime, float]]] = {}
    try:
        async with ctx.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    except Exception:  # a missing table or a database that is down: show no chart
        return {}
    for queue, length, sampled_at in rows:
        at = _parse_time(sampled_at)
        if at is not None:
            series.setdefault(str(queue), []).append((at, float(length)))
    return series


async def overview(ctx: Context, *, hours: int) -> dict[str, Any]:
    """Queue lengths now and over time, throughput, failure rate, workers."""
    now = datetime.now(UTC)
    since = now - timedelta(hours=hours)
    lengths, workers, samples = await asyncio.gather(
        asyncio.to_thread(operations.queue_lengths, client=ctx.client),
        operations.list_workers(client=ctx.client),
        _queue_samples(ctx, since),
    )
    throughput_chart = None
    failure_rate = None
    totals: dict[str, int] = {}
    if ctx.history is not None:
        bucket = max(60, hours * 3600 // 60)
        buckets = await ctx.history.throughput(since, now, bucket)
        throughput_chart = stacked_bars(
            [(_parse_time(b["start"]) or now, dict(b["counts"])) for b in buckets],
            FINAL_STATUSES,
            title="tasks finished per bucket",
        )
        stats = await ctx.history.task_stats(since, now)
        for row in stats.values():
            for key in ("total", "succeeded", "failed", "retried", "revoked"):
                totals[key] = totals.get(key, 0) + int(row.get(key) or 0)
        finished = totals.get("succeeded", 0) + totals.get("failed", 0)
        failure_rate = totals.get("failed", 0) / finished if finished else None
    return {
        "queue_lengths": lengths,
        "queue_chart": line_chart(samples, title="queue lengths"),
        "throughput_chart": throughput_chart,
        "failure_rate": failure_rate,
        "totals": totals,
        "workers": [w.model_dump() for w in workers],
        "history": ctx.history is not None,
    }


# -- failures ------------------------------------------------------------------------


async def _all_dead_letters(ctx: Context) -> tuple[int, list[dict[str, Any]]]:
    total, entries = await asyncio.to_thread(ctx.client.dead_letters, limit=1000, offset=0)
    offset = len(entries)
    while offset < min(total, MAX_GROUPED):
        _, more = await asyncio.to_thread(ctx.client.dead_letters, limit=1000, offset=offset)
        if not more:
            break
        entries.extend(more)
        offset += len(more)
    return total, entries[:MAX_GROUPED]


async def failures(ctx: Context) -> dict[str, Any]:
    """Dead letters grouped by fingerprint, newest group first."""
    total, entries = await _all_dead_letters(ctx)
    return {"groups": group_failures(entries), "total": total, "grouped": len(entries)}


async def dead_letter(ctx: Context, entry_id: str) -> dict[str, Any]:
    """One dead letter (:class:`NotFound` if none)."""
    entry_id = _bounded_id(entry_id, "dead letter")
    try:
        entry = await asyncio.to_thread(
            dead_letter_service.get_dead_letter, client=ctx.client, entry_id=entry_id
        )
    except DeadLetterNotFoundError as exc:
        raise NotFound(f"no dead letter {entry_id!r}") from exc
    return entry.model_dump()


async def _group(ctx: Context, key: str) -> FailureGroup:
    _, entries = await _all_dead_letters(ctx)
    for group in group_failures(entries):
        if group.fingerprint == key:
            return group
    raise NotFound(f"no failure group {key!r} (already re-submitted?)")


async def resubmit_group(ctx: Context, key: str) -> str:
    """Re-submit every re-submittable entry of a group (same ids); what happened."""
    group = await _group(ctx, key)
    sent, skipped = 0, 0
    for entry in group.entries:
        if not (entry.get("resubmittable") and entry.get("task")):
            skipped += 1
            continue
        try:
            await asyncio.to_thread(ctx.client.resubmit_dead_letter, entry["id"])
            sent += 1
        except DeadLetterNotFoundError:  # taken by a concurrent re-submit
            skipped += 1
    return f"re-submitted {sent} task(s) of {group.task} / {group.error_type}" + (
        f"; {skipped} skipped" if skipped else ""
    )


async def resubmit_entry(ctx: Context, entry_id: str) -> str:
    """Re-submit one entry as it was (same id)."""
    entry_id = _bounded_id(entry_id, "dead letter")
    try:
        task_id = await asyncio.to_thread(ctx.client.resubmit_dead_letter, entry_id)
    except DeadLetterNotFoundError as exc:
        raise NotFound(f"no dead letter {entry_id!r} (already re-submitted?)") from exc
    return f"re-submitted {task_id}"


def _json_arg(raw: str, kind: type, field: str) -> Any:
    if len(raw.encode()) > MAX_EDIT_BYTES:
        raise InvalidInputError(f"{field} is larger than {MAX_EDIT_BYTES} bytes", field=field)
    text = raw.strip() or ("[]" if kind is list else "{}")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInputError(f"{field} is not valid JSON: {exc}", field=field) from exc
    if not isinstance(value, kind):
        shape = "a JSON list" if kind is list else "a JSON object"
        raise InvalidInputError(f"{field} must be {shape}; got {type(value).__name__}", field=field)
    return value


async def resubmit_edited(ctx: Context, entry_id: str, raw_args: str, raw_kwargs: str) -> str:
    """Send the entry's task with edited arguments as a new task whose parent is the old
    one (``parent_id`` and the ``resubmitted_from`` header), then drop the entry. The
    new id is derived from the entry, so a double submit sends it once."""
    args = _json_arg(raw_args, list, "args")
    kwargs = _json_arg(raw_kwargs, dict, "kwargs")
    entry = await dead_letter(ctx, entry_id)
    if not entry.get("task") or not entry.get("resubmittable"):
        raise InvalidInputError(f"dead letter {entry_id!r} holds no task that can be sent again")
    old_id = entry.get("task_id") or entry_id
    new_id = str(uuid.uuid5(_RESUBMIT_NS, f"{entry['id']}|{entry['recorded_at']}"))
    # TaskIdInUseError: sent by an earlier click whose entry removal did not happen; remove it now.
    with contextlib.suppress(TaskIdInUseError):
        await asyncio.to_thread(
            ctx.client.submit,
            entry["task"],
            args,
            kwargs,
            task_id=new_id,
            queue=entry.get("queue") or None,
            parent_id=old_id,
            root_id=old_id,
            headers={RESUBMITTED_FROM: old_id},
        )
    await asyncio.to_thread(ctx.client.delete_dead_letter, entry_id)
    return f"sent {entry['task']} again with edited arguments as {new_id} (from {old_id})"


# -- schedules -----------------------------------------------------------------------


async def schedules(ctx: Context) -> dict[str, Any]:
    """Every periodic entry: description, next five fires, last runs, flags."""
    entries = await asyncio.to_thread(ctx.client.list_periodic_tasks)
    now = datetime.now(UTC)
    tz = ZoneInfo(ctx.timezone)
    rows = []
    for entry in entries:
        schedule = entry["schedule"]
        next_run = _parse_time(entry.get("next_run_at"))
        upcoming = (
            schedule_times.next_fire_times(schedule, timezone=ctx.timezone, now=now, next_run_at=next_run)
            if entry["enabled"]
            else []
        )
        runs: list[dict[str, Any]] = []
        if ctx.history is not None:
            runs = [
                row
                for row in await ctx.history.runs(entry["task"], now - timedelta(days=1), 200)
                if row.get("args") == entry["args"] and (row.get("kwargs") or {}) == entry["kwargs"]
            ]
        sent = [t for t in (_parse_time(r.get("sent_at") or r.get("received_at")) for r in runs) if t]
        check = schedule_times.check_fires(
            schedule, sent, timezone=ctx.timezone, now=now, enabled=entry["enabled"], next_run_at=next_run
        )
        rows.append(
            {
                **entry,
                "upcoming": [t.astimezone(tz) for t in upcoming],
                "runs": runs[:5],
                "check": check,
            }
        )
    return {"entries": rows, "history": ctx.history is not None}


async def toggle_schedule(ctx: Context, name: str, enabled: bool) -> str:
    """Enable or disable an entry (the client checks the name)."""
    name = _bounded_id(name, "periodic entry")
    toggle = ctx.client.enable_periodic_task if enabled else ctx.client.disable_periodic_task
    try:
        await asyncio.to_thread(toggle, name)
    except PeriodicTaskNotFoundError as exc:
        raise NotFound(f"no periodic entry {name!r}") from exc
    return f"{'enabled' if enabled else 'disabled'} {name}"


# -- tasks ---------------------------------------------------------------------------

_FILTERS = ("task", "status", "queue", "worker", "q", "since", "until")


async def tasks(ctx: Context, query: dict[str, str]) -> dict[str, Any]:
    """A page of task history matching the query's filters."""
    filters = {key: query[key][:255] for key in _FILTERS if query.get(key)}
    if ctx.history is None:
        return {"items": [], "next_cursor": None, "filters": filters, "history": False}
    limit = bounded_int(query.get("limit"), 50, 1, 500)
    page = await ctx.history.page(filters, limit, (query.get("cursor") or "")[:1000] or None)
    return {**page, "filters": filters, "history": True, "limit": limit}


async def task(ctx: Context, task_id: str) -> dict[str, Any]:
    """One task from history."""
    task_id = _bounded_id(task_id, "task")
    row = await ctx.history.get(task_id) if ctx.history is not None else None
    if row is None:
        raise NotFound(f"no task {task_id!r} in the history")
    return {"row": row}


async def revoke(ctx: Context, task_id: str, *, terminate: bool) -> str:
    """Revoke a task (durably)."""
    task_id = _bounded_id(task_id, "task")
    await asyncio.to_thread(ctx.client.revoke, task_id, terminate)
    return f"revoked {task_id}" + (" (terminating it if it runs)" if terminate else "")


async def resubmit_task(ctx: Context, task_id: str) -> str:
    """Send a task from history again under a new id, linked to it."""
    task_id = _bounded_id(task_id, "task")
    row = await ctx.history.get(task_id) if ctx.history is not None else None
    if row is None:
        raise NotFound(f"no task {task_id!r} in the history")
    if row.get("args_truncated") or row.get("kwargs_truncated"):
        raise InvalidInputError("its stored arguments were truncated; it cannot be sent again as it was")
    new_id = await asyncio.to_thread(
        lambda: (
            ctx.client.submit(
                row["task"],
                row.get("args") or [],
                row.get("kwargs") or {},
                queue=row.get("queue") or None,
                parent_id=task_id,
                root_id=row.get("root_id") or task_id,
                headers={RESUBMITTED_FROM: task_id},
            ).id
        )
    )
    return f"sent {row['task']} again as {new_id} (from {task_id})"
