"""In-process pocketservers that federate with each other on loopback.

Each one's server name is ``localhost:<its TLS federation port>`` (a name with a port
resolves without DNS), with loopback allowed and TLS unverified (self-signed), on top
of the tests' usual configuration (tests/conftest.py ``make_config``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import trio

from pocketserver.server import RunningServer, run_server
from tests.conftest import make_config
from tests.interop.conftest import free_port


async def start_federating_server(
    nursery: trio.Nursery,
    tmp_path: Path,
    federation: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    tls_resources: tuple[str, ...] = ("federation",),
) -> RunningServer:
    """``extra``: more configuration (other sections than ``[federation]``);
    ``tls_resources``: what the TLS listener (the server name's port) serves."""
    port = free_port()
    config = make_config(
        tmp_path,
        {
            "server_name": f"localhost:{port}",
            "listeners": [
                {"address": "127.0.0.1", "port": 0, "resources": ["client", "federation"]},
                {"address": "127.0.0.1", "port": port, "tls": True, "resources": list(tls_resources)},
            ],
            "federation": {"verify_tls": False, "allowed_ip_ranges": ["127.0.0.0/8"], **(federation or {})},
            **(extra or {}),
        },
    )
    running: RunningServer = await nursery.start(
        partial(run_server, config, out=None, handle_signals=False)
    )
    return running
