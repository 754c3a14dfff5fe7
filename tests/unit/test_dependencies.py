"""Every third-party module the tests import is a dependency declared in pyproject.toml,
not one that happens to come with another."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Top-level packages of this repository.
LOCAL = {"bench", "internal", "main", "migrations", "pkg", "scripts", "tests"}


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """Distribution names in ``[project] dependencies`` and every dependency group."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = list(project["project"]["dependencies"])
    for group in project.get("dependency-groups", {}).values():
        requirements += [r for r in group if isinstance(r, str)]
    return {_normalised(re.split(r"[\[<>=!~;\s]", r, maxsplit=1)[0]) for r in requirements}


def imported_modules(directory: Path) -> dict[str, Path]:
    """Top-level modules imported (absolutely) anywhere under ``directory``: one file each."""
    found: dict[str, Path] = {}
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    return found


def test_every_test_import_is_a_declared_dependency() -> None:
    distributions = packages_distributions()
    wanted = declared()
    third_party = {
        module: path
        for module, path in imported_modules(ROOT / "tests").items()
        if module not in LOCAL and module not in sys.stdlib_module_names
    }
    assert "hypothesis" in third_party  # the scan sees the tests' imports
    undeclared = {}
    for module, path in sorted(third_party.items()):
        names = {_normalised(d) for d in distributions.get(module, [module])}
        if not names & wanted:
            undeclared[module] = str(path.relative_to(ROOT))
    assert not undeclared, f"imported by tests but not declared in pyproject.toml: {undeclared}"
