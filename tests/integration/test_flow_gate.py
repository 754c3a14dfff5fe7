"""The worker's start-permit gate against a real Redis, driven directly: which requests
it admits, how long it holds the others, that held ones keep the consumer fetching,
leases renewed and released, and a Redis that does not answer holds tasks instead of
dropping them or letting them through."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from pkg.celery_task import CeleryClient
from pkg.celery_task._flow import FLOW_KEY_HEADER, WINDOW_MARGIN, FlowKeys
from pkg.celery_task.worker.flow import REDIS_RETRY, FlowGate
from tests.support.services import RedisDb, free_port, require_redis, reserve_redis_db

pytestmark = pytest.mark.integration


@dataclass
class _Qos:
    extra: int = 0

    def increment_eventually(self) -> None:
        self.extra += 1

    def decrement_eventually(self) -> None:
        self.extra -= 1


@dataclass
class _Timer:
    calls: list[tuple[float, Any]] = field(default_factory=list)
    ticks: list[Any] = field(default_factory=list)

    def call_after(self, delay: float, fun: Any, args: tuple[Any, ...]) -> None:
        if args:
            self.calls.append((delay, args[0]))  # a held request, dispatched again
        else:
            self.ticks.append(fun)  # the gate's own re-stamp run


@dataclass
class _Consumer:
    qos: _Qos = field(default_factory=_Qos)
    timer: _Timer = field(default_factory=_Timer)
    task_consumer: Any = None

    def on_task_request(self, request: Any) -> None:
        raise AssertionError("the gate dispatches through the handler it was given")


@dataclass
class _Message:
    delivery_tag: str
    headers: dict[str, Any]
    channel: Any = None


@dataclass
class _Request:
    name: str
    id: str
    message: _Message
    ignore_result: bool = True
    time_start: float | None = None  # set by Celery when the pool starts the task

    def revoked(self) -> bool:
        return False


def _request(name: str, n: int, flow_key: str | None = None) -> _Request:
    headers = {FLOW_KEY_HEADER: flow_key} if flow_key else {}
    return _Request(name, f"{name}-{n}", _Message(f"tag-{name}-{n}", headers))


@pytest.fixture(scope="module")
def flow_db() -> Iterator[RedisDb]:
    """A Redis database of the module's own."""
    require_redis()
    db = reserve_redis_db()
    yield db
    db.release()


@pytest.fixture(scope="module")
def flow_client(flow_db: RedisDb) -> Iterator[CeleryClient]:
    """A client whose app has three tasks: rated, slotted and free."""
    client = CeleryClient("flow-gate", flow_db.url, flow_db.url)

    @client.app.task(name="gate.rated", global_rate_limit="3/s", shared=False)
    def rated() -> None: ...

    @client.app.task(name="gate.slots", concurrency_limit=2, concurrency_limit_per_key=1, shared=False)
    def slots() -> None: ...

    @client.app.task(name="gate.free", shared=False)
    def free() -> None: ...

    yield client
    client.close()


@pytest.fixture()
def gate(flow_db: RedisDb, flow_client: CeleryClient) -> Iterator[FlowGate]:
    flow_db.flush()
    gate = FlowGate(flow_client.app, _Consumer())
    gate.dispatch_with(lambda request: None)
    yield gate
    flow_db.flush()


def test_rate_admits_the_limit_then_holds_until_the_oldest_leaves_the_window(gate: FlowGate) -> None:
    consumer: Any = gate.consumer
    began = time.time()
    started = [_request("gate.rated", n) for n in range(3)]
    assert [gate.admit(r) for r in started] == [True, True, True]
    for request in started:
        request.time_start = time.time()  # the pool started them
    gate.restamp()
    held = _request("gate.rated", 3)
    assert gate.admit(held) is False
    ((delay, again),) = consumer.timer.calls
    assert again is held and 0.9 <= delay <= 1.01 + WINDOW_MARGIN + (time.time() - began), delay
    assert consumer.qos.extra == 1, "the consumer fetches another message meanwhile"
    assert gate.admit(held) is False, "still inside the window"
    assert consumer.qos.extra == 1, "counted once per waiting task"
    time.sleep(delay + 0.01)
    assert gate.admit(held) is True
    assert consumer.qos.extra == 0
    throttled = gate._redis.hgetall(FlowKeys("tasksys:").throttled)
    assert throttled == {"gate.rated": "1"}


def test_unlimited_tasks_touch_no_redis_key(gate: FlowGate) -> None:
    assert all(gate.admit(_request("gate.free", n)) for n in range(50))
    assert not list(gate._redis.scan_iter("tasksys:flow:*"))


def test_slots_are_leases_released_on_settle_and_renewed(gate: FlowGate) -> None:
    consumer: Any = gate.consumer
    a1, a2, b1, c1 = (_request("gate.slots", n, k) for n, k in enumerate(["a", "a", "b", "c"]))
    assert gate.admit(a1) is True
    assert gate.admit(a2) is False, "one per key"
    assert gate.admit(b1) is True
    assert gate.admit(c1) is False, "two in all"
    keys = FlowKeys("tasksys:")
    slots = gate._redis.zrange(keys.slots("gate.slots"), 0, -1, withscores=True)
    assert {member for member, _ in slots} == {a1.id, b1.id}
    gate.renew(time.time() + 100)
    assert all(
        score > time.time() + 100
        for _, score in gate._redis.zrange(keys.slots("gate.slots"), 0, -1, withscores=True)
    )
    gate.settled(a1.message.delivery_tag)
    assert gate._redis.zrange(keys.slots("gate.slots"), 0, -1) == [b1.id]
    assert gate._redis.zrange(keys.slots("gate.slots", "a"), 0, -1) == []
    assert gate.admit(a2) is True
    assert consumer.qos.extra == 1, "c1 still waits"
    gate.release_all()
    assert gate._redis.zcard(keys.slots("gate.slots")) == 0


