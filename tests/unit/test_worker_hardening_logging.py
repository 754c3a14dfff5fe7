"""EscapingFormatter: user data stays on its line; tracebacks keep their frames."""

from __future__ import annotations

import logging
import sys

from pkg.celery_task import escape_control
from pkg.celery_task.worker.logs import EscapingFormatter

FORGED = "\n[2026-12-01 14:00:00,000: CRITICAL/MainProcess] FORGED\x1b[31m"


def test_escape_control_covers_c0_del_and_c1() -> None:
    assert escape_control("a\nb\r\t\x00\x1b\x7f\x85\x9fé") == "a\\nb\\r\\t\\x00\\x1b\\x7f\\x85\\x9fé"
    assert escape_control("a\nb\x1b", keep_newlines=True) == "a\nb\\x1b"


def _record(msg: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("t", logging.ERROR, __file__, 1, msg, args, exc_info)  # type: ignore[arg-type]


def test_message_and_exception_message_stay_on_one_line() -> None:
    formatter = EscapingFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    try:
        raise TypeError(f"unexpected keyword {FORGED!s}")
    except TypeError:
        record = _record("task failed: %s", FORGED, exc_info=sys.exc_info())
    text = formatter.format(record)
    lines = text.splitlines()
    assert (
        lines[0] == "[ERROR] task failed: \\n[2026-12-01 14:00:00,000: CRITICAL/MainProcess] FORGED\\x1b[31m"
    )
    assert lines[1] == "Traceback (most recent call last):" and lines[2].startswith("  File ")
    assert lines[-1].startswith("TypeError: unexpected keyword \\n[2026")
    assert not any(line.startswith("[2026") for line in lines) and "\x1b" not in text
    assert record.msg == "task failed: %s" and record.args == (FORGED,)  # the record is left as it was


def test_wraps_formatters_without_a_format_of_their_own() -> None:
    assert EscapingFormatter(None).format(_record("x\x1b")) == "x\\x1b"
