"""BaseTask retries: Celery's own autoretry options mean what Celery documents, and what
BaseTask adds keeps working (no broker: the retry message is caught before it is sent)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.canvas import Signature
from celery.exceptions import Reject, Retry
from kombu.exceptions import OperationalError

from pkg.celery_task import BaseTask, PermanentError, TransientError


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("autoretry-unit", broker="memory://", task_cls=BaseTask, set_as_current=False)
    app.finalize()  # tasks are made when declared, so an option Celery refuses raises there
    yield app
    app.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The options of every retry message a task publishes (nothing reaches a broker)."""
    messages: list[dict[str, Any]] = []
    monkeypatch.setattr(
        Signature, "apply_async", lambda sig, *args, **kwargs: messages.append(dict(sig.options))
    )
    return messages


_numbers = itertools.count()


def failing(app: Celery, error: BaseException, **options: Any) -> Any:
    """A task that raises ``error`` on every attempt."""

    @app.task(bind=True, name=f"t.fails.{next(_numbers)}", shared=False, **options)
    def fails(self: BaseTask) -> None:
        raise error

    return fails


def attempt(task: Any, retries: int = 0) -> Any:
    """Run one attempt as the worker does (``retries`` earlier retries); return the delay
    of the retry it asked for, or let what it raised through."""
    task.push_request(id="task-1", retries=retries, called_directly=False, args=(), kwargs={})
    try:
        task()
    except Retry as retry:
        return retry.when
    finally:
        task.pop_request()
    raise AssertionError(f"{task.name} neither retried nor raised")


def test_backoff_delays_are_whole_seconds_drawn_from_zero_to_the_capped_backoff(
    app: Celery, sent: list[dict[str, Any]]
) -> None:
    task = failing(app, TransientError("busy"), retry_backoff=2, retry_backoff_max=20, max_retries=None)
    random.seed(20240611)
    for retries, cap in enumerate([2, 4, 8, 16, 20, 20]):
        delays = [attempt(task, retries) for _ in range(400)]
        assert all(type(delay) is int for delay in delays)
        assert set(delays) == set(range(cap + 1)), f"retry {retries + 1}"  # Celery's full jitter
    assert len(sent) == 6 * 400 and sent[-1]["countdown"] == delays[-1]


