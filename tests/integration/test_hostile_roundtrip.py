"""Property-based: what the Python client accepts round-trips through a real worker
unchanged; what it refuses raises a ``ValueError`` subclass and writes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pkg.celery_task import CeleryClient, InvalidRequestError
from tests.conftest import Stack

pytestmark = pytest.mark.integration

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=30,
)
names = st.one_of(
    st.text(max_size=40),
    st.sampled_from([":lock", ":schedule", "ok-name", "padded ", "a\nb", "celery-task-meta-x", "unacked"]),
)
HOSTILE = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _keys(stack: Stack) -> set[bytes]:
    return set(stack.db.client.keys("*"))


@HOSTILE
@given(value=values, task_id=st.one_of(st.none(), names))
def test_accepted_values_round_trip_and_refused_ones_write_nothing(
    stack: Stack, client: CeleryClient, value: Any, task_id: str | None
) -> None:
    key = f"roundtrip-{uuid.uuid4().hex}"
    if task_id is not None and task_id.isalnum():
        task_id = f"{task_id}-{uuid.uuid4().hex[:8]}"  # fresh, so reuse is not what fails
    before = _keys(stack)
    try:
        result = client.submit("tests.record", [key, value], task_id=task_id)
    except InvalidRequestError:
        new = {k for k in _keys(stack) - before if not k.startswith((b"celery-task-meta-", b"_kombu"))}
        assert new == set()
        return
    assert client.get_result(result.id, timeout=30) == value


@HOSTILE
@given(name=names, interval=st.one_of(st.floats(allow_nan=True), st.integers(-5, 10**12)))
def test_periodic_entries_round_trip_or_write_nothing(
    stack: Stack, client: CeleryClient, name: str, interval: Any
) -> None:
    schedule_before = stack.db.client.zrange("redbeat::schedule", 0, -1)
    try:
        stored = client.add_periodic_task("math.number_sum", "interval", interval, name=name, args=[1, 2])
    except InvalidRequestError:
        assert stack.db.client.zrange("redbeat::schedule", 0, -1) == schedule_before
        assert stack.db.client.type("redbeat::lock") in (b"string", b"none")
        return
    try:
        entry = client.get_periodic_task(stored)
        assert entry["name"] == name and entry["args"] == [1, 2]
        assert entry["schedule"]["value"] == pytest.approx(float(interval), rel=1e-6, abs=1e-6)
    finally:
        client.remove_periodic_task(stored)
