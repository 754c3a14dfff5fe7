"""``/api/v1/history`` and ``/api/v1/stats/*``: durable task history and statistics."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from internal.api.deps import EngineDep
from internal.api.routes._common import ERRORS, IdPath
from internal.schemas import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    HistoryDetail,
    HistoryPage,
    QueueStatsOut,
    TaskStatsOut,
    ThroughputOut,
)
from internal.services import history as service

router = APIRouter(tags=["history"])

Name = Annotated[str | None, Query(min_length=1, max_length=255)]
Status = Annotated[
    str | None, Query(pattern="^(PENDING|SENT|RECEIVED|STARTED|RETRY|SUCCESS|FAILURE|REVOKED)$")
]


@router.get("/history", response_model=HistoryPage, responses=ERRORS)
async def list_history(
    engine: EngineDep,
    task: Name = None,
    status: Status = None,
    queue: Name = None,
    worker: Name = None,
    since: datetime | None = None,
    until: datetime | None = None,
    q: Name = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(min_length=1, max_length=1024)] = None,
) -> HistoryPage:
    """Tasks newest first, filtered; ``q`` matches a task id or part of a task name."""
    return await service.list_history(
        engine=engine, task=task, status=status, queue=queue, worker=worker,
        since=since, until=until, q=q, limit=limit, cursor=cursor,
    )  # fmt: skip


@router.get("/history/{task_id}", response_model=HistoryDetail, responses=ERRORS)
async def get_history(task_id: IdPath, engine: EngineDep) -> HistoryDetail:
    """One task's row, its transitions and its children."""
    return await service.get_task_history(engine=engine, task_id=task_id)


@router.get("/stats/tasks", response_model=TaskStatsOut, responses=ERRORS)
async def stats_tasks(
    engine: EngineDep, since: datetime | None = None, until: datetime | None = None
) -> TaskStatsOut:
    """Per task name counts, failure rate and runtime percentiles (default: the last day)."""
    return await service.task_stats(engine=engine, since=since, until=until)


@router.get("/stats/throughput", response_model=ThroughputOut, responses=ERRORS)
async def stats_throughput(
    engine: EngineDep,
    since: datetime | None = None,
    until: datetime | None = None,
    bucket: Annotated[int, Query(ge=1, le=86400)] = 60,
) -> ThroughputOut:
    """Finished tasks per ``bucket`` seconds by final status (default: the last hour)."""
    return await service.throughput(engine=engine, since=since, until=until, bucket=bucket)


@router.get("/stats/queues", response_model=QueueStatsOut, responses=ERRORS)
async def stats_queues(
    engine: EngineDep, since: datetime | None = None, until: datetime | None = None
) -> QueueStatsOut:
    """Queue lengths over time from the recorded samples (default: the last hour)."""
    return await service.queue_stats(engine=engine, since=since, until=until)
