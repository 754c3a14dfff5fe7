"""A corpus of poison messages pushed straight into a queue: each is dead-lettered (or
refused with a log line), no worker process exits, and the good tasks behind them run."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.reliability.conftest import Ledger, client_for
from tests.support.hardening_tasks import INCLUDE
from tests.support.procs import service_env, start_worker, wait_for
from tests.support.services import RedisDb


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _deep_json(depth: int) -> bytes:
    """A JSON text nested ``depth`` levels (too deep for Python to build as objects)."""
    return b"[[" + b"[" * depth + b"1" + b"]" * depth + b"], {}, {}]"


class Forge:
    """Builds raw queue payloads from a real message for ``tests.hardening.accept``."""

    def __init__(self, template: dict[str, Any], queue: str, key: str) -> None:
        self.template = template
        self.queue = queue
        self.key = key

    def message(
        self,
        task_id: str,
        *,
        body: Any = None,
        raw_body: bytes | None = None,
        headers: dict[str, Any] | None = None,
        drop_headers: tuple[str, ...] = (),
        edit: Callable[[dict[str, Any]], None] | None = None,
    ) -> bytes:
        message = json.loads(json.dumps(self.template))
        message["headers"].update(id=task_id, task="tests.hardening.accept")
        message["headers"].update(headers or {})
        for name in drop_headers:
            message["headers"].pop(name, None)
        message["properties"]["correlation_id"] = task_id
        message["properties"]["delivery_info"]["routing_key"] = self.queue
        if raw_body is None:
            raw_body = json.dumps([[self.key], {}, {}] if body is None else body).encode()
        message["body"] = base64.b64encode(raw_body).decode()
        if edit is not None:
            edit(message)
        return json.dumps(message).encode()


def _corpus(forge: Forge, u: str) -> dict[str, bytes]:
    """Name -> raw payload. Names are also the task ids where the message has one."""
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    key = forge.key

    def set_(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
        def edit(message: dict[str, Any]) -> None:
            target = message
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value

        return edit

    def drop(name: str) -> Callable[[dict[str, Any]], None]:
        return lambda message: message.pop(name, None)

    m = forge.message
    return {
        f"deep150-{u}": m(f"deep150-{u}", body=[[key, _nested(150)], {}, {}]),
        f"deep600-{u}": m(f"deep600-{u}", body=[[key, _nested(600)], {}, {}]),
        f"deep600-eta-{u}": m(f"deep600-eta-{u}", body=[[key, _nested(600)], {}, {}], headers={"eta": soon}),
        f"deep5000-{u}": m(f"deep5000-{u}", raw_body=_deep_json(5000)),
        f"args-dict-{u}": m(f"args-dict-{u}", body=[{"a": 1}, {}, {}]),
        f"kwargs-list-{u}": m(f"kwargs-list-{u}", body=[[key], [1, 2], {}]),
        f"body-string-{u}": m(f"body-string-{u}", body="just a string"),
        f"body-dict-{u}": m(f"body-dict-{u}", body={"args": 1}),
        f"body-short-{u}": m(f"body-short-{u}", body=[[key]]),
        f"body-null-{u}": m(f"body-null-{u}", raw_body=b"null"),
        f"no-task-{u}": m(f"no-task-{u}", drop_headers=("task",)),
        f"task-list-{u}": m(f"task-list-{u}", headers={"task": ["tests.hardening.accept"]}),
        f"task-int-{u}": m(f"task-int-{u}", headers={"task": 7}),
        "no-id": m("unused", drop_headers=("id",)),
        "id-int": m("unused", headers={"id": 12345}),
        "id-list": m("unused", headers={"id": ["a"]}),
        f"bad-eta-{u}": m(f"bad-eta-{u}", headers={"eta": "not a date"}),
        f"eta-int-{u}": m(f"eta-int-{u}", headers={"eta": 12}),
        f"bad-expires-{u}": m(f"bad-expires-{u}", headers={"expires": "2026-13-45T99:99:99"}),
        f"bad-timelimit-{u}": m(f"bad-timelimit-{u}", headers={"timelimit": "ab"}),
        f"bad-retries-{u}": m(f"bad-retries-{u}", headers={"retries": "many"}),
        "headers-string": m("unused", edit=set_(("headers",), "not a dict")),
        f"bad-base64-{u}": m(f"bad-base64-{u}", edit=set_(("body",), "!!! not base64 ~~")),
        f"body-not-utf8-{u}": m(f"body-not-utf8-{u}", raw_body=b"\xff\xfe[\x80]"),
        f"no-properties-{u}": m(f"no-properties-{u}", edit=drop("properties")),
        f"no-delivery-tag-{u}": m(
            f"no-delivery-tag-{u}", edit=lambda msg: msg["properties"].pop("delivery_tag")
        ),
        f"no-delivery-info-{u}": m(
            f"no-delivery-info-{u}", edit=lambda msg: msg["properties"].pop("delivery_info")
        ),
        "raw-not-utf8": b"\xff\xfe\x00garbage\x80",
        "raw-not-json": b"{this is not json",
        "raw-json-list": b"[1, 2, 3]",
        "raw-json-string": b'"a string"',
    }


def test_poison_corpus_is_dead_lettered_and_the_worker_keeps_consuming(
    redis_db: RedisDb, session_tmp: Path, unique: str
) -> None:
    queue, key = f"corpus-{unique}", f"corpus-runs-{unique}"
    client = client_for(redis_db.url)
    client.app.send_task("tests.hardening.accept", [key], queue=f"hold-{unique}", task_id=f"tpl-{unique}")
    (hold_key,) = [k for k in redis_db.client.keys(f"hold-{unique}*") if not k.startswith(b"_kombu")]
    template = json.loads(redis_db.client.rpop(hold_key))
    forge = Forge(template, queue, key)
    corpus = _corpus(forge, unique)
    # Odd but runnable: a 3 MB body, an unknown content-encoding (kombu ignores it).
    odd = {
        f"huge-{unique}": forge.message(f"huge-{unique}", body=[[key, "x" * (3 * 1024 * 1024)], {}, {}]),
        f"encoding-{unique}": forge.message(
            f"encoding-{unique}", edit=lambda msg: msg.update({"content-encoding": "rot13"})
        ),
    }
    for payload in [*corpus.values(), *odd.values()]:
        redis_db.client.lpush(queue, payload)
    ledger = Ledger("poison corpus")
    ledger.accepted = [client.submit("tests.hardening.accept", [key], queue=queue).id for _ in range(10)]
    env = service_env(
        redis_db,
        database_url=f"sqlite+aiosqlite:///{session_tmp}/corpus.db",
        extra={"CELERY_EXTRA_INCLUDE": INCLUDE},
    )
    worker = start_worker(f"corpus-{unique}", env, session_tmp / "corpus", queues=[queue], concurrency=1)
    try:
        main_pid = worker.pid
        started = time.monotonic()
        wait_for(
            lambda: set(ledger.runs(redis_db.client, key)) >= set(ledger.accepted) | set(odd),
            timeout=60,
            what="the good tasks behind the poison",
        )
        wait_for(
            lambda: client.dead_letters(limit=1000)[0] >= len(corpus),
            timeout=20,
            what=f"{len(corpus)} dead letters",
        )
        # The ETA'd unrunnable message comes from the timer, after the others.
        wait_for(lambda: _entry(client, f"deep600-eta-{unique}"), timeout=20, what="the ETA'd deep message")
        after = client.submit("tests.hardening.accept", [key], queue=queue).id
        wait_for(
            lambda: after in ledger.runs(redis_db.client, key), timeout=30, what="a task after the poison"
        )
        elapsed = time.monotonic() - started
        ping = client.app.control.inspect(
            timeout=2, destination=[f"corpus-{unique}@{os.uname().nodename}"]
        ).ping()
        assert worker.alive() and worker.pid == main_pid, worker.log()[-3000:]
        assert ping, "the worker does not answer ping"
    finally:
        exit_code = worker.stop()
    assert exit_code == 0, f"warm shutdown exited with {exit_code}"
    log = worker.log()
    assert "Unrecoverable error" not in log, log[-5000:]
    runs = ledger.runs(redis_db.client, key)
    total, entries = client.dead_letters(limit=1000)
    by_id = {e["task_id"]: e for e in entries}
    named = [name for name in corpus if name.endswith(unique)]
    missing = [name for name in named if name not in by_id]
    assert not missing, f"not dead-lettered: {missing}"
    assert total >= len(corpus), f"{total} dead letters for {len(corpus)} poison messages"
    ran = set(runs) & set(corpus)
    assert not ran, f"poison messages ran: {ran}"
    # Deeper than the worker runs: refused as invalid on every pool; so deep that
    # decoding it recursed too deep: unrunnable.
    entry = by_id[f"deep150-{unique}"]
    assert entry["reason"] == "invalid" and "nested more than 100 levels" in entry["error"]["message"], entry
    for name in (f"deep600-{unique}", f"deep600-eta-{unique}"):
        entry = by_id[name]
        assert (entry["reason"], entry["error"]["type"]) in (
            ("invalid", "InvalidTaskError"),
            ("unrunnable", "RecursionError"),
        ), entry
    assert not redis_db.client.hlen("tasksys:unacked"), redis_db.client.hgetall("tasksys:unacked")
    reasons: dict[str, int] = {}
    for entry in entries:
        reasons[entry["reason"]] = reasons.get(entry["reason"], 0) + 1
    figures = ledger.report(
        [r for r in runs if r in ledger.accepted],
        poison=len(corpus),
        dead_lettered=total,
        reasons=reasons,
        worker_restarts=0,
        seconds=round(elapsed, 1),
    )
    assert figures["lost"] == 0 and figures["duplicated"] == 0


def _entry(client: Any, task_id: str) -> dict[str, Any] | None:
    return next((e for e in client.dead_letters(limit=1000)[1] if e.get("task_id") == task_id), None)
