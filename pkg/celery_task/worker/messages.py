"""Messages a worker cannot read become *refused* stand-ins instead of raising.

Messages a worker cannot even read (not JSON, not a kombu message, a body that does
not decode) are handed to the consumer as a refused message instead of raising out of
the event loop: a well-formed stand-in holding the raw bytes, with the content type
:data:`REFUSED_CONTENT_TYPE` that no consumer accepts and the reason in the header
:data:`REFUSED_HEADER`. Celery then reports it as undecodable and acknowledges it, and the
worker's consumer dead-letters it; until then it is held in the unacked index like any
other message, so it is never lost between the pop and the dead letter.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from kombu.transport.virtual import Message as VirtualMessage
from kombu.utils.json import dumps
from kombu.utils.uuid import uuid

__all__ = ["REFUSED_CONTENT_TYPE", "REFUSED_HEADER", "SafeMessage", "refused_payload"]

logger = logging.getLogger(__name__)

#: Content type of the stand-in for a message that could not be read.
REFUSED_CONTENT_TYPE = "application/x-tasksys-refused"
#: Header of that stand-in: ``{"type": ..., "message": ...}`` of the read error.
REFUSED_HEADER = "x-tasksys-refused"


def refused_payload(raw: bytes | str, queue: str, exc: BaseException, original: Any = None) -> dict[str, Any]:
    """A well-formed message for ``queue`` that carries ``raw`` and why it was refused
    (with the task id and name of the ``original`` payload, when it has string ones)."""
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
    reason: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:500]}
    headers = original.get("headers") if isinstance(original, dict) else None
    if isinstance(headers, dict):
        reason.update({k: headers[k] for k in ("id", "task") if isinstance(headers.get(k), str)})
    return {
        "body": base64.b64encode(data).decode(),
        "content-type": REFUSED_CONTENT_TYPE,
        "content-encoding": "binary",
        "headers": {REFUSED_HEADER: reason},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": uuid(),
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
        },
    }


class SafeMessage(VirtualMessage):
    """Kombu's Redis message; a payload that is not a well-formed kombu message (not a
    mapping, no properties or delivery tag, no delivery info, a body that does not
    decode) becomes a refused stand-in instead of raising in the worker's event loop."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            _check_shape(payload)
            super().__init__(payload, channel=channel, **kwargs)  # type: ignore[no-untyped-call]
        except (KeyError, TypeError, ValueError, AttributeError, LookupError, binascii.Error) as exc:
            queue = _queue_of(payload)
            logger.error("refusing a malformed message from queue %r: %s: %s", queue, type(exc).__name__, exc)
            raw = payload if isinstance(payload, bytes | str) else _dump_raw(payload)
            stand_in = refused_payload(raw, queue, exc, payload)
            super().__init__(stand_in, channel=channel, **kwargs)  # type: ignore[no-untyped-call]


def _check_shape(payload: Any) -> None:
    if not isinstance(payload, dict):
        raise TypeError(f"a message must be a JSON object, not {type(payload).__name__}")
    properties = payload["properties"]
    if not isinstance(properties, dict):
        raise TypeError("message properties must be an object")
    if not isinstance(properties["delivery_tag"], str):
        raise TypeError("the delivery tag must be a string")
    info = properties["delivery_info"]
    if not isinstance(info, dict) or not isinstance(info.get("routing_key"), str):
        raise TypeError("delivery_info must be an object with a routing_key")
    info.setdefault("exchange", "")
    if not isinstance(payload.get("headers", {}), dict | None):
        raise TypeError("message headers must be an object")


def _queue_of(payload: Any) -> str:
    try:
        return str(payload["properties"]["delivery_info"]["routing_key"])
    except (KeyError, TypeError, AttributeError):
        return ""


def _dump_raw(payload: Any) -> str:
    try:
        return str(dumps(payload))  # type: ignore[no-untyped-call]
    except (TypeError, ValueError):
        return repr(payload)
