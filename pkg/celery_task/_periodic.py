"""The dynamic schedule: periodic entries in Redis (RedBeat's layout), validated like a
submit, written in pipelined batches, listed a page at a time. Static entries (from the
client's ``beat_schedule``) can only be enabled or disabled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from celery import Celery
from redbeat.schedulers import ensure_conf

from ._beat import ScheduleEntry
from ._errors import (
    InvalidArgumentsError,
    InvalidRequestError,
    PeriodicTaskConflictError,
    PeriodicTaskNotFoundError,
    unreachable,
)
from ._limits import check_entry_name
from ._redis import RedisClients
from ._schedules import describe_schedule, parse_schedule
from ._validation import Validator, check_page, check_priority, kombu_json_dumps

__all__ = ["PeriodicStore"]

logger = logging.getLogger(__name__)


class PeriodicStore:
    """Periodic entries of one app, in its state Redis."""

    def __init__(
        self,
        app: Celery,
        validator: Validator,
        redis_clients: RedisClients,
        *,
        timezone: str,
        beat_schedule: Mapping[str, Any],
    ) -> None:
        self.app = app
        self.validator = validator
        self.redis = redis_clients
        self.timezone = timezone
        self.beat_schedule = beat_schedule
        self.url = str(app.conf.broker_url)

    def key(self, name: str) -> str:
        """The Redis key of a user entry; a name that could address the scheduler's own
        keys (``redbeat::lock``, ``::schedule``, ``::statics``) never gets this far."""
        return cast(str, ScheduleEntry.generate_key(self.app, check_entry_name(name)))

    def _static_names(self) -> set[str]:
        stored = self.redis.state().smembers(ensure_conf(self.app).statics_key)
        return set(cast(Iterable[str], stored)) | set(self.beat_schedule)

    def add_many(self, entries: Iterable[Mapping[str, Any]], *, replace: bool = True) -> list[str]:
        """Create or replace entries (each a mapping of :meth:`build`'s arguments), all
        validated first, then written in pipelined batches; their names."""
        built = [self.build(**spec) for spec in entries]
        names = [str(entry.name) for entry in built]
        if len(set(names)) != len(names):
            raise InvalidRequestError("entry names must be unique within one call", field="name")
        self.store(built, replace=replace)
        return names

    def build(
        self,
        task_name: str,
        schedule_type: str,
        schedule_value: Any,
        *,
        name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
        options: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> ScheduleEntry:
        """Validate one entry's arguments; nothing is written."""
        if not self.validator.registry_loaded:
            self.validator.load_tasks()  # a typo in a task name is refused before it is stored
        self.validator.check_task_name(task_name)
        sched = parse_schedule(schedule_type, schedule_value, tz=self.app.timezone, now=self.app.now())
        args_list = list(args or ())
        kwargs_dict = dict(kwargs or {})
        self.validator.check_arguments(task_name, args_list, kwargs_dict)
        opts = dict(options or {})
        check_priority(opts.get("priority"))
        if queue is not None:
            opts["queue"] = self.validator.check_queue(queue)
        elif opts.get("queue") is not None:
            self.validator.check_queue(opts["queue"], field="options.queue")
        try:
            kombu_json_dumps(opts)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentsError(f"options cannot be stored as JSON: {exc}", field="options") from exc
        if name is None:
            name = f"{task_name}:{schedule_type}:{describe_schedule(sched, timezone=self.timezone).value}"
        check_entry_name(name)
        if not isinstance(enabled, bool):
            raise InvalidRequestError(f"enabled must be true or false; got {enabled!r}", field="enabled")
        return ScheduleEntry(
            name=name,
            task=task_name,
            schedule=sched,
            args=args_list,
            kwargs=kwargs_dict,
            options=opts,
            enabled=enabled,
            app=self.app,
        )

    def store(self, entries: Sequence[ScheduleEntry], *, replace: bool, chunk_size: int = 1000) -> None:
        with unreachable("could not store periodic tasks", self.url):
            statics = self._static_names()
            client = self.redis.state()
            for entry in entries:
                if entry.name in statics:
                    raise PeriodicTaskConflictError(
                        entry.name, "it is a static entry; it can only be enabled or disabled"
                    )
            if not replace:
                with client.pipeline(transaction=False) as pipe:
                    for entry in entries:
                        pipe.exists(entry.key)
                    exists = pipe.execute()
                taken = [entry.name for entry, found in zip(entries, exists, strict=True) if found]
                if taken:
                    raise PeriodicTaskConflictError(
                        taken[0], "an entry of that name exists; update it instead"
                    )
            for start in range(0, len(entries), chunk_size):
                with client.pipeline(transaction=False) as pipe:
                    for entry in entries[start : start + chunk_size]:
                        entry.save(pipe)
                    pipe.execute()

    def remove(self, name: str) -> bool:
        """Delete an entry; ``False`` if there was none. It never fires again."""
        with unreachable("could not remove periodic task", self.url):
            if name in self._static_names():
                raise PeriodicTaskConflictError(name, "it is a static entry; disable it instead")
            client = self.redis.state()
            key = self.key(name)
            with client.pipeline() as pipe:
                pipe.zrem(ensure_conf(self.app).schedule_key, key)
                pipe.delete(key)
                removed, deleted = pipe.execute()
        return bool(removed or deleted)

    def load(self, name: str) -> ScheduleEntry:
        try:
            return ScheduleEntry.from_key(self.key(name), app=self.app)
        except KeyError:
            raise PeriodicTaskNotFoundError(name) from None

    def _set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        with unreachable("could not update periodic task", self.url):
            entry = self.load(name)
            entry.enabled = enabled
            entry.save()
            statics = self._static_names()
        return self.describe(entry, statics)

    def enable(self, name: str) -> dict[str, Any]:
        """Turn an entry back on; it resumes on its schedule."""
        return self._set_enabled(name, True)

    def disable(self, name: str) -> dict[str, Any]:
        """Turn an entry off without deleting it; beat stops sending it."""
        return self._set_enabled(name, False)

    def get(self, name: str) -> dict[str, Any]:
        """One entry (see :meth:`list_periodic_tasks`), or :class:`PeriodicTaskNotFoundError`."""
        with unreachable("could not read periodic task", self.url):
            entry = self.load(name)
            statics = self._static_names()
        return self.describe(entry, statics)

    def list_all(self) -> list[dict[str, Any]]:
        """Every entry, static and dynamic, sorted by name: name, task, schedule (type,
        value, description), args, kwargs, queue, options, enabled, last_run_at,
        next_run_at, total_run_count, static. See :meth:`periodic_tasks_page` for pages."""
        return self._page(None, 0)[1]

    def page(self, limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """One page of :meth:`list_periodic_tasks` (sorted by name) and the total count;
        only the page's entries are read and decoded."""
        check_page(limit, offset)
        return self._page(limit, offset)

    def _page(self, limit: int | None, offset: int) -> tuple[int, list[dict[str, Any]]]:
        conf = ensure_conf(self.app)
        prefix = str(conf.key_prefix)
        with unreachable("could not list periodic tasks", self.url):
            client = self.redis.state()
            keys = cast(list[str], client.zrange(conf.schedule_key, 0, -1))
            # Only user and static entries: never the scheduler's own ``prefix:`` keys.
            own = prefix + ":"
            names = sorted(k[len(prefix) :] for k in keys if k.startswith(prefix) and not k.startswith(own))
            page = names[offset : None if limit is None else offset + limit]
            with client.pipeline(transaction=False) as pipe:
                for name in page:
                    pipe.hmget(prefix + name, "definition", "meta")
                rows = pipe.execute(raise_on_error=False)
            statics = self._static_names()
        entries = []
        for name, row in zip(page, rows, strict=True):
            if isinstance(row, Exception):
                logger.warning("periodic entry %r is unreadable (%s); skipping it", name, row)
                continue
            definition, meta = row
            if not definition:
                continue
            try:
                fields = ScheduleEntry.decode_definition(definition)
                decoded_meta = ScheduleEntry.decode_meta(meta)
                fields.update(decoded_meta)
                entry = ScheduleEntry(app=self.app, **fields)
            except (ValueError, TypeError) as exc:
                logger.warning("periodic entry %r cannot be decoded (%s); skipping it", name, exc)
                continue
            entry.last_run_at = decoded_meta.get("last_run_at")
            entries.append(self.describe(entry, statics))
        return len(names), entries

    def describe(self, entry: ScheduleEntry, statics: set[str]) -> dict[str, Any]:
        info = describe_schedule(entry.schedule, timezone=self.timezone)
        next_run = entry.due_at if entry.enabled else None
        return {
            "name": entry.name,
            "task": entry.task,
            "schedule": {"type": info.type, "value": info.value, "description": info.description},
            "args": list(entry.args or ()),
            "kwargs": dict(entry.kwargs or {}),
            "queue": (entry.options or {}).get("queue"),
            "options": dict(entry.options or {}),
            "enabled": bool(entry.enabled),
            "last_run_at": entry.last_run_at.isoformat() if entry.last_run_at else None,
            "next_run_at": next_run.isoformat() if next_run else None,
            "total_run_count": int(entry.total_run_count or 0),
            "static": entry.name in statics,
        }
