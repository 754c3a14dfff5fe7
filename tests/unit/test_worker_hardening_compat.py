"""Pins the private Celery, kombu and billiard names ``pkg.celery_task._compat`` uses,
so an upgrade that changes them fails here rather than in a worker."""

from __future__ import annotations

import inspect
from typing import Any

from billiard.pool import ApplyResult
from celery.worker.worker import WorkController
from kombu.transport import redis as kombu_redis

from pkg.celery_task import _compat
from pkg.celery_task.worker.transport import PriorityRedisChannel


def test_kombu_brpop_read_still_has_the_steps_we_reproduce() -> None:
    source = inspect.getsource(kombu_redis.Channel._brpop_read)
    missing = [step for step in _compat.KOMBU_BRPOP_READ_STEPS if step not in source]
    assert not missing, f"kombu's _brpop_read changed; review _compat.brpop_reply/brpop_done: {missing}"
    assert PriorityRedisChannel._brpop_read is not kombu_redis.Channel._brpop_read
    for name in ("_queue_cycle", "_in_poll", "_flush_brpop_reauth", "sep"):
        assert hasattr(kombu_redis.Channel, name) or name in inspect.getsource(kombu_redis.Channel), name


def test_celery_work_controller_hand_off_names() -> None:
    source = inspect.getsource(WorkController._process_task_sem)
    assert "self._process_task" in source, "the semaphore path must look _process_task up per call"
    assert "self._quick_release()" in inspect.getsource(WorkController._process_task)


def test_billiard_apply_result_registers_in_the_cache_before_sending() -> None:
    source = inspect.getsource(ApplyResult.__init__)
    assert "cache[self._job] = self" in source
    assert "self._accepted = False" in source


class _Job:
    def __init__(self, accepted: bool = False, sent: bool = False) -> None:
        self._accepted = accepted
        self._write_to = object() if sent else None


class _Pool:
    def __init__(self, cache: dict[int, Any]) -> None:
        self._pool = type("Inner", (), {"_cache": cache})()


def test_forget_unsent_job_drops_only_the_newest_unsent_job() -> None:
    cache: dict[int, Any] = {1: _Job(accepted=True), 2: _Job()}
    assert _compat.forget_unsent_job(_Pool(cache)) is True
    assert list(cache) == [1]
    assert _compat.forget_unsent_job(_Pool(cache)) is False  # 1 was accepted
    sent = {3: _Job(sent=True)}
    assert _compat.forget_unsent_job(_Pool(sent)) is False and list(sent) == [3]
    assert _compat.forget_unsent_job(object()) is False


class _Controller:
    def __init__(self) -> None:
        self.released = 0
        self.pool = None

    def _process_task(self, request: Any) -> None:
        if request == "bad":
            raise RecursionError("too deep")

    def _quick_release(self) -> None:
        self.released += 1


def test_guard_process_task_reports_and_releases_the_slot() -> None:
    controller = _Controller()
    errors: list[tuple[Any, str]] = []
    handler = _compat.guard_process_task(
        controller, controller._process_task, lambda req, exc: errors.append((req, type(exc).__name__))
    )
    handler("good")
    handler("bad")
    controller._process_task("bad")  # the instance attribute is the guarded one too
    assert errors == [("bad", "RecursionError"), ("bad", "RecursionError")]
    assert controller.released == 2


def test_kombu_do_restore_message_pushes_through_the_pipe_it_is_given() -> None:
    source = inspect.getsource(kombu_redis.Channel._do_restore_message)
    assert "(pipe.lpush if leftmost else pipe.rpush)(" in source
    assert "self._q_for_pri(queue, pri), dumps(payload)" in source


def test_restore_targets_marks_redelivered_and_files_by_priority() -> None:
    class Channel(PriorityRedisChannel):
        def __init__(self) -> None:  # no connection: only the filing logic is used
            self.priority_steps = list(range(10))

        def _lookup(self, exchange: Any, routing_key: Any, default: Any = None) -> list[str]:
            return [routing_key]

    payload = {"headers": {}, "properties": {"priority": 9, "delivery_info": {}}, "body": ""}
    ((key, body),) = _compat.restore_targets(Channel(), payload, "ex", "jobs")
    assert key == "jobs"  # priority 9 is filed in the sub-queue polled first
    assert '"redelivered": true' in body


def test_kombu_connection_reports_its_transport_through_resolve_aliases() -> None:
    from kombu import Connection
    from kombu import connection as kombu_connection

    assert "self.resolve_aliases.get(" in inspect.getsource(Connection._info)
    assert "fields = self.info()" in inspect.getsource(Connection.as_uri)
    assert Connection.resolve_aliases is kombu_connection.resolve_aliases


def test_celery_worker_mailbox_dispatches_from_the_panel_registry() -> None:
    from celery.worker import pidbox
    from celery.worker.control import Panel
    from kombu.pidbox import Node

    assert "handlers=control.Panel.data" in inspect.getsource(pidbox.Pidbox.__init__)
    assert "self.handlers[method](self.state, **arguments)" in inspect.getsource(Node.handle)
    assert Panel.meta["revoke"].variadic == "task_id"
    assert list(inspect.signature(Panel.data["revoke"]).parameters)[:2] == ["state", "task_id"]


def test_wrap_control_command_wraps_once_and_keeps_the_metadata() -> None:
    from celery.worker.control import Panel

    original, meta = Panel.data["revoke"], Panel.meta["revoke"]

    def wrap(handler: Any) -> Any:
        def wrapped(state: Any, task_id: Any = None, **kwargs: Any) -> Any:
            return handler(state, task_id, **kwargs)

        return wrapped

    try:
        assert _compat.wrap_control_command("revoke", wrap) is True
        assert _compat.wrap_control_command("revoke", wrap) is True
        wrapped = Panel.data["revoke"]
        assert wrapped is not original and Panel.meta["revoke"] is meta
        assert _compat.wrap_control_command("no-such-command", wrap) is False
    finally:
        Panel.data["revoke"] = original


def test_kombu_files_by_message_priority_and_polls_every_priority_step() -> None:
    put = inspect.getsource(kombu_redis.Channel._put)
    assert "pri = self._get_message_priority(message, reverse=False)" in put
    assert "key = self._q_for_pri(queue, pri)" in put
    restore = inspect.getsource(kombu_redis.Channel._do_restore_message)
    assert "pri = self._get_message_priority(payload, reverse=False)" in restore
    assert "for pri in self.priority_steps" in inspect.getsource(kombu_redis.Channel._brpop_start)
    assert "for pri in self.priority_steps" in inspect.getsource(kombu_redis.Channel._purge)
