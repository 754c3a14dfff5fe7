"""Only ``pkg.celery_task._compat`` reaches private names of other libraries: any
``x._name`` elsewhere in the package must be on the package's own objects."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pkg.celery_task
from pkg.celery_task import _compat

PACKAGE = Path(pkg.celery_task.__file__).parent
#: Private-looking names that are public API of the standard library.
ALLOWED = {"os._exit"}


def _private_accesses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue  # the package's own classes
        text = ast.unparse(node)
        if text not in ALLOWED:
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {text}")
    return found


def test_private_names_of_other_libraries_are_reached_only_through_compat() -> None:
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "_compat.py"]
    assert len(modules) > 20
    found = [access for path in modules for access in _private_accesses(path)]
    assert not found, (
        "move these behind a function in pkg/celery_task/_compat.py (and pin it):\n" + "\n".join(found)
    )


def test_task_request_is_the_property_over_get_request() -> None:
    from celery import Task

    assert isinstance(inspect.getattr_static(Task, "request"), property), (
        "celery.Task.request is no longer a property; review _compat.thread_request"
    )
    assert inspect.getattr_static(Task, "request").fget is Task._get_request, (
        "celery.Task.request no longer reads Task._get_request; review _compat.thread_request"
    )
    from celery import Celery

    app = Celery("request-pin", set_as_current=False)

    @app.task(name="pin.request", shared=False)
    def pinned() -> None:
        """Never called."""

    assert (
        _compat.thread_request(app.tasks["pin.request"]).id is None
    )  # outside a task: Celery's default request
