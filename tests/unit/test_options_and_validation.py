"""Typed options and request validation, without Redis: a client pointed at a port
where nothing listens still refuses every bad request before it would connect."""

from __future__ import annotations

import inspect
import math
from datetime import datetime, timedelta

import pytest

from pkg.celery_task import (
    CeleryClient,
    InvalidArgumentsError,
    InvalidPriorityError,
    InvalidRequestError,
    TaskRequest,
)
from pkg.celery_task._options import Options, configure, options_of
from pkg.celery_task._validation import (
    check_page,
    check_time_limits,
    describe_parameters,
    send_options,
)

#: Nothing listens here: any attempt to connect would raise BrokerUnavailableError.
NOWHERE = "redis://127.0.0.1:1/0"


@pytest.fixture
def client() -> CeleryClient:
    return CeleryClient(app_name="unit", broker_url=NOWHERE, backend_url=NOWHERE, timezone="UTC")


def test_options_defaults_and_typed_reads(client: CeleryClient) -> None:
    options = options_of(client.app)
    assert options == Options(redis_url=NOWHERE)
    assert client.app.conf.tasksys_key_prefix == "tasksys:"
    assert options.max_argument_bytes == 16 * 1024 * 1024


def test_unknown_tasksys_setting_is_refused_naming_the_accepted_ones() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        CeleryClient(app_name="unit", broker_url=NOWHERE, tasksys_revoke_expiry=5)
    message = str(caught.value)
    assert "unknown setting 'tasksys_revoke_expiry'" in message
    assert "tasksys_revoke_expires" in message and caught.value.field == "tasksys_revoke_expiry"


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [
        ("tasksys_revoke_expires", -1, "a finite number >= 0"),
        ("tasksys_event_flush_interval", math.nan, "a finite number >= 0"),
        ("tasksys_asyncio_lag_target", -0.5, "a finite number >= 0"),
        ("tasksys_asyncio_lag_target", math.inf, "a finite number >= 0"),
        ("tasksys_dead_letter_max", 0, "a whole number >= 1"),
        ("tasksys_async_max_connections", True, "a whole number >= 1"),
        ("tasksys_store_oom_retry", "yes", "true or false"),
        ("tasksys_known_queues", "default", "a list of queue names"),
        ("tasksys_key_prefix", "", "a non-empty string"),
    ],
)
def test_bad_option_values_are_refused(key: str, value: object, accepted: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        CeleryClient(app_name="unit", broker_url=NOWHERE, **{key: value})
    assert str(caught.value) == f"{key} must be {accepted}; got {value!r}"


def test_configure_changes_conf_and_typed_view_together(client: CeleryClient) -> None:
    configure(client.app, store_oom_retry=True, known_queues=["a", "b"])
    assert options_of(client.app).store_oom_retry is True
    assert client.app.conf.tasksys_store_oom_retry is True
    assert options_of(client.app).known_queues == ("a", "b")
    assert Options.from_conf(client.app.conf) == options_of(client.app)


def test_submit_refuses_bad_input_without_touching_redis(client: CeleryClient) -> None:
    with pytest.raises(InvalidArgumentsError, match="finite"):
        client.submit("t", [math.nan])
    with pytest.raises(InvalidPriorityError, match="from 0 .lowest. to 9 .highest.; got 10"):
        client.submit("t", priority=10)
    with pytest.raises(InvalidRequestError, match="countdown or eta, not both"):
        client.submit("t", countdown=1, eta=datetime.now())
    with pytest.raises(InvalidRequestError, match="reserved"):
        client.submit("t", queue="celery-task-meta-x")
    with pytest.raises(InvalidArgumentsError, match="kwargs keys must be strings"):
        client.submit_many([TaskRequest("t", kwargs={1: 2})])


def test_send_options_keeps_given_values_and_reads_naive_times_in_the_zone(client: CeleryClient) -> None:
    eta = datetime.now() + timedelta(minutes=5)
    options = send_options(
        TaskRequest("t", task_id="id-1", queue="q", priority=3, eta=eta, expires=60.0, options={"x": 1}),
        tz=client.app.timezone,
        check_queue=client.check_queue,
    )
    assert options["task_id"] == "id-1" and options["queue"] == "q" and options["priority"] == 3
    assert options["expires"] == 60.0 and options["x"] == 1
    assert options["eta"].tzinfo is not None and options["eta"].replace(tzinfo=None) == eta
    assert "countdown" not in options


def test_time_limits_and_pages() -> None:
    check_time_limits({"time_limit": 10, "soft_time_limit": 5}, None)
    with pytest.raises(
        InvalidRequestError, match=r"time_limit 5 s must exceed the soft time limit in force \(8 s\)"
    ):
        check_time_limits({"time_limit": 5}, 8)
    with pytest.raises(InvalidRequestError, match="soft_time_limit must be a number of seconds > 0; got inf"):
        check_time_limits({"soft_time_limit": math.inf}, None)
    check_page(1000, 10**9)
    for limit, offset in ((0, 0), (1001, 0), (True, 0), (1, -1), (1, 10**9 + 1)):
        with pytest.raises(InvalidRequestError):
            check_page(limit, offset)


def test_parameters_are_described_as_a_caller_passes_them() -> None:
    def run(x: int, y: int = 2, *rest: int, z: str = "a", **more: object) -> None:
        return None

    assert describe_parameters(inspect.signature(run)) == "x, y=2, *rest, z='a', **more"
