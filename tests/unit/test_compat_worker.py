"""Pins every private Celery, kombu and billiard name the sections "Worker: consumer,
transport, pool" and "Results backend" of ``pkg.celery_task._compat`` rely on (and the
private methods our subclasses override), so an upgrade that renames or changes one
fails here, naming it and the compat function to review, rather than in a worker."""

from __future__ import annotations

import inspect
import uuid
from collections import OrderedDict
from typing import Any

import pytest
from billiard.pool import ApplyResult
from celery import Celery, bootsteps
from celery.backends.base import Backend, BaseBackend, KeyValueStoreBackend
from celery.backends.redis import RedisBackend
from celery.events.dispatcher import EventDispatcher
from celery.utils.collections import LimitedSet
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.worker import WorkController
from kombu.asynchronous.timer import Timer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual as kombu_virtual

from pkg.celery_task import _compat
from pkg.celery_task.worker.backend import TimedRedisBackend
from pkg.celery_task.worker.consumer import Consumer
from pkg.celery_task.worker.events import EventBatching
from pkg.celery_task.worker.heartbeat import UnackedHeartbeat
from pkg.celery_task.worker.qos import ScriptedQoS
from pkg.celery_task.worker.revokes import DurableRevokes
from pkg.celery_task.worker.timers import TimerCompaction
from pkg.celery_task.worker.transport import PriorityRedisChannel


