"""Deduplicated submits, pure logic: key and TTL rules, the header added to a message,
the release script's arguments."""

from __future__ import annotations

import json
import math

import pytest

from pkg.celery_task import DEFAULT_DEDUPE_TTL, MAX_DEDUPE_TTL, InvalidRequestError
from pkg.celery_task._dedupe import (
    DEDUPE_HEADER,
    Dedupe,
    SubmittedId,
    _add_header,
    check_dedupe,
    refuse_dedupe_options,
    release_script_args,
)
from pkg.celery_task._request import TaskRequest, json_text
from pkg.celery_task.worker.dedupe import dedupe_key_of


def test_no_key_means_no_dedupe_and_a_ttl_alone_is_refused() -> None:
    assert check_dedupe(None, None) is None
    with pytest.raises(InvalidRequestError) as info:
        check_dedupe(None, 60)
    assert info.value.field == "dedupe_ttl"


def test_default_and_given_ttls() -> None:
    assert check_dedupe("report:42", None) == Dedupe("report:42", DEFAULT_DEDUPE_TTL)
    assert check_dedupe("report:42", 1) == Dedupe("report:42", 1.0)
    assert check_dedupe("report:42", 2.5) == Dedupe("report:42", 2.5)
    assert check_dedupe("report:42", MAX_DEDUPE_TTL) == Dedupe("report:42", MAX_DEDUPE_TTL)
    assert Dedupe("k", 2.5).ttl_ms == 2500


@pytest.mark.parametrize(
    "key",
    [
        "",
        " ",
        "x" * 201,
        ":leading-colon",
        " padded",
        "padded ",
        "a\x00b",
        "a\nb",
        "a\x7fb",
        "tab\there",
        "é",
        42,
        b"bytes",
        ["list"],
    ],
)
def test_hostile_keys_are_refused_naming_the_field(key: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_dedupe(key, None)
    assert info.value.field == "dedupe_key"


@pytest.mark.parametrize("key", ["report:42", "report:*", "a/b,c+d", "x" * 200, "inner space", "_x"])
def test_accepted_keys(key: str) -> None:
    dedupe = check_dedupe(key, None)
    assert dedupe is not None and dedupe.key == key


@pytest.mark.parametrize("ttl", [0, 0.999, -1, MAX_DEDUPE_TTL + 1, math.inf, math.nan, True, "60", 10**400])
def test_bad_ttls_are_refused(ttl: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        check_dedupe("k", ttl)
    assert info.value.field == "dedupe_ttl"


def _message(body: str = "eyJ4IjogMX0=", **headers: object) -> str:
    return json_text(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": "t", "id": "abc", **headers},
            "properties": {"correlation_id": "abc", "delivery_info": {"exchange": "", "routing_key": "q"}},
        }
    )


@pytest.mark.parametrize("key", ["report:42", 'quote"in', "back\\slash", "x" * 200])
def test_header_is_added_to_the_message_headers_only(key: str) -> None:
    payload = _message(argsrepr='("headers": {"x": 1})')
    changed = json.loads(_add_header(payload, key))
    original = json.loads(payload)
    assert changed["headers"] == {**original["headers"], DEDUPE_HEADER: key}
    assert {k: v for k, v in changed.items() if k != "headers"} == {
        k: v for k, v in original.items() if k != "headers"
    }


def test_header_insertion_refuses_what_is_not_a_task_message() -> None:
    with pytest.raises(ValueError):
        _add_header(json_text({"body": "x", "headers": {}}), "k")
    with pytest.raises(ValueError):
        _add_header(json_text({"body": "x"}), "k")


def test_submitted_id_is_a_str_with_a_flag() -> None:
    fresh, existing = SubmittedId("a"), SubmittedId("b", deduplicated=True)
    assert fresh == "a" and isinstance(fresh, str) and fresh.deduplicated is False
    assert existing == "b" and existing.deduplicated is True
    assert json.loads(json.dumps({"id": existing})) == {"id": "b"}


def test_bulk_paths_refuse_dedupe_options() -> None:
    refuse_dedupe_options([TaskRequest("t")], "submit_many")
    for name in ("dedupe_key", "dedupe_ttl"):
        with pytest.raises(InvalidRequestError) as info:
            refuse_dedupe_options([TaskRequest("t", options={name: "k"})], "submit_many")
        assert info.value.field == name and "submit_many" in str(info.value)


def test_release_arguments_name_the_key_or_let_the_script_look_it_up() -> None:
    assert release_script_args("tasksys:", "id-1", "report:42") == (
        ["tasksys:dedupe-task:id-1", "tasksys:dedupe:report:42"],
        ["id-1", "tasksys:dedupe:"],
    )
    assert release_script_args("p:", "id-1", None) == (["p:dedupe-task:id-1", ""], ["id-1", "p:dedupe:"])


def test_worker_reads_the_key_from_the_request_headers() -> None:
    from celery.app.task import Context

    with_key = Context({"id": "x", "lang": "py", DEDUPE_HEADER: "report:42"})
    assert dedupe_key_of(with_key) == "report:42"
    assert dedupe_key_of(Context({"id": "x", "lang": "py"})) is None
    assert dedupe_key_of(None) is None


def test_without_a_redis_broker_releases_and_counts_touch_nothing() -> None:
    from celery import Celery

    from pkg.celery_task._dedupe import Deduplicator

    for broker, options in (
        ("amqp://guest@127.0.0.1:1//", {}),
        ("redis://127.0.0.1:1/0", {"global_keyprefix": "x:"}),
    ):
        app = Celery("t", broker=broker, set_as_current=False)
        app.conf.broker_transport_options = options
        dedupe = Deduplicator(app)
        assert dedupe.available is False
        assert dedupe.release("some-id") is False  # no connection attempted (port 1 is closed)
        assert dedupe.counts() == {}
        with pytest.raises(InvalidRequestError) as info:
            dedupe.check_supported(TaskRequest("t"), redis_broker=False)
        assert info.value.field == "dedupe_key"
    assert Deduplicator(Celery("t", broker="redis://127.0.0.1:1/0", set_as_current=False)).available


def test_celery_copies_the_header_into_a_retry() -> None:
    """A retry is sent with ``Context.as_execution_options()``: the dedupe header must be
    among its custom headers, or the last attempt's worker could not release the key."""
    from celery.app.task import Context

    request = Context({"id": "x", "lang": "py", "task": "t", "retries": 1, DEDUPE_HEADER: "report:42"})
    assert request.as_execution_options()["headers"] == {DEDUPE_HEADER: "report:42"}
