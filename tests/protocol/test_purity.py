"""The protocol core does no I/O and imports nothing of pocketserver outside protocol/
(STYLE.md, "The protocol core does no I/O")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pocketserver.protocol

PROTOCOL_DIR = Path(pocketserver.protocol.__file__).parent
MODULES = ["canonical_json", "identifiers", "hashes", "signing", "redaction", "events",
           "room_versions"]  # fmt: skip
FORBIDDEN = {"trio", "apsw", "quart", "quart_trio", "hypercorn", "httpx", "h11", "socket",
             "time", "datetime", "random", "secrets", "os", "asyncio", "threading",
             "logging"}  # fmt: skip


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", MODULES)
def test_protocol_module_is_pure(module: str) -> None:
    for name in _imports(PROTOCOL_DIR / f"{module}.py"):
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{module} imports {name}"
        if top == "pocketserver":
            assert name.startswith("pocketserver.protocol"), f"{module} imports {name}"
