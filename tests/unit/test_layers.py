"""The layers of ``internal/``: services raise domain errors and import nothing from
the HTTP layer, so they can be called from tasks, scripts and tests without FastAPI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[2] / "internal" / "services"
FORBIDDEN = ("internal.api", "fastapi", "starlette")


def _imported_modules(tree: ast.Module) -> list[str]:
    """Every module an import statement of ``tree`` names, at any depth (also inside
    functions and ``TYPE_CHECKING`` blocks)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against internal.services
                base = ".".join(["internal", "services"][: 2 - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
                names.extend([module, *(f"{module}.{alias.name}" for alias in node.names)])
            elif node.module:
                names.append(node.module)
                names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _layer_files() -> list[Path]:
    files = sorted(SERVICES.rglob("*.py"))
    assert len(files) >= 5, f"expected the service modules under {SERVICES}"
    return files


@pytest.mark.parametrize("path", _layer_files(), ids=lambda p: p.name)
def test_services_do_not_import_the_http_layer(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    offending = [
        name
        for name in _imported_modules(tree)
        if any(name == prefix or name.startswith(prefix + ".") for prefix in FORBIDDEN)
    ]
    assert not offending, (
        f"{path.name} imports {offending}; services raise domain errors and use internal.schemas"
    )


def test_the_check_sees_every_import_form() -> None:
    """The walker finds plain, from-, relative and nested imports, so a pass means something."""
    source = (
        "import internal.api.errors\n"
        "from internal.api import schemas\n"
        "from ..api.errors import x\n"
        "from .. import api\n"
        "def f():\n    from fastapi import HTTPException\n"
    )
    found = _imported_modules(ast.parse(source))
    assert "internal.api.errors" in found
    assert "internal.api.schemas" in found
    assert "internal.api.errors.x" in found
    assert "internal.api" in found
    assert "fastapi" in found
