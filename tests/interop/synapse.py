"""A real Synapse federating with pocketserver on loopback (issue 12's interop tests).

Synapse is started with ``benchmarks/harness.py``'s ``start_synapse`` (the virtualenv
``benchmarks/synapse_venv.sh`` makes, which ``tests/run`` installs), SQLite, a client
listener, and a TLS federation listener on its own loopback port with a self-signed
certificate; its server name is ``localhost:<federation port>``, so names resolve
without DNS. The settings the issue lists make it federate on loopback.

pocketserver (``start_federating_pocketserver``) runs with a TLS federation listener,
server name ``localhost:<that port>``, ``allowed_ip_ranges = ["127.0.0.0/8"]`` and
``verify_tls = false`` (both sides use self-signed certificates).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import harness
from tests.interop.conftest import ServerProcess, free_port, start_pocketserver

SYNAPSE_READY_DEADLINE_S = 180.0

SYNAPSE_FEDERATION_SETTINGS: dict[str, Any] = {
    "federation_verify_certificates": False,
    # Synapse 1.163 reads only this spelling; empty: loopback may be reached.
    "federation_ip_range_blacklist": [],
    "ip_range_whitelist": ["127.0.0.1"],
    "trusted_key_servers": [],
    # The harness's empty whitelist would forbid every server.
    "federation_domain_whitelist": None,
    "federation": {
        "destination_min_retry_interval": "1s",
        "destination_max_retry_interval": "10s",
    },
}

POCKETSERVER_FEDERATION_TOML = (
    '[federation]\nverify_tls = false\nallowed_ip_ranges = ["127.0.0.0/8"]\n'
)


def synapse_version() -> str:
    import subprocess

    python = harness.synapse_python()
    out = subprocess.run(
        [python, "-c", "import synapse; print(synapse.__version__)"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return out.stdout.strip()


@dataclass
class Pair:
    """The Synapse and the pocketserver that federate with each other for the whole
    session (the ``pair`` fixture in tests/interop/conftest.py): one Synapse start
    serves every federation interop module."""

    synapse: harness.ServerProcess
    pocket: ServerProcess


@contextlib.contextmanager
def start_federating_synapse(
    workdir: Path, extra_config: dict[str, Any] | None = None
) -> Iterator[harness.ServerProcess]:
    """Synapse on loopback with a TLS federation listener; stopped (by pid) on exit.
    ``extra_config`` adds homeserver.yaml settings (a benchmark's)."""
    from pocketserver.services.tls import write_self_signed_certificate

    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    write_self_signed_certificate(cert, key, "localhost")
    fed_port = free_port()
    server = harness.start_synapse(
        workdir / "synapse",
        server_name=f"localhost:{fed_port}",
        extra_config={**SYNAPSE_FEDERATION_SETTINGS, **(extra_config or {})},
        federation_port=fed_port,
        tls_files=(cert, key),
    )
    server.extra["federation_port"] = fed_port
    server.extra["tls_files"] = (cert, key)
    try:
        harness.wait_ready(server, SYNAPSE_READY_DEADLINE_S)
        yield server
    finally:
        server.stop()


def restart_federating_synapse(server: harness.ServerProcess) -> None:
    """Start Synapse again on the same data and federation port (after ``stop()``); the
    object is updated in place (its client port changes), so the caller's context
    manager stops the new process."""
    fresh = harness.start_synapse(
        server.workdir,
        server_name=server.server_name,
        extra_config=SYNAPSE_FEDERATION_SETTINGS,
        federation_port=server.extra["federation_port"],
        tls_files=server.extra["tls_files"],
    )
    server.proc, server.base_url, server.spawned_at = fresh.proc, fresh.base_url, fresh.spawned_at
    server.log_path = fresh.log_path
    harness.wait_ready(server, SYNAPSE_READY_DEADLINE_S)


@contextlib.contextmanager
def start_federating_pocketserver(workdir: Path) -> Iterator[ServerProcess]:
    workdir.mkdir(parents=True, exist_ok=True)
    fed_port = free_port()
    with start_pocketserver(
        workdir, server_name=f"localhost:{fed_port}", fed_port=fed_port,
        extra_toml=POCKETSERVER_FEDERATION_TOML,
    ) as sp:
        yield sp


def register(base_url: str, name: str) -> tuple[str, str]:
    """Register ``name`` with m.login.dummy on either server: (user_id, access_token)."""
    r = httpx.post(
        f"{base_url}/_matrix/client/v3/register",
        json={"username": name, "password": f"pw-{name}-0123456789", "auth": {"type": "m.login.dummy"}},
        timeout=60,
    )
    if r.status_code == 401:  # Synapse asks for the UIA session first
        session = r.json()["session"]
        r = httpx.post(
            f"{base_url}/_matrix/client/v3/register",
            json={
                "username": name, "password": f"pw-{name}-0123456789",
                "auth": {"type": "m.login.dummy", "session": session},
            },
            timeout=60,
        )
    r.raise_for_status()
    body = r.json()
    return body["user_id"], body["access_token"]
