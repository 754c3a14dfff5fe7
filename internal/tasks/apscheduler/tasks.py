"""Scheduled ("cron") tasks. Their names start with ``internal.aps_tasks.`` so the route
sends them to ``cron_queue``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from internal.infra.celery import celery_client
from internal.infra.database import session_scope
from internal.infra.redis import get_redis
from internal.models import QueueLengthSample
from internal.tasks.base import AppTask

__all__ = ["LATEST_QUEUE_LENGTHS_KEY", "record_queue_lengths"]

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
