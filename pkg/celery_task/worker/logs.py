"""Worker and beat log formatting: control characters in messages are escaped, so
user data cannot forge log lines or colour a terminal."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from .._limits import escape_control

__all__ = ["EscapingFormatter", "format_exception_escaped"]


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def format_exception_escaped(exc_info: Any) -> str:
    """A traceback as ``logging`` prints it, but each exception's own message (which may
    carry user data) on one escaped line; the frames keep their lines."""
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
    if not isinstance(exc, BaseException):
        return escape_control("".join(traceback.format_exception(*exc_info)), keep_newlines=True)
    parts: list[str] = []
    chain: list[tuple[traceback.TracebackException, str | None]] = []
    te: traceback.TracebackException | None = traceback.TracebackException.from_exception(exc)
    link: str | None = None
    seen: set[int] = set()
    while te is not None and id(te) not in seen:
        seen.add(id(te))
        chain.append((te, link))
        if te.__cause__ is not None:
            te, link = te.__cause__, _CAUSE
        elif te.__context__ is not None and not te.__suppress_context__:
            te, link = te.__context__, _CONTEXT
        else:
            te = None
    for te, link in reversed(chain):
        if te.stack:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(te.stack.format())
        parts.extend(escape_control(line.rstrip("\n")) + "\n" for line in te.format_exception_only())
        if link is not None:
            parts.append(link)
    return escape_control("".join(parts), keep_newlines=True).rstrip("\n")


class EscapingFormatter(logging.Formatter):
    """Wraps a handler's formatter: control characters in the message are escaped (a
    kwargs key such as ``"\\n[2026-12-01 …: CRITICAL/MainProcess] FORGED"`` or
    ``"\\x1b[31m"`` stays inside its line), and in a traceback each exception message is
    kept to one escaped line while the frames keep their own lines."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args, record.exc_text
        try:
            record.msg, record.args = escape_control(record.getMessage()), None
        except Exception:  # a broken format string: let the inner formatter report it
            return self.inner.format(record)
        try:
            if record.exc_info and record.exc_info != (None, None, None):
                record.exc_text = format_exception_escaped(record.exc_info)
            if record.stack_info:
                record.stack_info = escape_control(record.stack_info, keep_newlines=True)
            return self.inner.format(record)
        finally:
            record.msg, record.args, record.exc_text = saved

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
