"""The worker's ``revoke`` command records ids in the shared store before Celery's own
handler runs, whichever tool sent it."""

from __future__ import annotations

from typing import Any

import redis

from pkg.celery_task.worker.revokes import RevokeStore, _durable_revoke


class _Store(RevokeStore):
    def __init__(self, fail: bool = False) -> None:
        self.added: list[list[str]] = []
        self.fail = fail

    def add(self, task_ids: Any) -> None:
        if self.fail:
            raise redis.ConnectionError("down")
        self.added.append(list(task_ids))


class _State:
    def __init__(self, store: Any) -> None:
        self.consumer = type("C", (), {"tasksys_revoke_store": store})()


def _handler(state: Any, task_id: Any, terminate: bool = False, signal: Any = None, **kw: Any) -> Any:
    return {"ok": task_id, "terminate": terminate}


def test_ids_are_recorded_then_celery_revokes() -> None:
    store = _Store()
    revoke = _durable_revoke(_handler)
    assert revoke(_State(store), task_id="a-1") == {"ok": "a-1", "terminate": False}
    assert revoke(_State(store), task_id=["b", "c", 7, "", "x" * 300], terminate=True)["terminate"]
    assert store.added == [["a-1"], ["b", "c"]]


def test_a_store_error_still_revokes_in_memory_and_no_store_is_a_pass_through() -> None:
    revoke = _durable_revoke(_handler)
    assert revoke(_State(_Store(fail=True)), task_id="a")["ok"] == "a"
    assert revoke(object(), task_id="b")["ok"] == "b"
