"""Celery wiring: task modules, routes, the static beat schedule, worker hooks, and the
``celery_client`` / ``celery_app`` objects (``celery -A internal.infra.celery.celery_app``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from celery.schedules import crontab

from internal.config.setting import Settings, setting
from internal.infra.database import close_db, init_db
from internal.infra.redis import close_redis, init_redis
from pkg.celery_task import STOCK_PRIORITY_STEPS, THROUGHPUT_PROFILE, BrokerUnavailableError, CeleryClient

__all__ = [
    "CELERY_INCLUDE_MODULES",
    "CELERY_TASK_ROUTES",
    "STATIC_BEAT_SCHEDULE",
    "build_celery_client",
    "celery_app",
    "check_celery",
    "celery_client",
    "init_celery",
]

logger = logging.getLogger(__name__)

#: Task modules the worker imports; a missing one is skipped with a warning.
#: ``CELERY_EXTRA_INCLUDE`` adds more without editing code.
CELERY_INCLUDE_MODULES: list[str] = [
    "internal.tasks.celery.tasks",
    "internal.tasks.apscheduler.tasks",
]

#: Scheduled tasks go to ``cron_queue``; video transcoding to ``video_queue`` at the
#: highest priority (the seed's 10 is clamped to 9, the top of the 0-9 scale).
CELERY_TASK_ROUTES: dict[str, dict[str, Any]] = {
    # The outbox relay runs on the default queue (no queue named), at priority 9 ahead of
    # other work there (an exact name wins over the pattern below).
    "internal.aps_tasks.relay_task_outbox": {"priority": 9},
    "internal.aps_tasks.*": {"queue": "cron_queue"},
    "internal.business.video.transcode": {"queue": "video_queue", "priority": 10},
}

#: Loaded into the Redis schedule when beat starts, listed with the dynamic entries.
STATIC_BEAT_SCHEDULE: dict[str, dict[str, Any]] = {
    "task_sum_every_15_min": {
        "task": "math.number_sum",
        "schedule": crontab(minute="*/15"),
        "args": (10, 20),
    },
    "task_daily_report_morning": {
        "task": "math.number_sum",
        "schedule": crontab(minute="30", hour="8"),
        "kwargs": {"x": 100, "y": 200},
    },
    # Task history retention (HISTORY_RETENTION_DAYS), every 10 minutes.
    "task_history_retention": {
        "task": "internal.aps_tasks.purge_task_history",
        "schedule": 600.0,
    },
    # Submit on commit: publish outbox rows a crash or a broker outage left behind.
    "task_outbox_relay": {
        "task": "internal.aps_tasks.relay_task_outbox",
        "schedule": 2.0,
        "options": {"expires": 10},
    },
    "task_heartbeat_30s": {
        "task": "math.number_sum",
        "schedule": 30.0,
        "args": (1, 1),
    },
}


async def _worker_startup() -> None:
    """Open the database and Redis clients of this worker process, concurrently."""
    await asyncio.gather(init_db(), init_redis())


async def _worker_shutdown() -> None:
    """Close the database and Redis clients; one failing does not stop the other."""
    results = await asyncio.gather(close_db(), close_redis(), return_exceptions=True)
    for name, result in zip(("database", "redis"), results, strict=True):
        if isinstance(result, BaseException):
            logger.error("closing %s failed: %r", name, result)


def build_celery_client(settings: Settings) -> CeleryClient:
    """The project's client for ``settings``: modules, routes, static schedule, limits."""
    client = CeleryClient(
        app_name=settings.app.app_name,
        broker_url=settings.broker_url,
        backend_url=settings.result_backend,
        include=[*CELERY_INCLUDE_MODULES, *settings.celery.extra_include_list],
        task_routes=CELERY_TASK_ROUTES,
        task_default_queue=settings.celery.default_queue,
        timezone=settings.app.timezone,
        beat_schedule=STATIC_BEAT_SCHEDULE,
        task_soft_time_limit=settings.celery.task_soft_time_limit,
        task_time_limit=settings.celery.task_time_limit,
        result_expires=settings.celery.result_expires,
        tasksys_revoke_expires=settings.celery.revoke_expires,
        tasksys_asyncio_lag_target=settings.celery.asyncio_lag_target,
        broker_transport_options={
            "visibility_timeout": settings.celery.visibility_timeout,
            **(
                {"priority_filing_steps": STOCK_PRIORITY_STEPS}
                if settings.celery.priority_compat == "stock"
                else {}
            ),
        },
        tasksys_known_queues=settings.celery.known_queue_list,
        tasksys_history=settings.history.enabled,
        tasksys_history_max_value_bytes=settings.history.max_value_bytes,
        tasksys_history_mask_keys=settings.history.mask_key_list,
        worker_soft_shutdown_timeout=settings.celery.soft_shutdown_timeout,
        **(THROUGHPUT_PROFILE if settings.celery.profile == "throughput" else {}),
    )
    client.register_worker_hooks(on_startup=_worker_startup, on_shutdown=_worker_shutdown)
    return client


celery_client = build_celery_client(setting)
celery_app = celery_client.app


def check_celery(client: CeleryClient, settings: Settings, timeout: float = 2.0) -> dict[str, Any]:
    """Check that ``client``'s broker and result backend answer; raise a clear error
    naming ``settings``' broker if not. Blocks up to about ``timeout`` per part: call it
    from a thread in ``async`` code."""
    report = client.ping(timeout=timeout, workers=False)
    problems = [
        f"{part} ({report[part]['error']})" for part in ("broker", "backend") if not report[part]["ok"]
    ]
    if problems:
        raise BrokerUnavailableError(
            f"Celery cannot reach its {' and '.join(problems)}; broker {settings.safe_broker_url}. "
            "Start Redis or set REDIS_HOST/REDIS_PORT (or CELERY_BROKER_URL/CELERY_RESULT_BACKEND)"
        )
    logger.info(
        "celery: broker %s answered in %s ms, result backend in %s ms",
        settings.safe_broker_url,
        report["broker"]["latency_ms"],
        report["backend"]["latency_ms"],
    )
    return report


def init_celery(timeout: float = 2.0) -> dict[str, Any]:
    """:func:`check_celery` for this module's ``celery_client`` and settings."""
    return check_celery(celery_client, setting, timeout)