def _params(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _source(function: Any) -> str:
    return inspect.getsource(function)


#: Every private name the two sections use that lives on a class or module (instance
#: attributes are pinned by the source checks below): (owner, name, what to review).
PRIVATE_NAMES: list[tuple[Any, str, str]] = [
    (kombu_redis.Channel, "_brpop_read", "_compat.brpop_reply/brpop_done, PriorityRedisChannel._brpop_read"),
    (kombu_redis.Channel, "_do_restore_message", "_compat.restore_targets"),
    (kombu_redis.Channel, "_get_message_priority", "_compat.stock_message_priority"),
    (kombu_redis.Channel, "_create_client", "_compat.channel_client"),
    (kombu_redis.Channel, "_pool", "_compat.channel_pool"),
    (kombu_redis.QoS, "_remove_from_indices", "ScriptedQoS (worker.qos)"),
    (kombu_virtual.Transport, "_deliver", "_compat.deliver"),
    (kombu_virtual.Message, "__init__", "_compat.raw_payload (Message._raw)"),
    (kombu_virtual.QoS, "append", "_compat.hold_in_memory"),
    (kombu_virtual.QoS, "ack", "_compat.release_in_memory"),
    (Timer, "__len__", "_compat.compact_timer (Timer._queue)"),
    (WorkController, "_process_task", "_compat.guard_process_task"),
    (WorkController, "_process_task_sem", "_compat.guard_process_task"),
    (ApplyResult, "__init__", "_compat.forget_unsent_job (pool._cache)"),
    (worker_state, "revoked", "_compat.set_revoke_expiry/merge_revoked"),
    (worker_state, "merge_revoked", "_compat.merge_revoked"),
    (worker_state, "task_ready", "_compat.task_ready"),
    (CeleryConsumer, "_flush_events", "EventBatching (worker.events)"),
    (BaseBackend, "_get_result_meta", "_compat.celery_result_meta, TimedRedisBackend._get_result_meta"),
    (KeyValueStoreBackend, "_store_result", "_compat.celery_store_result, TimedRedisBackend._store_result"),
    (RedisBackend, "_MAX_STR_VALUE_SIZE", "_compat.max_result_size"),
    (RedisBackend, "_transport_options", "_compat.set_backend_transport_options"),
    (RedisBackend, "retry_policy", "_compat.set_backend_transport_options"),
]


@pytest.mark.parametrize(
    ("owner", "name", "review"), PRIVATE_NAMES, ids=[f"{o.__name__}.{n}" for o, n, _ in PRIVATE_NAMES]
)
def test_every_private_name_still_exists(owner: Any, name: str, review: str) -> None:
    where = owner.__name__ if inspect.ismodule(owner) else f"{owner.__module__}.{owner.__qualname__}"
    assert hasattr(owner, name), f"{where}.{name} is gone (renamed or moved); review {review}"


# -- Worker: consumer, transport, pool ------------------------------------------------


def test_kombu_brpop_read_still_has_the_steps_we_reproduce() -> None:
    source = _source(kombu_redis.Channel._brpop_read)
    missing = [step for step in _compat.KOMBU_BRPOP_READ_STEPS if step not in source]
    assert not missing, f"kombu's _brpop_read changed; review _compat.brpop_reply/brpop_done: {missing}"
    assert PriorityRedisChannel._brpop_read is not kombu_redis.Channel._brpop_read
    for name in ("_queue_cycle", "_in_poll", "_flush_brpop_reauth", "sep"):
        assert hasattr(kombu_redis.Channel, name) or name in inspect.getsource(kombu_redis.Channel), (
            f"kombu's Redis Channel lost {name}; review _compat.brpop_reply/brpop_done"
        )


def test_kombu_brpop_start_still_has_the_steps_our_fetch_reproduces() -> None:
    source = _source(kombu_redis.Channel._brpop_start)
    missing = [step for step in _compat.KOMBU_BRPOP_START_STEPS if step not in source]
    assert not missing, f"kombu's _brpop_start changed; review _compat.poll_queue_keys and friends: {missing}"
    assert _params(kombu_redis.Channel._brpop_start) == ["self", "timeout"], (
        "kombu's Channel._brpop_start(timeout) changed; review PriorityRedisChannel._brpop_start"
    )
    poller = _source(kombu_redis.MultiChannelPoller._register_BRPOP)
    assert "channel._brpop_start()" in poller, (
        "kombu's poller no longer polls through _brpop_start; PriorityRedisChannel's fetch would be dead"
    )
    virtual = kombu_virtual.Channel.basic_consume
    assert _params(virtual)[:5] == ["self", "queue", "no_ack", "callback", "consumer_tag"], (
        "kombu's basic_consume(queue, no_ack, callback, consumer_tag) changed; review PriorityRedisChannel"
    )


def test_kombu_polls_brpop_through_the_method_we_override() -> None:
    assert _params(kombu_redis.Channel._brpop_read) == ["self", "options"], (
        "kombu's Channel._brpop_read(**options) changed; review PriorityRedisChannel._brpop_read"
    )
    assert "'BRPOP': self._brpop_read" in _source(kombu_redis.Channel.__init__), (
        "kombu's Redis Channel no longer dispatches BRPOP replies to _brpop_read; "
        "PriorityRedisChannel._brpop_read (and _compat.brpop_reply/brpop_done) would be dead"
    )


def test_kombu_transport_delivers_read_messages_through_deliver() -> None:
    assert _params(kombu_virtual.Transport._deliver) == ["self", "message", "queue"], (
        "kombu's virtual Transport._deliver(message, queue) moved; review _compat.deliver"
    )
    assert "self.connection._deliver(" in _source(kombu_redis.Channel._brpop_read), (
        "kombu's _brpop_read no longer hands messages to Transport._deliver; review _compat.deliver"
    )


def test_celery_work_controller_hand_off_names() -> None:
    source = _source(WorkController._process_task_sem)
    assert "self._process_task" in source, (
        "WorkController._process_task_sem must look _process_task up per call; "
        "review _compat.guard_process_task"
    )
    assert "self._quick_release()" in _source(WorkController._process_task), (
        "WorkController._process_task no longer releases with _quick_release; "
        "review _compat.guard_process_task"
    )


def test_billiard_apply_result_registers_in_the_cache_before_sending() -> None:
    source = _source(ApplyResult.__init__)
    assert "cache[self._job] = self" in source, (
        "billiard's ApplyResult no longer registers in the pool's _cache; review _compat.forget_unsent_job"
    )
    assert "self._accepted = False" in source, (
        "billiard's ApplyResult lost _accepted; review _compat.forget_unsent_job"
    )


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
    source = _source(kombu_redis.Channel._do_restore_message)
    assert "(pipe.lpush if leftmost else pipe.rpush)(" in source, (
        "kombu's Channel._do_restore_message no longer pushes through its pipe; "
        "review _compat.restore_targets"
    )
    assert "self._q_for_pri(queue, pri), dumps(payload)" in source, (
        "kombu's Channel._do_restore_message files differently; review _compat.restore_targets"
    )


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

    assert "self.resolve_aliases.get(" in _source(Connection._info), (
        "kombu's Connection._info no longer reads resolve_aliases; review _compat.report_transport_as"
    )
    assert "fields = self.info()" in _source(Connection.as_uri), (
        "kombu's Connection.as_uri no longer reads info(); review _compat.report_transport_as"
    )
    assert Connection.resolve_aliases is kombu_connection.resolve_aliases, (
        "kombu.connection.resolve_aliases moved; review _compat.report_transport_as"
    )


def test_celery_worker_mailbox_dispatches_from_the_panel_registry() -> None:
    from celery.worker import pidbox
    from celery.worker.control import Panel
    from kombu.pidbox import Node

    assert "handlers=control.Panel.data" in _source(pidbox.Pidbox.__init__), (
        "Celery's worker mailbox no longer dispatches from Panel.data; review _compat.wrap_control_command"
    )
    assert "self.handlers[method](self.state, **arguments)" in _source(Node.handle), (
        "kombu's pidbox Node calls handlers differently; review _compat.wrap_control_command"
    )
    assert Panel.meta["revoke"].variadic == "task_id"
    assert _params(Panel.data["revoke"])[:2] == ["state", "task_id"], (
        "Celery's revoke command changed its signature; review _compat.wrap_control_command"
    )


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
    put = _source(kombu_redis.Channel._put)
    assert "pri = self._get_message_priority(message, reverse=False)" in put, (
        "kombu's Channel._put no longer files through _get_message_priority; "
        "review PriorityRedisChannel._get_message_priority and _compat.stock_message_priority"
    )
    assert "key = self._q_for_pri(queue, pri)" in put
    restore = _source(kombu_redis.Channel._do_restore_message)
    assert "pri = self._get_message_priority(payload, reverse=False)" in restore, (
        "kombu's restore no longer files through _get_message_priority; review _compat.stock_message_priority"
    )
    assert "for pri in self.priority_steps" in _source(kombu_redis.Channel._brpop_start)
    assert "for pri in self.priority_steps" in _source(kombu_redis.Channel._purge)


def test_stock_message_priority_is_kombus_mapping() -> None:
    assert _params(kombu_redis.Channel._get_message_priority) == ["self", "message", "reverse"], (
        "kombu's Channel._get_message_priority(message, reverse) changed; "
        "review _compat.stock_message_priority"
    )
    channel = type("Channel", (), {"max_priority": 9, "min_priority": 0, "default_priority": 0})()
    message = {"properties": {"priority": 7}}
    assert _compat.stock_message_priority(channel, message) == 7, "review _compat.stock_message_priority"
    assert _compat.stock_message_priority(channel, message, reverse=True) == 2, (
        "kombu's reverse priority mapping changed; review _compat.stock_message_priority"
    )


class _Channel:
    """Just enough of a channel for kombu's virtual QoS and Message."""

    do_restore = False

    def decode_body(self, body: Any, encoding: Any = None) -> Any:
        return body


def test_raw_payload_is_the_payload_kombu_read_and_stores_in_its_unacked_hash() -> None:
    payload = {"body": "", "properties": {"delivery_tag": "t1", "delivery_info": {}}, "headers": {}}
    message = kombu_virtual.Message(payload, channel=_Channel())
    assert _compat.raw_payload(message) is payload, (
        "kombu's virtual Message no longer keeps its payload in _raw; review _compat.raw_payload"
    )
    assert "dumps([message._raw, EX, RK])" in _source(kombu_redis.QoS.append), (
        "kombu's Redis QoS stores another payload in its unacked hash; review _compat.raw_payload "
        "and ScriptedQoS.append (ours must store what kombu's restore reads)"
    )


def test_hold_and_release_in_memory_are_kombus_virtual_qos_bookkeeping() -> None:
    assert kombu_redis.QoS.__mro__[1] is kombu_virtual.QoS, (
        "kombu's Redis QoS no longer derives from the virtual QoS directly; "
        "review _compat.hold_in_memory/release_in_memory"
    )
    qos = kombu_virtual.QoS(_Channel(), prefetch_count=1)
    message = object()
    _compat.hold_in_memory(qos, message, "t1")
    assert _compat.held_tags(qos) == ["t1"], "kombu's QoS._delivered changed; review _compat.held_tags"
    assert _compat.held_message(qos, "t1") is message, (
        "kombu's QoS._delivered changed; review _compat.held_message"
    )
    assert not qos.can_consume(), "review _compat.hold_in_memory (prefetch no longer counted)"
    _compat.release_in_memory(qos, "t1")
    assert qos.can_consume(), "kombu's QoS.ack no longer frees the slot; review _compat.release_in_memory"
    _compat.hold_in_memory(qos, message, "t2")  # kombu drops acked tags at the next delivery
    assert _compat.held_tags(qos) == ["t2"], "kombu's QoS bookkeeping changed; review _compat.held_tags"
    assert isinstance(qos._delivered, OrderedDict | dict), "review _compat.held_tags/held_message"


def test_kombu_redis_qos_adds_only_the_redis_writes_we_do_in_scripts() -> None:
    append, ack, reject = (
        _source(f) for f in (kombu_redis.QoS.append, kombu_redis.QoS.ack, kombu_redis.QoS.reject)
    )
    for needle in ("pipe.zadd(self.unacked_index_key", ".hset(self.unacked_key, delivery_tag,"):
        assert needle in append, f"kombu's Redis QoS.append changed ({needle}); review ScriptedQoS.append"
    assert "super().append(message, delivery_tag)" in append, (
        "kombu's Redis QoS.append does more than its Redis writes + the virtual append; "
        "review _compat.hold_in_memory"
    )
    assert (
        "self._remove_from_indices(delivery_tag).execute()" in ack and "super().ack(delivery_tag)" in ack
    ), "kombu's Redis QoS.ack changed; review ScriptedQoS.ack and _compat.release_in_memory"
    assert (
        "self.restore_by_tag(delivery_tag, leftmost=True)" in reject and "super().ack(delivery_tag)" in reject
    ), "kombu's Redis QoS.reject changed; review ScriptedQoS.reject and _compat.release_in_memory"
    remove = _source(kombu_redis.QoS._remove_from_indices)
    assert (
        "zrem(self.unacked_index_key, delivery_tag)" in remove
        and "hdel(self.unacked_key, delivery_tag)" in remove
    ), "kombu's unacked keys changed; review the scripts in worker.qos"


def test_channel_client_and_pool_are_kombus() -> None:
    assert "asynchronous" in _params(kombu_redis.Channel._create_client), (
        "kombu's Channel._create_client(asynchronous=) changed; review _compat.channel_client"
    )
    assert "'connection_pool': self.pool" in _source(kombu_redis.Channel._create_client), (
        "kombu's Channel._create_client no longer uses the channel's pool; review _compat.channel_client"
    )
    assert "if self._pool is None:" in _source(kombu_redis.Channel.pool.fget), (
        "kombu's Channel.pool no longer caches its pool in _pool; review _compat.channel_pool"
    )
    assert kombu_redis.Channel._pool is None, (
        "kombu's Channel._pool default changed; review _compat.channel_pool"
    )


def test_celery_worker_state_revoke_list_and_task_ready() -> None:
    assert isinstance(worker_state.revoked, LimitedSet), (
        "celery.worker.state.revoked is no longer a LimitedSet; "
        "review _compat.set_revoke_expiry/merge_revoked"
    )
    assert "self.expires" in _source(LimitedSet.purge), (
        "Celery's LimitedSet no longer expires by its expires attribute; review _compat.set_revoke_expiry"
    )
    before = worker_state.revoked.expires
    task_id = f"pin-{uuid.uuid4()}"
    try:
        _compat.set_revoke_expiry(123.0)
        assert worker_state.revoked.expires == 123.0, "review _compat.set_revoke_expiry"
        _compat.merge_revoked(iter([task_id]))
        assert task_id in worker_state.revoked, (
            "celery.worker.state.merge_revoked changed; review _compat.merge_revoked"
        )
    finally:
        worker_state.revoked.expires = before
        worker_state.revoked.discard(task_id)
    assert _params(worker_state.task_ready)[0] == "request", (
        "celery.worker.state.task_ready(request) changed; review _compat.task_ready"
    )


def test_compact_timer_drops_only_cancelled_entries_of_kombus_heap() -> None:
    timer = Timer()
    entries = [timer.call_after(100 + n, lambda: None) for n in range(4)]
    entries[1].cancel()
    entries[3].cancel()
    assert isinstance(timer._queue, list), "kombu's Timer heap _queue changed; review _compat.compact_timer"
    assert len(timer) == 4
    assert _compat.compact_timer(timer) == 2, (
        "kombu's Timer heap entries no longer carry .entry.canceled; review _compat.compact_timer"
    )
    assert [item.entry for item in timer.queue] == [entries[0], entries[2]], "review _compat.compact_timer"
    assert _compat.compact_timer(timer) == 0


def test_celery_event_dispatcher_calls_on_send_buffered() -> None:
    source = _source(EventDispatcher.send)
    assert "self.on_send_buffered()" in source and "self.buffer_limit" in source, (
        "Celery's EventDispatcher no longer calls on_send_buffered / checks buffer_limit; "
        "EventBatching (worker.events) would stop flushing: review it"
    )
    assert "self.event_dispatcher.flush()" in _source(CeleryConsumer._flush_events), (
        "Celery's Consumer._flush_events does more than dispatcher.flush(); review EventBatching"
    )


# -- Results backend -------------------------------------------------------------------


def test_celery_backend_result_meta_and_store_result() -> None:
    assert _params(BaseBackend._get_result_meta) == [
        "self",
        "result",
        "state",
        "traceback",
        "request",
        "format_date",
        "encode",
    ], "Celery's Backend._get_result_meta changed its signature; review _compat.celery_result_meta"
    assert _params(KeyValueStoreBackend._store_result) == [
        "self",
        "task_id",
        "result",
        "state",
        "traceback",
        "request",
        "kwargs",
    ], "Celery's KeyValueStoreBackend._store_result changed its signature; review _compat.celery_store_result"
    assert "self._store_result" in _source(Backend.store_result), (
        "Celery's Backend.store_result no longer calls _store_result; TimedRedisBackend's override is dead: "
        "review _compat.celery_store_result"
    )
    assert "self._get_result_meta(" in _source(KeyValueStoreBackend._store_result), (
        "Celery's _store_result no longer builds its meta with _get_result_meta; "
        "review _compat.celery_result_meta"
    )
    for ours, theirs in (
        (TimedRedisBackend._get_result_meta, BaseBackend._get_result_meta),
        (TimedRedisBackend._store_result, KeyValueStoreBackend._store_result),
    ):
        assert _params(ours) == _params(theirs), f"{ours.__qualname__} no longer matches Celery's"


def test_max_result_size_is_celerys_redis_limit() -> None:
    assert isinstance(RedisBackend._MAX_STR_VALUE_SIZE, int), (
        "Celery's RedisBackend._MAX_STR_VALUE_SIZE moved; review _compat.max_result_size"
    )
    assert _compat.max_result_size(RedisBackend) == RedisBackend._MAX_STR_VALUE_SIZE


def test_set_backend_transport_options_changes_the_retry_policy() -> None:
    app = Celery("pin-backend", set_as_current=False)
    app.conf.result_backend_transport_options = {"retry_policy": {"max_retries": 3}}
    backend = RedisBackend(app=app, url="redis://127.0.0.1:1/0")
    assert backend.retry_policy["max_retries"] == 3, (
        "Celery's RedisBackend no longer reads retry_policy from _transport_options; "
        "review _compat.set_backend_transport_options"
    )
    assert _compat.set_backend_transport_options(backend, {"retry_policy": {"max_retries": 60}}) is True
    assert backend.retry_policy["max_retries"] == 60, (
        "Celery's RedisBackend caches retry_policy elsewhere; review _compat.set_backend_transport_options"
    )
    assert _compat.set_backend_transport_options(object(), {}) is False


# -- Our subclasses: overrides still exist upstream, helpers shadow nothing -------------

SUBCLASSES: list[tuple[type, type, set[str]]] = [
    (PriorityRedisChannel, kombu_redis.Channel, {"_brpop_read", "_brpop_start", "_get_message_priority"}),
    (ScriptedQoS, kombu_redis.QoS, set()),
    (TimedRedisBackend, RedisBackend, {"_get_result_meta", "_store_result"}),
    (Consumer, CeleryConsumer, set()),
    (UnackedHeartbeat, bootsteps.StartStopStep, set()),
    (DurableRevokes, bootsteps.StartStopStep, set()),
    (EventBatching, bootsteps.StartStopStep, set()),
    (TimerCompaction, bootsteps.StartStopStep, set()),
]


@pytest.mark.parametrize(("ours", "base", "overrides"), SUBCLASSES, ids=lambda v: getattr(v, "__name__", ""))
def test_private_overrides_exist_upstream_and_our_helpers_shadow_nothing(
    ours: type, base: type, overrides: set[str]
) -> None:
    own = {name for name in vars(ours) if name.startswith("_") and not name.startswith("__")}
    missing = sorted(name for name in overrides if not hasattr(base, name))
    assert not missing, (
        f"{base.__qualname__} no longer has {missing}: {ours.__qualname__}'s overrides are dead; "
        "review them and the _compat functions they call"
    )
    shadowed = sorted(name for name in own - overrides if hasattr(base, name))
    assert not shadowed, (
        f"{base.__qualname__} now has {shadowed}, which {ours.__qualname__} overrides by accident; "
        "rename ours"
    )