def test_an_expired_lease_frees_its_slot(gate: FlowGate) -> None:
    keys = FlowKeys("tasksys:")
    first, second = _request("gate.slots", 1, "k"), _request("gate.slots", 2, "k")
    assert gate.admit(first) is True
    gate._redis.zadd(keys.slots("gate.slots", "k"), {first.id: time.time() - 1})  # its worker died
    assert gate.admit(second) is True


def test_runtime_override_replaces_the_declared_limits(gate: FlowGate, flow_client: CeleryClient) -> None:
    flow_client.set_limits("gate.free", concurrency_limit=1)
    gate._refreshed = float("-inf")  # as a second later
    assert gate.admit(_request("gate.free", 1)) is True
    assert gate.admit(_request("gate.free", 2)) is False
    flow_client.reset_limits("gate.free")
    gate._refreshed = float("-inf")
    assert gate.admit(_request("gate.free", 3)) is True


def test_a_redis_that_does_not_answer_holds_limited_tasks(flow_client: CeleryClient) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    client = CeleryClient("flow-gate-dead", dead, dead)
    client.app.tasks.register(flow_client.app.tasks["gate.rated"])
    client.app.tasks.register(flow_client.app.tasks["gate.free"])
    try:
        gate = FlowGate(client.app, _Consumer())
        gate.dispatch_with(lambda request: None)
        request = _request("gate.rated", 1)
        assert gate.admit(request) is False
        consumer: Any = gate.consumer
        assert consumer.timer.calls == [(REDIS_RETRY, request)]
        assert consumer.qos.extra == 1
        assert gate.admit(_request("gate.free", 1)) is True, "unlimited tasks go on"
    finally:
        client.close()


def test_past_max_held_the_consumer_fetches_no_more(gate: FlowGate, monkeypatch: pytest.MonkeyPatch) -> None:
    from pkg.celery_task.worker import flow

    monkeypatch.setattr(flow, "MAX_HELD", 2)
    consumer: Any = gate.consumer
    requests = [_request("gate.slots", n, "same") for n in range(5)]
    assert [gate.admit(r) for r in requests] == [True, False, False, False, False]
    assert consumer.qos.extra == 2, "two replaced, the rest keep their prefetch slots"
    gate.settled(requests[0].message.delivery_tag)
    assert gate.admit(requests[1]) is True and consumer.qos.extra == 1
    assert gate.admit(requests[4]) is False
    gate.settled(requests[1].message.delivery_tag)
    assert gate.admit(requests[4]) is True and consumer.qos.extra == 1, "an unreplaced one gives back nothing"


def test_an_ack_takes_the_leases_to_drop_with_it(gate: FlowGate) -> None:
    keys = FlowKeys("tasksys:")
    request = _request("gate.slots", 1, "k")
    assert gate.admit(request) is True
    taken = gate.take_for_ack(request.message.delivery_tag)
    assert sorted(taken) == sorted(
        [(keys.slots("gate.slots"), request.id), (keys.slots("gate.slots", "k"), request.id)]
    )
    assert gate.take_for_ack(request.message.delivery_tag) == [], "taken once"
    assert gate._redis.zcard(keys.slots("gate.slots")) == 1, "the ack's own script drops them"


def test_a_start_counts_in_every_window_until_restamped_with_its_real_start(gate: FlowGate) -> None:
    consumer: Any = gate.consumer
    log = FlowKeys("tasksys:").rate("gate.rated")
    permitted = [_request("gate.rated", n) for n in range(3)]
    channel = SimpleNamespace(qos=SimpleNamespace(lease_holders=[]))
    permitted[2].message.channel = channel
    assert all(gate.admit(r) for r in permitted)
    assert consumer.timer.ticks, "a re-stamp run is scheduled"
    assert channel.qos.lease_holders == [gate], "the QoS tells it of acks and rejects"
    pending = dict(gate._redis.zrange(log, 0, -1, withscores=True))
    assert len(pending) == 3 and min(pending.values()) > time.time() + 5, "pending: in every window"
    late = _request("gate.rated", 3)
    assert gate.admit(late) is False
    ((delay, _),) = consumer.timer.calls
    assert delay < 0.2, "no start time is known yet: it asks again soon"
    # Started, much later than permitted (a loaded pool), and one never started at all.
    permitted[0].time_start, permitted[1].time_start = time.time() - 0.5, time.time()
    gate.restamp()
    stamped = dict(gate._redis.zrange(log, 0, -1, withscores=True))
    assert sorted(stamped.values())[:2] == sorted([permitted[0].time_start, permitted[1].time_start])
    assert gate.take_for_ack(permitted[2].message.delivery_tag) == [
        (log, next(m for m in stamped if m.startswith(permitted[2].id)))
    ], "a start that never happened leaves the log with its ack"
    assert gate.take_for_ack(permitted[0].message.delivery_tag) == [], "a real start stays in the log"
