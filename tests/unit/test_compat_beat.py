"""Pins what the beat section of ``pkg.celery_task._compat`` and ``_beat``/``_schedules``
rely on in Celery and RedBeat, so an upgrade that changes it fails here, naming the
function to review, rather than in a running beat (no Redis: clients are faked)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redbeat.schedulers
from celery import Celery
from celery.beat import Scheduler
from celery.schedules import crontab, crontab_parser, schedule
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat.decoder import RedBeatJSONEncoder

from pkg.celery_task import ScheduleEntry, _compat


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("compat-beat", broker="redis://127.0.0.1:6379/15", set_as_current=False)
    app.conf.redbeat_redis_url = "redis://127.0.0.1:6379/15"
    app.conf.redbeat_redis_options = {}
    yield app
    app.close()


class _Recorder:
    """A Redis client and pipeline in one that records the commands it is given."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...]]] = []

    def pipeline(self, *args: Any, **kwargs: Any) -> _Recorder:
        return self

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def execute(self) -> list[Any]:
        return []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.commands.append((name, args))


class _Scheduler(Scheduler):  # type: ignore[misc]
    """Celery's base scheduler with its Entry set to ours, without a schedule store."""

    Entry = ScheduleEntry

    def __init__(self, app: Celery) -> None:
        self.app = app


def test_maybe_entry_builds_an_entry_from_a_definition_and_keeps_an_entry(app: Celery) -> None:
    review = "Celery's Scheduler._maybe_entry changed; review _compat.schedule_entry"
    assert hasattr(Scheduler, "_maybe_entry"), review
    assert list(inspect.signature(Scheduler._maybe_entry).parameters) == ["self", "name", "entry"], review
    scheduler = _Scheduler(app)
    built = _compat.schedule_entry(scheduler, "tick", {"task": "t.run", "schedule": 5.0, "args": [1]})
    assert type(built) is ScheduleEntry, review
    assert (built.name, built.task, built.args, built.app) == ("tick", "t.run", [1], app), review
    assert built.schedule.run_every == timedelta(seconds=5), review
    given = ScheduleEntry(name="kept", task="t.run", schedule=schedule(5), app=app)
    assert _compat.schedule_entry(scheduler, "kept", given) is given, review
    with pytest.raises(TypeError):  # an unknown field: update_from_dict logs and skips it
        _compat.schedule_entry(scheduler, "bad", {"task": "t.run", "schedule": 5.0, "colour": "red"})


def test_redbeat_caches_its_client_on_the_app_under_redbeat_redis_key(app: Celery) -> None:
    review = "RedBeat's get_redis caches its client differently; review _compat.forget_redbeat_client"
    assert hasattr(redbeat.schedulers, "REDBEAT_REDIS_KEY"), review
    key = redbeat.schedulers.REDBEAT_REDIS_KEY
    first = redbeat.schedulers.get_redis(app)
    assert getattr(app, key) is first and redbeat.schedulers.get_redis(app) is first, review
    redbeat.schedulers.ensure_conf(app).redbeat_redis_options = {"retry_period": 7}  # as RedisScheduler does
    _compat.forget_redbeat_client(app)
    again = redbeat.schedulers.get_redis(app)
    assert again is not first, review
    assert isinstance(again, redbeat.schedulers.RetryingConnection), review  # built from the new options


