"""The public names of pkg.celery_task are a contract: ``__all__`` lists exactly what
``__init__.py`` imports from the private modules, each name documented."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pkg.celery_task

PACKAGE = Path(pkg.celery_task.__file__).parent


def imported_names(init: Path = PACKAGE / "__init__.py") -> list[str]:
    """The names ``__init__.py`` imports from the package's own modules, in order."""
    names = []
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.extend(alias.asname or alias.name for alias in node.names)
    return names


def test_all_is_exactly_what_init_imports() -> None:
    exported = list(pkg.celery_task.__all__)
    assert len(exported) == len(set(exported)), "__all__ lists a name twice"
    imported = imported_names()
    assert imported, "no imports found in __init__.py: the parser no longer matches it"
    assert set(exported) == set(imported), (
        f"imported but not in __all__: {sorted(set(imported) - set(exported))}; "
        f"in __all__ but not imported: {sorted(set(exported) - set(imported))}"
    )


def test_every_exported_class_and_function_is_documented_and_ours() -> None:
    undocumented = []
    for name in pkg.celery_task.__all__:
        member = getattr(pkg.celery_task, name)
        if name.isupper():
            continue  # constants: documented by ``#:`` comments where they are defined
        assert member.__module__.startswith("pkg.celery_task"), name
        if not (inspect.isclass(member) or callable(member)) or not (member.__doc__ or "").strip():
            undocumented.append(name)
    assert not undocumented, f"public names without a docstring of their own: {undocumented}"


def test_pkg_imports_nothing_from_internal() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "__init__.py" in files
    for path in files:
        depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for the package's own modules
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("internal"), path
                # ``from .. import x`` in pkg/celery_task/_x.py would reach pkg/ and beyond
                assert node.level <= depth + 1, f"{path} imports from outside pkg.celery_task"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("internal") for a in node.names), path


def test_imported_names_reads_relative_imports_only(tmp_path: Path) -> None:
    init = tmp_path / "__init__.py"
    init.write_text("from ._a import b as c, d\nfrom . import e\nfrom os import path\n")
    assert imported_names(init) == ["c", "d", "e"]


def test_errors_form_one_tree() -> None:
    from pkg.celery_task import (
        BrokerUnavailableError,
        InvalidRequestError,
        InvalidScheduleError,
        PeriodicTaskNotFoundError,
        ResultTimeoutError,
        TaskSystemError,
        UnknownTaskError,
    )

    for error in (BrokerUnavailableError, InvalidRequestError, PeriodicTaskNotFoundError, ResultTimeoutError):
        assert issubclass(error, TaskSystemError)
    assert issubclass(InvalidScheduleError, ValueError) and issubclass(UnknownTaskError, ValueError)
    assert issubclass(ResultTimeoutError, TimeoutError) and issubclass(PeriodicTaskNotFoundError, KeyError)
    from pkg.celery_task import StoreFullError, TaskIdInUseError

    assert issubclass(TaskIdInUseError, InvalidRequestError) and issubclass(TaskIdInUseError, ValueError)
    assert issubclass(StoreFullError, BrokerUnavailableError)


def test_submit_on_commit_and_its_table_are_exported() -> None:
    from pkg.celery_task import OUTBOX_CLIENT_KEY, OUTBOX_METADATA, OUTBOX_TABLE, submit_on_commit

    assert {"submit_on_commit", "OUTBOX_TABLE", "OUTBOX_METADATA", "OUTBOX_CLIENT_KEY"} <= set(
        pkg.celery_task.__all__
    )
    assert callable(submit_on_commit) and OUTBOX_CLIENT_KEY == "tasksys_client"
    assert OUTBOX_TABLE.name == "task_outbox" and OUTBOX_TABLE.metadata is OUTBOX_METADATA
