"""Dependencies point one way: api -> services -> storage/protocol (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "pocketserver"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def _modules(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def test_nothing_outside_api_imports_api() -> None:
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith("api/") or rel in ("app.py",):
            continue
        if any(m.startswith("pocketserver.api") for m in _imports(path)):
            offenders.append(rel)
    assert offenders == []


def test_storage_does_not_import_services_or_api() -> None:
    offenders = [
        p.relative_to(PKG).as_posix()
        for p in _modules("storage")
        if any(m.startswith(("pocketserver.services", "pocketserver.api")) for m in _imports(p))
    ]
    assert offenders == []


def test_services_do_not_import_quart() -> None:
    offenders = [
        p.relative_to(PKG).as_posix()
        for p in _modules("services")
        if any(m.split(".")[0] in ("quart", "quart_trio", "werkzeug") for m in _imports(p))
    ]
    assert offenders == []
