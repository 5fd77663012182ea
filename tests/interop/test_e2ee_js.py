"""matrix-js-sdk 43 with its Rust crypto against the real pocketserver: an encrypted DM
(both sides decrypt) and cross-signing bootstrap. Runs tests/interop/js/e2ee_dm.mjs
with the Node.js 22 that tests/interop/js/package.json installs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.interop.conftest import ServerProcess

pytestmark = pytest.mark.interop

JS = Path(__file__).resolve().parent / "js"


def _node() -> str:
    local = JS / "node_modules" / ".bin" / "node"
    return str(local) if local.exists() else "node"


def test_js_sdk_encrypted_dm_and_cross_signing(pocketserver_process: ServerProcess) -> None:
    assert (JS / "node_modules" / "matrix-js-sdk").exists(), "run: cd tests/interop/js && npm install"
    proc = subprocess.run(
        [_node(), str(JS / "e2ee_dm.mjs"), pocketserver_process.base_url, os.urandom(3).hex()],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + "\n" + pocketserver_process.log()[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["aliceSeesEncrypted"] is True
    assert result["bobGot"]["body"] == result["hello"]
    assert result["bobGot"]["wireType"] == "m.room.encrypted"
    assert result["aliceGot"]["body"] == result["reply"]
    assert result["aliceGot"]["wireType"] == "m.room.encrypted"
    assert result["crossSigningReady"] is True
    assert result["ownDeviceCrossSigned"] is True
    assert result["aliceMasterKey"] and result["bobSeesMasterKey"] == result["aliceMasterKey"]