def test_redbeat_save_writes_what_our_pipelined_save_writes(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    review = "RedBeat's save writes other commands; review ScheduleEntry.save's pipe branch"
    entry = ScheduleEntry(
        name="e",
        task="t.run",
        schedule=schedule(5),
        args=[1],
        kwargs={"k": 2},
        options={"queue": "q"},
        app=app,
    )
    theirs, ours = _Recorder(), _Recorder()
    monkeypatch.setattr(redbeat.schedulers, "get_redis", lambda _app=None: theirs)
    RedBeatSchedulerEntry.save(entry)
    entry.save(ours)
    assert ours.commands == theirs.commands, review
    assert [name for name, _ in ours.commands] == ["hset", "hsetnx", "zadd"], review
    key, field, definition = ours.commands[0][1]
    assert (key, field) == ("redbeat:e", "definition"), review
    assert json.loads(definition)["enabled"] is True, review


def test_entry_save_without_a_pipe_is_redbeats_own(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    review = "RedBeat's save no longer goes through get_redis(app).pipeline(); review ScheduleEntry.save"
    recorder = _Recorder()
    monkeypatch.setattr(redbeat.schedulers, "get_redis", lambda _app=None: recorder)
    ScheduleEntry(name="e", task="t.run", schedule=schedule(5), enabled=False, app=app).save()
    assert [name for name, _ in recorder.commands] == ["hset", "hsetnx", "zadd"], review
    assert recorder.commands[2][1] == ("redbeat::schedule", {"redbeat:e": -1}), review  # our score


def test_beat_advances_an_entry_through_next(app: Celery) -> None:
    review = "RedBeat/Celery no longer advance an entry with next(entry); review ScheduleEntry.next/__next__"
    assert RedBeatSchedulerEntry.__next__ is RedBeatSchedulerEntry.next, review
    params = inspect.signature(RedBeatSchedulerEntry.next).parameters
    assert list(params) == ["self", "last_run_at", "only_update_last_run_at"], review
    assert "next(entry)" in inspect.getsource(RedBeatScheduler.reserve), review
    assert "self.reserve(entry) if advance else entry" in inspect.getsource(Scheduler.apply_async), review
    assert ScheduleEntry.__next__ is ScheduleEntry.next


def test_entries_tell_the_time_with_default_now(app: Celery) -> None:
    review = "Celery's ScheduleEntry.default_now changed; review ScheduleEntry.due_at/is_due in _beat.py"
    entry = ScheduleEntry(name="e", task="t.run", schedule=schedule(5), app=app)
    assert list(inspect.signature(ScheduleEntry.default_now).parameters) == ["self"], review
    assert entry.default_now().tzinfo is not None, review


def test_redbeat_update_from_dict_keeps_last_run_at_and_saves_each_entry() -> None:
    review = "RedBeat's update_from_dict changed; review RedisScheduler.update_from_dict"
    source = inspect.getsource(RedBeatScheduler.update_from_dict)
    steps = (
        "self.Entry.from_key(",
        "self._maybe_entry(name, entry)",
        "redis_entry.last_run_at",
        "entry.save()",
    )
    for step in steps:
        assert step in source, f"{review}: {step!r} is gone"
    for carried in ("enabled", "total_run_count"):  # what ours carries over; RedBeat may now do it itself
        assert carried not in source, f"{review}: RedBeat now handles {carried!r}"


@pytest.mark.parametrize(
    "field, max_, min_",
    [
        ("minute", 60, 0),
        ("hour", 24, 0),
        ("day_of_month", 31, 1),
        ("month_of_year", 12, 1),
        ("day_of_week", 7, 0),
    ],
)
@pytest.mark.parametrize(
    "spec", ["*", "*/7", "5", "1-5", "5-1", "2-10/3", "1,3", "mon-fri", "jan", "60", "0"]
)
def test_crontab_expands_its_fields_with_crontab_parser(field: str, max_: int, min_: int, spec: str) -> None:
    review = "crontab no longer expands a field as crontab_parser does; review _schedules._parse_cron"
    try:
        parsed: set[int] | str = crontab_parser(max_, min_).parse(spec)
    except ValueError as exc:
        parsed = f"ValueError: {exc}"
    try:
        expanded: set[int] | str = getattr(crontab(**{field: spec}), field)
    except ValueError as exc:
        expanded = f"ValueError: {exc}"
    assert parsed == expanded, review


def test_redbeat_encodes_a_crontab_as_the_fields_it_was_given() -> None:
    review = "RedBeatJSONEncoder encodes a crontab differently; review _schedules.describe_schedule"
    fields = {
        "minute": "*/15",
        "hour": "8-18",
        "day_of_month": "1",
        "month_of_year": "jan",
        "day_of_week": "mon-fri",
    }
    encoded = RedBeatJSONEncoder().default(crontab(**fields))
    assert {name: encoded.get(name) for name in fields} == fields, review
