"""matrix-js-sdk uploads a file and downloads it through the authenticated media API."""

from __future__ import annotations

import json

import pytest

from tests.interop.conftest import ServerProcess
from tests.interop.test_js_sdk import run_script

pytestmark = pytest.mark.interop


def test_js_sdk_media_upload_and_download(pocketserver_process: ServerProcess) -> None:
    proc = run_script("media.mjs", pocketserver_process.base_url)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"ok": True, "size": 3 * 1024 * 1024 + 17, "uri_server": "localhost"}
