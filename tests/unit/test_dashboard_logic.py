"""Pure logic of the dashboard: fingerprints, fire times, sessions and CSRF tokens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from internal.dashboard.auth import SESSION_SECONDS, Sessions
from internal.dashboard.charts import line_chart, stacked_bars
from internal.dashboard.fingerprint import fingerprint, group_failures, normalise_message
from internal.dashboard.schedule_times import check_fires, next_fire_times, previous_fire_time

NOW = datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("order 41 not found", "order <n> not found"),
        ("key 'abc' missing at 0x7f3a", "key <str> missing at <hex>"),
        ('no "user 7" here', "no <str> here"),
        ("task 3f2b9c1e-1234-4abc-8def-0123456789ab failed after 2.5s", "task <uuid> failed after <n>s"),
        ("sha deadbeef12 bad", "sha <hex> bad"),
        ("x1 and y2 stay", "x1 and y2 stay"),
        ("  many \n  spaces ", "many spaces"),
        ("deadline exceeded", "deadline exceeded"),
    ],
)
def test_messages_are_normalised(message: str, expected: str) -> None:
    assert normalise_message(message) == expected


def _entry(task: str, kind: str, message: str, at: str, entry_id: str) -> dict[str, object]:
    return {
        "id": entry_id,
        "task": task,
        "error": {"type": kind, "message": message},
        "recorded_at": at,
        "resubmittable": True,
    }


def test_groups_by_task_type_and_normalised_message() -> None:
    entries = [
        _entry("a", "KeyError", "order 1", "2026-12-01T10:00:00", "1"),
        _entry("a", "KeyError", "order 22", "2026-12-01T12:00:00", "2"),
        _entry("a", "ValueError", "order 3", "2026-12-01T11:00:00", "3"),
        _entry("b", "KeyError", "order 4", "2026-12-01T09:00:00", "4"),
        {"id": "5", "task": None, "reason": "undecodable", "recorded_at": "2026-12-01T08:00:00"},
    ]
    groups = group_failures(entries)
    assert [(g.task, g.error_type, g.count) for g in groups] == [
        ("a", "KeyError", 2),
        ("a", "ValueError", 1),
        ("b", "KeyError", 1),
        ("—", "undecodable", 1),
    ]
    first = groups[0]
    assert (first.first_seen, first.last_seen) == ("2026-12-01T10:00:00", "2026-12-01T12:00:00")
    assert [e["id"] for e in first.entries] == ["2", "1"]
    assert first.resubmittable == 2 and groups[-1].resubmittable == 0
    assert fingerprint(entries[0]) == fingerprint(entries[1]) != fingerprint(entries[2])


def test_next_five_cron_fires_in_the_schedule_time_zone() -> None:
    times = next_fire_times(
        {"type": "cron", "value": "30 8 * * *"}, timezone="Asia/Shanghai", now=NOW, next_run_at=None
    )
    assert [t.isoformat() for t in times[:2]] == ["2026-12-02T08:30:00+08:00", "2026-12-03T08:30:00+08:00"]
    assert len(times) == 5
    quarter = next_fire_times(
        {"type": "cron", "value": "*/15 * * * *"}, timezone="UTC", now=NOW, next_run_at=None
    )
    assert [t.minute for t in quarter] == [15, 30, 45, 0, 15]
    rare = next_fire_times({"type": "cron", "value": "0 0 29 2 1"}, timezone="UTC", now=NOW, next_run_at=None)
    assert rare[0].date().isoformat() == "2044-02-29"  # Celery ANDs day of month and day of week


def test_interval_and_once_fires() -> None:
    due = NOW + timedelta(seconds=5)
    interval = next_fire_times({"type": "interval", "value": 30}, timezone="UTC", now=NOW, next_run_at=due)
    assert [(t - NOW).total_seconds() for t in interval] == [5, 35, 65, 95, 125]
    once = {"type": "once", "value": (NOW + timedelta(hours=1)).isoformat()}
    assert len(next_fire_times(once, timezone="UTC", now=NOW, next_run_at=None)) == 1
    assert next_fire_times(once, timezone="UTC", now=NOW + timedelta(hours=2), next_run_at=None) == []


def test_missed_late_and_overdue_fires() -> None:
    cron = {"type": "cron", "value": "*/15 * * * *"}
    runs = [NOW - timedelta(minutes=m) for m in (60, 45, 15)] + [NOW + timedelta(seconds=90)]
    check = check_fires(
        cron, runs, timezone="UTC", now=NOW, enabled=True, next_run_at=NOW + timedelta(minutes=15)
    )
    assert check.missed == 1  # the 21:30 fire
    assert [round(delay) for _, delay in check.late] == [90]
    assert check.overdue_seconds is None
    interval = {"type": "interval", "value": 30}
    sent = [NOW - timedelta(seconds=s) for s in (160, 130, 40, 0)]
    check = check_fires(
        interval, sent, timezone="UTC", now=NOW, enabled=True, next_run_at=NOW - timedelta(seconds=90)
    )
    assert check.missed == 2  # at -100 and -70
    assert [round(delay) for _, delay in check.late] == [10]  # sent 40 s after the one before
    assert check.overdue_seconds == 90
    assert (
        check_fires(interval, sent, timezone="UTC", now=NOW, enabled=False, next_run_at=None).overdue_seconds
        is None
    )
    assert previous_fire_time(cron, ZoneInfo("UTC"), NOW) == NOW


def test_sessions_are_signed_expire_and_bind_csrf() -> None:
    sessions = Sessions("secret-token")
    session, cookie = sessions.issue(now=1_000_000)
    assert sessions.check(cookie, now=1_000_001) == session
    assert sessions.check(cookie, now=1_000_000 + SESSION_SECONDS + 1) is None
    issued, nonce, signature = cookie.split(".")
    assert sessions.check(f"{issued}.{nonce}x.{signature}", now=1_000_001) is None
    assert sessions.check(f"{int(issued) + 1}.{nonce}.{signature}", now=1_000_001) is None
    assert Sessions("other-token").check(cookie, now=1_000_001) is None  # a new token ends sessions
    for bad in (None, "", "x", "..", "a.b.c", "1" * 500):
        assert sessions.check(bad) is None
    token = sessions.csrf_token(session)
    assert sessions.csrf_matches(session, token)
    other, _ = sessions.issue(now=1_000_000)
    assert not sessions.csrf_matches(other, token)
    assert not sessions.csrf_matches(session, None) and not sessions.csrf_matches(session, "")
    assert sessions.token_matches("secret-token") and not sessions.token_matches("secret-toke")
    assert Sessions(None).open and not sessions.open


def test_charts_escape_labels() -> None:
    hostile = "<script>alert(1)</script>"
    svg = str(line_chart({hostile: [(NOW, 1.0), (NOW + timedelta(minutes=1), 3.0)]}, title=hostile))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "<polyline" in svg
    bars = str(stacked_bars([(NOW, {"SUCCESS": 2, "FAILURE": 1})], ["SUCCESS", "FAILURE"], title=hostile))
    assert bars.count("<rect") >= 2 and "<script>" not in bars
    assert "<script>" not in str(line_chart({}, title=hostile))
