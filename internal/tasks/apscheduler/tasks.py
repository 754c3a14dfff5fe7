"""Scheduled ("cron") tasks. Their names start with ``internal.aps_tasks.`` so the route
sends them to ``cron_queue``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from internal.config.setting import setting
from internal.infra.celery import celery_client
from internal.infra.database import get_engine, session_scope
from internal.infra.redis import get_redis
from internal.models import QueueLengthSample
from internal.tasks.base import AppTask

__all__ = ["LATEST_QUEUE_LENGTHS_KEY", "purge_task_history", "record_queue_lengths"]

#: Redis hash holding the most recent sample (queue → length) for dashboards.
LATEST_QUEUE_LENGTHS_KEY = "tasksys:queue_lengths:latest"


@celery_client.app.task(name="internal.aps_tasks.record_queue_lengths", base=AppTask, public=True)
async def record_queue_lengths() -> dict[str, int]:
    """Sample every known queue's length into the database and the latest into Redis."""
    lengths = await asyncio.to_thread(celery_client.queue_lengths)
    sampled_at = datetime.now(UTC)
    async with session_scope() as session:
        session.add_all(
            QueueLengthSample(queue=name, length=length, sampled_at=sampled_at)
            for name, length in lengths.items()
        )
    redis = get_redis()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(LATEST_QUEUE_LENGTHS_KEY)
        mapping: dict[str, str | int] = {**lengths, "sampled_at": sampled_at.isoformat()}
        pipe.hset(LATEST_QUEUE_LENGTHS_KEY, mapping=mapping)  # type: ignore[arg-type]
        await pipe.execute()
    return lengths


@celery_client.app.task(name="internal.aps_tasks.purge_task_history", base=AppTask, public=True)
async def purge_task_history() -> int:
    """Delete task history older than ``HISTORY_RETENTION_DAYS`` (up to 10,000 rows per
    call, with their transitions); how many rows went."""
    from internal.services.history_recorder import delete_older_than

    return await delete_older_than(get_engine(), setting.history.retention_days)
