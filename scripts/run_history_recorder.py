"""Task history recorder: read the workers' ``tasksys:history`` stream as a consumer
group and write each record to the application database (``task_history`` and
``task_transitions``), acknowledging entries only after the database commit.

Redis or the database down: it logs, waits and retries; entries stay in the stream (or
pending in the group) until written, and replays are no-ops. Pending entries of a dead
consumer are claimed after 60 s idle. SIGTERM or Ctrl-C: the current batch finishes,
exit 0. Usage: ``python scripts/run_history_recorder.py [--consumer NAME]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

GROUP = "history-recorder"
BATCH = 500
BLOCK_MS = 1000
CLAIM_IDLE_MS = 60_000
CLAIM_EVERY = 30.0
RETRY_DELAY = 1.0

logger = logging.getLogger("history_recorder")


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def run(consumer: str, stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set (the batch in hand is still written)."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError, ResponseError

    from internal.config.setting import setting
    from internal.infra.database import open_engine
    from internal.services.history_recorder import apply_records, parse_entry

    key = "tasksys:history"
    client = aioredis.Redis.from_url(setting.redis_url, socket_connect_timeout=2, socket_timeout=5)
    engine = await open_engine(setting.database_url, verify=False)
    loop = asyncio.get_running_loop()
    next_claim = 0.0
    group_ready = False
    db_failing = redis_failing = False
    logger.info("history recorder %s reading %s as group %s", consumer, key, GROUP)
    try:
        while not stop.is_set():
            try:
                if not group_ready:
                    try:
                        await client.xgroup_create(key, GROUP, id="0", mkstream=True)
                    except ResponseError as exc:
                        if "BUSYGROUP" not in str(exc):
                            raise
                    group_ready = True
                entries: list[tuple[Any, Any]] = []
                if loop.time() >= next_claim:
                    next_claim = loop.time() + CLAIM_EVERY
                    claimed = await client.xautoclaim(key, GROUP, consumer, CLAIM_IDLE_MS, "0-0", count=BATCH)
                    entries = list(claimed[1])
                    # Our own pending entries (from a crash before XACK) come first.
                    mine = await client.xreadgroup(GROUP, consumer, {key: "0"}, count=BATCH)
                    for _stream, items in _streams(mine):
                        entries.extend(items)
                if not entries:
                    reply = await client.xreadgroup(GROUP, consumer, {key: ">"}, count=BATCH, block=BLOCK_MS)
                    for _stream, items in _streams(reply):
                        entries.extend(items)
                if redis_failing:
                    redis_failing = False
                    logger.info("history recorder: Redis answers again")
            except (RedisError, OSError) as exc:
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    group_ready = False
                if not redis_failing:
                    redis_failing = True
                    logger.warning("history recorder: Redis unavailable (%r); retrying", exc)
                await _sleep(stop, RETRY_DELAY)
                continue
            if not entries:
                continue
            ids = [_decode(entry_id) for entry_id, _ in entries]
            parsed = (parse_entry(_decode(entry_id), fields or {}) for entry_id, fields in entries)
            records = [r for r in parsed if r is not None]
            while True:
                try:
                    applied = await apply_records(engine, records)
                    break
                except Exception as exc:  # the database is down or refused: keep the batch
                    if not db_failing:
                        db_failing = True
                        logger.warning("history recorder: database write failed (%r); retrying", exc)
                    await asyncio.sleep(RETRY_DELAY)
            if db_failing:
                db_failing = False
                logger.info("history recorder: database answers again")
            while True:
                try:
                    await client.xack(key, GROUP, *ids)
                    break
                except (RedisError, OSError):
                    await asyncio.sleep(RETRY_DELAY)  # replaying them later is a no-op anyway
                    if stop.is_set():
                        break
            logger.debug("history recorder: %d entries, %d new", len(ids), applied)
    finally:
        await client.aclose()
        await engine.dispose()
        logger.info("history recorder stopped")


def _streams(reply: Any) -> list[tuple[Any, list[tuple[Any, Any]]]]:
    """XREADGROUP's reply as (stream, entries) pairs (RESP2 list or RESP3 dict)."""
    if isinstance(reply, dict):
        return [(k, list(v)) for k, v in reply.items()]
    return [(k, list(v)) for k, v in reply or []]


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _main(consumer: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await run(consumer, stop)


def main(argv: list[str] | None = None) -> int:
    """Run the recorder until SIGTERM/SIGINT; 0 on a clean stop."""
    parser = argparse.ArgumentParser(description="Write task history from the Redis stream to the database.")
    parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args.consumer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
