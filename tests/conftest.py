"""Shared fixtures: an in-process server on ephemeral loopback ports, and HTTP clients."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pocketserver.config import Config, config_from_dict
from pocketserver.server import RunningServer, run_server

_CERT: tuple[str, str] | None = None


def shared_certificate() -> tuple[str, str]:
    """One self-signed certificate for every in-process test server (made once)."""
    global _CERT
    if _CERT is None:
        from pocketserver.services.tls import write_self_signed_certificate

        folder = Path(tempfile.mkdtemp(prefix="pocketserver-test-tls-"))
        write_self_signed_certificate(folder / "tls.crt", folder / "tls.key", "test.local")
        _CERT = (str(folder / "tls.crt"), str(folder / "tls.key"))
    return _CERT


def make_config(tmp_path: Path, extra: dict[str, Any] | None = None) -> Config:
    cert, key = shared_certificate()
    data: dict[str, Any] = {
        "server_name": "test.local",
        "data_dir": str(tmp_path / "data"),
        "tls_cert_path": cert,
        "tls_key_path": key,
        "log_level": "warning",
        "listeners": [
            {"address": "127.0.0.1", "port": 0, "resources": ["client", "federation"]},
            {"address": "127.0.0.1", "port": 0, "tls": True, "resources": ["federation"]},
        ],
        "rate_limits": {"enabled": False},
    }
    if extra:
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k] = {**data[k], **v}
            else:
                data[k] = v
    return config_from_dict(data)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture
async def server(config: Config, nursery: trio.Nursery) -> AsyncIterator[RunningServer]:
    running: RunningServer = await nursery.start(
        partial(run_server, config, out=None, handle_signals=False)
    )
    yield running
    running.stop.set()


@pytest.fixture
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.urls[0], timeout=30) as client:
        yield client
