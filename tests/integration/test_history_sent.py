"""The producer's ``sent`` history record: every way a client publishes a task appends
exactly one, in the same transaction or script as the message where the stream and
the queues share a Redis; nothing when history is off or nothing was sent."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from internal.config.setting import HistorySettings, RedisSettings, load_settings
from internal.infra.celery import build_celery_client
from pkg.celery_task import CeleryClient, TaskIdInUseError, TaskRequest
from tests.support.services import RedisDb

pytestmark = pytest.mark.integration

STREAM = "tasksys:history"


def _client(db: RedisDb, *, history: bool) -> CeleryClient:
    settings = load_settings(env_file=None)
    settings.redis = RedisSettings(db=db.number)
    settings.history = HistorySettings(enabled=history)
    client = build_celery_client(settings)
    client.load_tasks()
    return client


def _sent(db: RedisDb) -> list[dict[str, Any]]:
    records = [json.loads(fields[b"r"]) for _, fields in db.client.xrange(STREAM)]
    return [r for r in records if r["type"] == "sent"]


def test_every_publish_path_records_one_sent(redis_db: RedisDb, unique: str) -> None:
    client = _client(redis_db, history=True)
    try:
        ids = [client.submit("math.number_sum", [1, 2]).id]
        ids.append(client.submit("math.number_sum", [1, 2], task_id=f"own-{unique}").id)
        ids += client.submit_many([TaskRequest("math.number_sum", [n, 1]) for n in range(3)])
        ids.append(client.submit("math.number_sum", [1, 2], dedupe_key=f"d-{unique}").id)
        assert client.submit("math.number_sum", [1, 2], dedupe_key=f"d-{unique}").deduplicated
        link = client.signature("math.number_sum", (1,))
        ids += client.submit_many([TaskRequest("math.number_sum", (1, 2), options={"link": link})])

        async def send_async() -> list[str]:
            try:
                return [
                    await client.submit_async("math.number_sum", [3, 4]),
                    await client.submit_async("math.number_sum", [3, 4], dedupe_key=f"a-{unique}"),
                ]
            finally:
                await client.aclose()

        ids += asyncio.run(send_async())
        with pytest.raises(TaskIdInUseError):
            client.submit("math.number_sum", [1, 2], task_id=f"own-{unique}")
        records = _sent(redis_db)
        assert sorted(r["task_id"] for r in records) == sorted(ids), (
            "one each, none for refused or deduplicated"
        )
        assert {r["task"] for r in records} == {"math.number_sum"}
        assert all(isinstance(r["at"], float) for r in records)
    finally:
        client.close()


def test_nothing_is_recorded_with_history_off(redis_db: RedisDb) -> None:
    client = _client(redis_db, history=False)
    try:
        client.submit("math.number_sum", [1, 2])
        client.submit_many([TaskRequest("math.number_sum", [1, 2])])
        assert not redis_db.client.exists(STREAM)
    finally:
        client.close()
