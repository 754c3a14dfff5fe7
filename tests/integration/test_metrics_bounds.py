"""Hostile input cannot grow ``/metrics``: every label set is bounded (real uvicorn)."""

from __future__ import annotations

import random
import uuid

import httpx
import pytest

from tests.conftest import Api

pytestmark = pytest.mark.integration

#: Methods llhttp (uvicorn's httptools parser) passes on but the app does not serve,
#: plus made-up ones (refused by llhttp; passed on by h11).
ODD_METHODS = ["PROPFIND", "MKCOL", "PURGE", "SEARCH", "REPORT", "LOCK", "COPY", "MOVE"]


def _hostile_request(http: httpx.Client, rng: random.Random) -> str:
    """One request with a random method, path, task or queue name; the random part."""
    junk = uuid.UUID(int=rng.getrandbits(128)).hex
    kind = rng.randrange(6)
    try:
        if kind == 0:
            method = rng.choice([*ODD_METHODS, "FOO" + junk[:8].upper(), "GET", "DELETE"])
            http.request(method, f"/api/v1/queues?{junk}")
        elif kind == 1:
            http.get(f"/{junk}/{junk[:6]}")
        elif kind == 2:
            http.get(f"/api/v1/tasks/{junk}")
        elif kind == 3:
            http.post("/api/v1/tasks", json={"task": f"no.such.{junk}", "args": [1, 2]})
        elif kind == 4:
            # Nobody consumes these queues; the session database is emptied at the end.
            http.post("/api/v1/tasks", json={"task": "math.number_sum", "args": [1, 2], "queue": f"q{junk}"})
        else:
            http.post(f"/api/v1/{junk}", content=b"{}", headers={"Content-Type": "application/json"})
    except httpx.HTTPError:  # an unparsable method may have the connection closed
        pass
    return junk


def test_metrics_size_stays_bounded_under_random_input(api: Api) -> None:
    rng = random.Random(20261201)
    token = api.http.headers["Authorization"]
    with httpx.Client(base_url=api.base_url, headers={"Authorization": token}, timeout=30) as http:
        for _ in range(200):  # every reachable label combination shows up at least once
            _hostile_request(http, rng)
        api.http.get("/metrics")  # the scrape's own label set exists from now on
        initial = api.http.get("/metrics").text
        seen = [_hostile_request(http, rng) for _ in range(2000)]
    final = api.http.get("/metrics").text
    growth = len(final) - len(initial)
    print(f"\n/metrics: {len(initial)} bytes after warm-up, {len(final)} after 2000 random requests")
    # Only counter values change (a few more digits); no new label set appears.
    assert growth < 4096
    series = {line.split(" ")[0] for line in final.splitlines() if not line.startswith("#")}
    assert series == {line.split(" ")[0] for line in initial.splitlines() if not line.startswith("#")}
    assert not any(junk in final for junk in seen)
    assert 'method="other"' in final
    # Unknown tasks (404) and queues (422) are refused before they could become labels.
