"""What a caller asks to send, before and after validation: :class:`TaskRequest`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kombu.utils.json import JSONEncoder

__all__ = ["TaskRequest", "json_text"]

#: ``json.dumps(value, cls=JSONEncoder)`` builds this same encoder for every call.
_JSON_ENCODER = JSONEncoder()


def json_text(value: Any) -> str:
    """``kombu.utils.json.dumps(value)``, without building an encoder per call."""
    return _JSON_ENCODER.encode(value)


@dataclass
class TaskRequest:
    """One task to send with :meth:`CeleryClient.submit_many`."""

    task_name: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    queue: str | None = None
    priority: int | None = None
    countdown: float | None = None
    eta: datetime | None = None
    expires: float | datetime | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
