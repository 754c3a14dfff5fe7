"""RedBeat scheduler and entry with the fixes a dynamic schedule needs.

- Disabled entries score -1 in the schedule index, so beat never loads them.
- Interval entries advance from their due time, not from the moment they were sent,
  and beat wakes for the next due time, so a 1 s entry does not drift by the send
  latency on every run.
- ``once`` entries are disabled after their single run.
- Static entries keep their ``enabled`` flag and run history across beat restarts
  (RedBeat would otherwise re-enable a static entry an operator disabled).
- Static entries come back by themselves when Redis loses them (a restart without
  persistence, a flush): every ``tasksys_beat_reseed_interval`` seconds (default 5) one
  EXISTS call checks their keys, and if any is gone the startup seeding runs again,
  with a loud log line, since the dynamic entries are gone too.
- Redis out of memory: a tick sends nothing and is retried a second later.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any, cast

import redis
from celery.schedules import schedstate
from celery.schedules import schedule as interval_schedule
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat.decoder import RedBeatJSONEncoder
from redbeat.schedulers import ensure_conf, get_redis
from redis.exceptions import LockError

from ._compat import schedule_entry
from ._options import options_of
from ._redis import clients_for
from ._schedules import is_once

__all__ = ["RedisScheduler", "ScheduleEntry"]

logger = logging.getLogger(__name__)


class ScheduleEntry(RedBeatSchedulerEntry):  # type: ignore[misc]
    """A RedBeat entry: disabled ones are out of the due index; intervals do not drift."""

    @classmethod
    def from_key(cls, key: str, app: Any = None) -> ScheduleEntry:
        """RedBeat's loader, where a key that holds no readable entry reads as missing
        (``KeyError``), so beat drops it from the index and goes on: a key of another
        type (earlier versions let the name ``:lock`` put ``redbeat::lock`` there,
        which crashed every beat with WRONGTYPE) or a definition that does not decode."""
        try:
            return cast(ScheduleEntry, super().from_key(key, app=app))
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            logger.error("beat: %s in the schedule index is not an entry (%s); dropping it", key, exc)
            raise KeyError(key) from exc
        except (ValueError, TypeError) as exc:
            logger.error("beat: entry %s cannot be decoded (%s); dropping it from the index", key, exc)
            raise KeyError(key) from exc

    @property
    def due_at(self) -> datetime | None:
        """When the entry is next due, to the millisecond. Not RedBeat's: Celery's
        ``remaining_estimate`` counts from now, so the due time is now + remaining
        (RedBeat adds it to ``last_run_at``, which puts a late entry in the future)."""
        now = self.default_now()
        if self.last_run_at is None:
            return now  # type: ignore[no-any-return]
        remaining = self.schedule.remaining_estimate(self.last_run_at)
        if remaining is None:
            return None
        return _round_to_ms(now + max(remaining, timedelta(0)))

    def save(self, pipe: Any = None) -> ScheduleEntry:
        """Store the entry (definition, first run history, due index): RedBeat's own
        ``save`` (one transaction), or into the caller's ``pipe`` for bulk writes.

        RedBeat's ``save`` opens and executes a pipeline of its own, so the ``pipe``
        branch writes the same three commands itself (``test_compat_beat`` checks they
        stay the same as RedBeat's)."""
        if pipe is None:
            super().save()
            return self
        definition = {
            "name": self.name,
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "options": self.options,
            "schedule": self.schedule,
            "enabled": self.enabled,
        }
        pipe.hset(self.key, "definition", json.dumps(definition, cls=RedBeatJSONEncoder))
        pipe.hsetnx(self.key, "meta", json.dumps({"last_run_at": self.last_run_at}, cls=RedBeatJSONEncoder))
        pipe.zadd(self.app.redbeat_conf.schedule_key, {self.key: self.score})
        return self

    @property
    def score(self) -> float:
        if not self.enabled:
            return -1
        return float(super().score)

    def next(
        self, last_run_at: datetime | None = None, only_update_last_run_at: bool = False
    ) -> ScheduleEntry:
        """RedBeat's next entry (run history stored), run from the due time of an
        interval entry that is on schedule rather than from now, so it does not drift."""
        if last_run_at is None:
            last_run_at = self._due_time_if_on_schedule()
        return super().next(  # type: ignore[no-any-return]
            last_run_at=last_run_at, only_update_last_run_at=only_update_last_run_at
        )

    __next__ = next

    def is_due(self) -> Any:
        """Celery answers "due, next check in one full interval" from *now*, so every
        run would start a little later than the last; wait until the next due time."""
        state = super().is_due()
        if state.is_due:
            due = self._due_time_if_on_schedule()
            if due is not None:
                remaining = due + self.schedule.run_every - self.default_now()
                return schedstate(True, max(remaining.total_seconds(), 0.0))
        return state

    def _due_time_if_on_schedule(self) -> datetime | None:
        """For an interval entry that is less than one period late, the time it was due."""
        sched, last = self.schedule, self.last_run_at
        if type(sched) is not interval_schedule or last is None or last.tzinfo is None:
            return None
        due = last + sched.run_every
        lateness = self.default_now() - due
        if timedelta(0) <= lateness < sched.run_every:
            return due  # type: ignore[no-any-return]
        return None


def _round_to_ms(moment: datetime) -> datetime:
    """Drop the microseconds that two clock reads (now, remaining) put between them."""
    micros = moment.microsecond
    return moment + timedelta(microseconds=round(micros / 1000) * 1000 - micros)


class RedisScheduler(RedBeatScheduler):  # type: ignore[misc]
    """The beat scheduler the client configures (``beat_scheduler``)."""

    Entry = ScheduleEntry

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        """Make this process's schedule-store calls retry through a Redis restart for
        ``tasksys_beat_redis_retry_period`` seconds (other processes fail fast)."""
        conf = ensure_conf(app)
        options = dict(conf.redbeat_redis_options)
        if "retry_period" not in options:
            options["retry_period"] = options_of(app).beat_redis_retry_period
            options.pop("retry", None)
            conf.redbeat_redis_options = options
            clients_for(app).retry_state_calls(options["retry_period"])
        super().__init__(app, *args, **kwargs)

    def update_from_dict(self, dict_: dict[str, Any]) -> None:
        """RedBeat's store of the static entries, given entries that also keep the stored
        ``enabled`` flag and run count (RedBeat keeps only ``last_run_at``, so it would
        re-enable an entry an operator disabled). An invalid entry is logged and left
        out; RedBeat's would stop beat when an entry of that name is already stored."""
        entries = {}
        for name, definition in dict_.items():
            try:
                entry = schedule_entry(self, name, definition)
            except Exception:
                logger.exception("beat: static entry %r is invalid and was not stored", name)
                continue
            try:
                stored = self.Entry.from_key(self.Entry.generate_key(self.app, name), app=self.app)
            except KeyError:
                pass
            else:
                entry.total_run_count = stored.total_run_count
                entry.enabled = stored.enabled
            entries[name] = entry
        super().update_from_dict(entries)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """RedBeat's tick, surviving Redis outages: while Redis is unreachable nothing is
        sent and the tick is retried every second; a lock that expired meanwhile (and
        may now be held by a standby) is waited for again, as a standby does."""
        try:
            result = float(super().tick(*args, **kwargs))
            self._reseed_if_lost()
            return result
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("beat: Redis unreachable (%s); retrying in 1 s", exc)
            return 1.0
        except redis.exceptions.OutOfMemoryError as exc:
            logger.warning("beat: Redis is out of memory (%s); nothing sent, retrying in 1 s", exc)
            return 1.0
        except LockError as exc:
            logger.warning("beat: lost the schedule lock (%s); waiting to hold it again", exc)
            self.lock.acquire()
            logger.info("beat: Acquired lock")
            return 0.0

    _next_seed_check = 0.0

    def _reseed_if_lost(self) -> None:
        """Store the static entries again if any of their keys is gone (checked every
        ``tasksys_beat_reseed_interval`` seconds, one EXISTS call)."""
        now = time.monotonic()
        if now < self._next_seed_check:
            return
        self._next_seed_check = now + options_of(self.app).beat_reseed_interval
        statics = dict(self.app.redbeat_conf.schedule or {})
        if not statics:
            return
        client = get_redis(self.app)
        keys = [self.Entry.generate_key(self.app, name) for name in statics]
        present = int(client.exists(*keys))
        if present == len(keys):
            return
        remaining = int(client.zcard(self.app.redbeat_conf.schedule_key))
        if present == 0:
            logger.critical(
                "beat: the schedule in Redis is gone (Redis restarted without persistence or was "
                "flushed?): re-seeding %d static entries; dynamic entries were lost and must be "
                "created again (%d entries left in the schedule index)",
                len(keys),
                remaining,
            )
        else:
            logger.warning(
                "beat: %d of %d static entries vanished from Redis; re-seeding them",
                len(keys) - present,
                len(keys),
            )
        self.setup_schedule()
        logger.warning("beat: static entries re-seeded: %s", ", ".join(sorted(statics)))

    def close(self) -> None:
        """Release the lock if Redis answers; otherwise it expires by itself."""
        try:
            super().close()
        except (redis.ConnectionError, redis.TimeoutError, LockError) as exc:
            logger.warning("beat: could not release the schedule lock (%s); it expires by itself", exc)

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        """Send the entry's task; a ``once`` entry is disabled after its run."""
        try:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        finally:
            if advance and is_once(entry.schedule):
                entry.enabled = False
                entry.save()
                logger.info("beat: one-time entry %s ran and is now disabled", entry.name)
