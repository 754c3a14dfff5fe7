"""Group dead letters by error fingerprint: task + exception type + normalised message.

Messages differ by ids, numbers and quoted values ("order 41 not found" and "order 97
not found" are one failure); those parts are replaced by placeholders before hashing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FailureGroup", "fingerprint", "group_failures", "normalise_message"]

_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b")
_NUMBER = re.compile(r"(?<![A-Za-z_])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_SPACES = re.compile(r"\s+")
#: Longest normalised message kept (and shown) per group.
MAX_MESSAGE = 500


def normalise_message(message: str) -> str:
    """``message`` with quoted strings, UUIDs, hex ids and numbers replaced by
    ``<str>``, ``<uuid>``, ``<hex>`` and ``<n>``, and runs of whitespace collapsed."""
    text = _QUOTED.sub("<str>", message[: MAX_MESSAGE * 4])
    text = _UUID.sub("<uuid>", text)
    text = _HEX.sub("<hex>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACES.sub(" ", text).strip()[:MAX_MESSAGE]


def _error_parts(entry: dict[str, Any]) -> tuple[str, str]:
    error = entry.get("error") or {}
    error_type = str(error.get("type") or entry.get("reason") or "unknown")
    return error_type, normalise_message(str(error.get("message") or ""))


def fingerprint(entry: dict[str, Any]) -> str:
    """A short stable hash of the entry's task, exception type and normalised message."""
    error_type, message = _error_parts(entry)
    raw = "\x00".join((str(entry.get("task") or ""), error_type, message))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@dataclass
class FailureGroup:
    """Dead letters sharing one fingerprint, newest first."""

    fingerprint: str
    task: str
    error_type: str
    message: str
    first_seen: str
    last_seen: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many entries the group holds."""
        return len(self.entries)

    @property
    def resubmittable(self) -> int:
        """How many of them can be sent again."""
        return sum(1 for entry in self.entries if entry.get("resubmittable") and entry.get("task"))


def group_failures(entries: list[dict[str, Any]]) -> list[FailureGroup]:
    """Group entries by fingerprint; groups ordered by last seen, newest first."""
    groups: dict[str, FailureGroup] = {}
    for entry in entries:
        key = fingerprint(entry)
        seen = str(entry.get("recorded_at") or "")
        group = groups.get(key)
        if group is None:
            error_type, message = _error_parts(entry)
            group = groups[key] = FailureGroup(
                key, str(entry.get("task") or "—"), error_type, message, seen, seen
            )
        group.entries.append(entry)
        group.first_seen = min(group.first_seen, seen)
        group.last_seen = max(group.last_seen, seen)
    ordered = sorted(groups.values(), key=lambda g: g.last_seen, reverse=True)
    for group in ordered:
        group.entries.sort(key=lambda e: str(e.get("recorded_at") or ""), reverse=True)
    return ordered
