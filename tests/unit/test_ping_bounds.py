"""Health probes are bounded by their timeout, also against a Redis that accepts
connections but never answers (a hung server, a half-open proxy)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from pkg.celery_task import CeleryClient


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port where the kernel completes connections (backlog) but nothing ever replies."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_ping_of_a_silent_redis_fails_within_its_timeout(silent_port: int) -> None:
    url = f"redis://127.0.0.1:{silent_port}/0"
    client = CeleryClient(app_name="ping", broker_url=url, backend_url=url, timezone="UTC")
    started = time.monotonic()
    report = client.ping(timeout=0.5, workers=False)
    elapsed = time.monotonic() - started
    client.close()
    assert report["broker"]["ok"] is False and report["backend"]["ok"] is False
    assert "Timeout" in report["broker"]["error"] and "Timeout" in report["backend"]["error"]
    assert elapsed < 5, f"two 0.5 s probes took {elapsed:.1f} s (pooled clients wait 10 s each)"
