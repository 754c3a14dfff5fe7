"""Pure logic of flow control: rate and limit parsing, key naming, task-declared limits,
and the compat gate in front of the pool (pinned against Celery's WorkController)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from celery.worker.worker import WorkController
from hypothesis import given
from hypothesis import strategies as st

from pkg.celery_task import _compat
from pkg.celery_task._errors import InvalidRequestError
from pkg.celery_task._flow import FlowKeys, Limits, Rate, check_flow_key, overrides_from, parse_rate
from pkg.celery_task._limits import ENTRY_NAME_PATTERN


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/s", Rate(10, 1.0)),
        (" 600 / m ", Rate(600, 60.0)),
        ("5/h", Rate(5, 3600.0)),
        ("100000/s", Rate(100000, 1.0)),
    ],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text, field="r") == rate
    assert parse_rate(str(rate), field="r") == rate


@pytest.mark.parametrize(
    "text", ["", "10", "10/d", "0/s", "-1/s", "1.5/s", "100001/s", "10/s/s", 10, b"10/s", "10/ s\n1"]
)
def test_bad_rates_name_the_field(text: Any) -> None:
    with pytest.raises(InvalidRequestError, match="global_rate_limit") as caught:
        parse_rate(text, field="global_rate_limit")
    assert caught.value.field == "global_rate_limit"


@pytest.mark.parametrize("value", [0, -1, 100_001, True, 1.0, "3"])
def test_bad_concurrency_is_refused(value: Any) -> None:
    with pytest.raises(InvalidRequestError, match="concurrency_limit"):
        Limits.parse({"concurrency_limit": value})


def test_unknown_limit_names_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="accepted: global_rate_limit"):
        Limits.parse({"rate_limit": "10/s"})


def test_limits_round_trip_and_truth() -> None:
    limits = Limits.parse({"global_rate_limit": "10/s", "concurrency_limit_per_key": 1})
    assert limits and limits.uses_key and limits.has_concurrency
    assert Limits.parse(limits.as_dict()) == limits
    assert not Limits()
    assert overrides_from({"a": '{"concurrency_limit": 2}', "b": "not json", "c": '{"x": 1}'}) == {
        "a": Limits(concurrency_limit=2)
    }


def test_a_task_declaring_a_bad_limit_fails_at_definition() -> None:
    from celery import Celery

    app = Celery("flow-unit", task_cls="pkg.celery_task._task:BaseTask", set_as_current=False)
    with pytest.raises(TypeError, match="global_rate_limit"):

        @app.task(name="bad.rate", global_rate_limit="ten per second", shared=False)
        def bad() -> None: ...

        app.tasks["bad.rate"]  # noqa: B018  (tasks are built lazily)

    @app.task(name="good.rate", global_rate_limit="10/s", concurrency_limit=2, shared=False)
    def good() -> None: ...

    assert Limits.of_task(app.tasks["good.rate"]) == Limits(Rate(10, 1.0), None, 2, None)


_names = st.from_regex(ENTRY_NAME_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 200)


@given(task_a=st.text(min_size=1, max_size=30), task_b=st.text(min_size=1, max_size=30), a=_names, b=_names)
def test_no_two_task_key_pairs_share_a_redis_key(task_a: str, task_b: str, a: str, b: str) -> None:
    keys = FlowKeys("tasksys:")
    if (task_a, a) != (task_b, b):
        assert keys.rate(task_a, a) != keys.rate(task_b, b)
        assert keys.slots(task_a, a) != keys.slots(task_b, b)
    assert keys.rate(task_a) != keys.rate(task_b, b)
    assert keys.rate(task_a) not in (keys.limits, keys.throttled)


@pytest.mark.parametrize("value", [" a", "a ", ":lock", "a|b", "a\nb", "", "x" * 201, None, 3])
def test_bad_flow_keys_are_refused(value: Any) -> None:
    with pytest.raises(InvalidRequestError, match="flow_key"):
        check_flow_key(value)


def test_work_controller_still_hands_off_through_the_names_the_gate_replaces() -> None:
    assert "self._process_task" in inspect.getsource(WorkController._process_task_sem), (
        "WorkController._process_task_sem must look _process_task up per call; "
        "review _compat.gate_process_task"
    )
    assert "_quick_acquire" in inspect.getsource(WorkController._process_task_sem), (
        "WorkController._process_task_sem no longer takes a semaphore slot; review _compat.gate_process_task"
    )


class _Controller:
    def __init__(self, semaphore: bool) -> None:
        self.released = 0
        self.ran: list[str] = []
        if semaphore:
            self.process_task = self._process_task_sem

    def _process_task(self, request: str) -> None:
        self.ran.append(request)

    def _process_task_sem(self, request: str) -> None:
        self._process_task(request)

    def _quick_release(self) -> None:
        self.released += 1


@pytest.mark.parametrize("semaphore", [True, False])
def test_gate_passes_admitted_requests_and_gives_back_slots_only_it_took(semaphore: bool) -> None:
    controller = _Controller(semaphore)
    handler = _compat.gate_process_task(controller, controller._process_task, lambda r: r != "wait")
    handler("go")
    handler("wait")
    controller._process_task("go-again")  # the instance attribute is the gated one
    assert controller.ran == ["go", "go-again"]
    assert controller.released == (1 if semaphore else 0)