def test_without_jitter_the_delay_is_the_exponential_backoff(app: Celery, sent: list[dict[str, Any]]) -> None:
    default = failing(app, TransientError("busy"), retry_jitter=False, max_retries=None)
    assert [attempt(default, n) for n in range(10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    capped = failing(app, TransientError("busy"), retry_jitter=False, retry_backoff=3, retry_backoff_max=20)
    assert [attempt(capped, n) for n in range(3)] == [3, 6, 12]
    factor_one = failing(app, TransientError("busy"), retry_jitter=False, retry_backoff=True)
    assert [attempt(factor_one, n) for n in range(3)] == [1, 2, 4]
    fractional = failing(
        app, TransientError("busy"), retry_jitter=False, retry_backoff=0.2, retry_backoff_max=0.5
    )
    assert [attempt(fractional, n) for n in range(3)] == [0, 0, 0]  # Celery truncates to whole seconds


def test_without_backoff_the_delay_is_retry_kwargs_countdown_or_the_default(
    app: Celery, sent: list[dict[str, Any]]
) -> None:
    fixed = failing(app, TransientError("busy"), retry_backoff=False, retry_kwargs={"countdown": 7})
    assert [attempt(fixed, n) for n in range(3)] == [7, 7, 7]
    default = failing(app, TransientError("busy"), retry_backoff=False)
    assert attempt(default) == 180  # Celery's default_retry_delay


def test_retry_countdown_is_a_fixed_sub_second_delay(app: Celery, sent: list[dict[str, Any]]) -> None:
    task = failing(app, TransientError("busy"), retry_countdown=0.2)
    assert [attempt(task, n) for n in range(3)] == [0.2, 0.2, 0.2]
    assert [message["countdown"] for message in sent] == [0.2, 0.2, 0.2]
    with pytest.raises(TypeError, match="retry_countdown or retry_backoff"):
        failing(app, TransientError("busy"), retry_countdown=1, retry_backoff=2)


def test_max_retries_stops_retrying_and_raises_the_error(app: Celery, sent: list[dict[str, Any]]) -> None:
    error = TransientError("busy")
    task = failing(app, error, max_retries=2, retry_jitter=False)
    assert [attempt(task, n) for n in range(2)] == [2, 4]
    with pytest.raises(TransientError) as raised:
        attempt(task, 2)
    assert raised.value is error and len(sent) == 2
    per_attempt = failing(app, TransientError("busy"), retry_kwargs={"max_retries": 0})
    with pytest.raises(TransientError):
        attempt(per_attempt)
    assert len(sent) == 2


def test_transient_errors_are_retried_and_others_fail_at_once(
    app: Celery, sent: list[dict[str, Any]]
) -> None:
    for error in (TransientError("x"), ConnectionError("x"), TimeoutError("x"), OperationalError("x")):
        assert attempt(failing(app, error, retry_jitter=False)) == 2, type(error).__name__
    with pytest.raises(ValueError):
        attempt(failing(app, ValueError("bad input")))
    assert len(sent) == 4


def test_autoretry_for_replaces_the_default_and_a_subclass_can_extend_it(
    app: Celery, sent: list[dict[str, Any]]
) -> None:
    only_key_errors = {"autoretry_for": (KeyError,), "retry_jitter": False}
    assert attempt(failing(app, KeyError("k"), **only_key_errors)) == 2
    with pytest.raises(TransientError):
        attempt(failing(app, TransientError("busy"), **only_key_errors))

    class LookupRetrying(BaseTask):  # type: ignore[misc]
        transient_errors = (*BaseTask.transient_errors, LookupError)

    assert attempt(failing(app, IndexError("i"), base=LookupRetrying, retry_jitter=False)) == 2
    assert attempt(failing(app, TransientError("t"), base=LookupRetrying, retry_jitter=False)) == 2
    assert len(sent) == 3


def test_permanent_errors_are_never_retried(app: Celery, sent: list[dict[str, Any]]) -> None:
    class Both(PermanentError, TransientError):
        pass

    with pytest.raises(Both):
        attempt(failing(app, Both("no")))
    with pytest.raises(PermanentError):  # even when a task's options would retry it
        attempt(failing(app, PermanentError("no"), autoretry_for=(Exception,), dont_autoretry_for=()))

    @app.task(bind=True, name="t.manual", shared=False)
    def manual(self: BaseTask) -> None:
        raise self.retry(exc=PermanentError("no"))

    with pytest.raises(PermanentError):
        attempt(manual)
    assert sent == []


def test_async_bodies_run_and_their_transient_errors_are_retried(
    app: Celery, sent: list[dict[str, Any]]
) -> None:
    @app.task(bind=True, name="t.async_ok", shared=False)
    async def async_ok(self: BaseTask, x: int) -> int:
        return x + 1

    @app.task(name="t.async_fails", retry_jitter=False, shared=False)
    async def async_fails() -> None:
        raise TransientError("busy")

    assert async_ok(1) == 2
    assert attempt(async_fails) == 2
    assert len(sent) == 1


def test_a_retry_that_cannot_be_published_goes_back_to_the_queue(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(sig: Signature, *args: Any, **kwargs: Any) -> None:
        raise OperationalError("broker down")

    monkeypatch.setattr(Signature, "apply_async", broker_down)
    with pytest.raises(Reject) as rejected:
        attempt(failing(app, TransientError("busy")))
    assert rejected.value.requeue is True
    assert isinstance(rejected.value.reason, OperationalError)


def test_a_direct_call_raises_the_error_instead_of_retrying(app: Celery, sent: list[dict[str, Any]]) -> None:
    task = failing(app, TransientError("busy"))
    with pytest.raises(TransientError):
        task()
    assert sent == []
