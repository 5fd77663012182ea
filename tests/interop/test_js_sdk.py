"""matrix-js-sdk (with the npm-provided Node 22) against the real pocketserver process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import ServerProcess

pytestmark = pytest.mark.interop

JS_DIR = Path(__file__).parent / "js"
NODE = JS_DIR / "node_modules" / ".bin" / "node"


def run_script(script: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``js/<script>`` with the npm-installed node (tests/run does the npm install)."""
    if not (JS_DIR / "node_modules" / "matrix-js-sdk").is_dir() or not NODE.exists():
        pytest.fail("tests/interop/js has no node_modules: run `npm install` there (tests/run does)")
    return subprocess.run(
        [str(NODE), str(JS_DIR / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=JS_DIR,
        stdin=subprocess.DEVNULL,
    )


def test_js_sdk_accounts(pocketserver_process: ServerProcess) -> None:
    proc = run_script("accounts.mjs", pocketserver_process.base_url)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"ok": True, "user_id": "@jsuser:localhost", "devices": 2}


def test_js_sdk_rooms_send_and_sync(pocketserver_process: ServerProcess) -> None:
    proc = run_script("rooms.mjs", pocketserver_process.base_url)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"ok": True, "bodies": ["hello from js", "and back"]}
