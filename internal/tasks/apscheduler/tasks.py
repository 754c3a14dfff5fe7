"""Scheduled ("cron") tasks. Their names start with ``internal.aps_tasks.`` so the route
sends them to ``cron_queue``."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from internal.config.setting import setting
from internal.infra.celery import celery_client
from internal.infra.database import get_engine, session_scope
from internal.infra.redis import get_redis
from internal.models import QueueLengthSample
from internal.tasks.base import AppTask
from pkg.celery_task import BrokerUnavailableError

__all__ = ["LATEST_QUEUE_LENGTHS_KEY", "purge_task_history", "record_queue_lengths", "relay_task_outbox"]

logger = logging.getLogger(__name__)

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


@celery_client.app.task(name="internal.aps_tasks.relay_task_outbox", base=AppTask, ignore_result=True)
async def relay_task_outbox() -> dict[str, int]:
    """Publish outbox rows whose after-commit publish did not happen and trim the sent
    ones (beat runs it every 2 s); an outage is logged and the next run tries again."""
    try:
        return await celery_client.relay_outbox_async(get_engine())
    except (BrokerUnavailableError, SQLAlchemyError, OSError) as exc:
        logger.warning("outbox relay: pass failed, the next one retries: %s", exc)
        return {}
