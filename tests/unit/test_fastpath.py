"""The JSON hole templates of the fast path give exactly the text of a full encode."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.utils.json import dumps

from pkg.celery_task._fastpath import _holes, _JsonTemplate, pipeline_commands

leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=15,
)


@settings(max_examples=500, deadline=None)
@given(fixed=st.dictionaries(st.text(max_size=8), values, max_size=5), a=values, b=values)
def test_rendered_template_equals_full_encoding(fixed: dict[str, Any], a: Any, b: Any) -> None:
    holes = _holes("a", "b")
    document = {**fixed, "first": holes["a"], "nested": {"second": holes["b"], "keep": fixed}}
    template = _JsonTemplate(document, holes)
    filled = {**fixed, "first": a, "nested": {"second": b, "keep": fixed}}
    assert template.render({"a": dumps(a), "b": dumps(b)}) == dumps(filled)


def test_pushes_fold_per_key_in_order_and_other_commands_keep_their_order() -> None:
    commands = [
        ("lpush", ("q", "1")),
        ("publish", ("ev", "a")),
        ("lpush", ("q2", "x")),
        ("lpush", ("q", "2")),
        ("publish", ("ev", "b")),
    ]
    assert pipeline_commands(commands) == [
        ("lpush", ("q", "1", "2")),
        ("lpush", ("q2", "x")),
        ("publish", ("ev", "a")),
        ("publish", ("ev", "b")),
    ]
