"""``pocketserver check-federation DOMAIN``: can other servers reach DOMAIN?

What a federation tester does, from this machine and with this server's
``[federation]`` settings (TLS verification, extra CAs, allowed address ranges):

1. discovery, printing each step taken (well-known, SRV records, the chosen target);
2. the addresses of the target, and whether this configuration may reach them;
3. a TLS handshake that verifies the certificate for the target's TLS name (reported
   whatever ``verify_tls`` says: other servers verify);
4. ``GET /_matrix/key/v2/server``: for DOMAIN, self-signed, still valid;
5. ``GET /_matrix/federation/v1/version``;

and one last line saying whether federation with DOMAIN works.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import trio

from pocketserver.config import Config
from pocketserver.federation.client import FederationClient
from pocketserver.federation.interfaces import FederationError, FederationUnreachable
from pocketserver.federation.keyring import KEY_PATH
from pocketserver.protocol.identifiers import InvalidIdentifier, parse_server_name
from pocketserver.protocol.server_keys import KeyResponseError, parse_key_response
from pocketserver.protocol.signing import signing_key_from_seed
from pocketserver.services.outbound import OUTBOUND_ERRORS, Outbound

VERSION_PATH = "/_matrix/federation/v1/version"
STEP_TIMEOUT_S = 20.0


async def check_federation(
    cfg: Config, domain: str, say: Callable[[str], None], *, well_known_port: int = 443
) -> bool:
    """Run the checks, reporting through ``say``; True when federation works."""
    try:
        parse_server_name(domain)
    except InvalidIdentifier:
        say(f"{domain!r} is not a server name")
        say(f"federation with {domain}: NOT working")
        return False
    outbound = Outbound(cfg.federation)
    # Nothing is signed: keys and /version need no authentication.
    key = signing_key_from_seed(os.urandom(32), "check")
    # The check runs even where this server's own federation is turned off.
    client = FederationClient(
        cfg.server_name, key, outbound, dataclasses.replace(cfg.federation, enabled=True)
    )
    client.resolver.well_known_port = well_known_port
    problems: list[str] = []

    say(f"Discovery for {domain}:")
    resolution = None
    with trio.move_on_after(STEP_TIMEOUT_S * 2):
        resolution = await client.resolver.resolve(domain)
    if resolution is None or not resolution.targets:
        say(f"federation with {domain}: NOT working (discovery timed out)")
        return False
    for step in resolution.steps:
        say(f"  {step}")
    target = resolution.targets[0]
    say(f"  chosen: {target}")

    addresses = await client.dns.addresses(target.host, target.port)
    if not addresses:
        problems.append(f"{target.host} has no address")
        say(f"Addresses of {target.host}: none")
    else:
        for ip in addresses:
            allowed = client.policy.allows(ip)
            say(f"Address {ip}: {'may be reached' if allowed else 'refused by federation.allowed_ip_ranges'}")
        if not any(client.policy.allows(ip) for ip in addresses):
            problems.append("no address this configuration may reach")

    reachable = [ip for ip in addresses if client.policy.allows(ip)]
    if reachable:
        ok, detail = await _certificate_check(cfg, reachable[0], target.port, target.tls_name)
        say(f"TLS to {reachable[0]}:{target.port}: {detail}")
        if not ok:
            if cfg.federation.verify_tls:
                problems.append(f"certificate not valid for {target.tls_name}")
            else:
                say("  (verify_tls = false here, so the checks go on; servers that verify will refuse it)")

    keys_ok = False
    try:
        answer = await client.get_json(domain, KEY_PATH, timeout_s=STEP_TIMEOUT_S, max_size=256 * 1024, signed=False)
        keys = parse_key_response(answer, domain)
        valid = keys.valid_until_ts > int(time.time() * 1000)
        say(
            f"Keys: {', '.join(sorted(keys.verify_keys)) or 'none'} for {keys.server_name}, "
            f"self-signed, valid_until_ts {keys.valid_until_ts} "
            f"({'in the future' if valid else 'EXPIRED'})"
        )
        keys_ok = valid and bool(keys.verify_keys)
        if not keys_ok:
            problems.append("the key response has expired or lists no key")
    except (FederationError, FederationUnreachable) as e:
        say(f"Keys: {KEY_PATH} failed: {e}")
        problems.append("keys could not be fetched")
    except KeyResponseError as e:
        say(f"Keys: the response is not acceptable: {e}")
        problems.append("bad key response")

    try:
        version = await client.get_json(domain, VERSION_PATH, timeout_s=STEP_TIMEOUT_S, max_size=64 * 1024, signed=False)
        server = version.get("server") if isinstance(version, dict) else None
        if isinstance(server, dict):
            say(f"Version: {server.get('name', '?')} {server.get('version', '?')}")
        else:
            say("Version: answered without a 'server' object")
            problems.append("bad /version answer")
    except (FederationError, FederationUnreachable) as e:
        say(f"Version: {VERSION_PATH} failed: {e}")
        problems.append("/version failed")

    if problems:
        say(f"federation with {domain}: NOT working ({'; '.join(problems)})")
        return False
    say(f"federation with {domain}: working")
    return True


async def _certificate_check(cfg: Config, ip: str, port: int, tls_name: str) -> tuple[bool, str]:
    """Handshake verifying the certificate for ``tls_name`` (system CAs plus
    ``extra_ca_file``), whatever ``verify_tls`` says."""
    ctx = ssl.create_default_context()
    if cfg.federation.extra_ca_file:
        try:
            ctx.load_verify_locations(cafile=cfg.federation.extra_ca_file)
        except (OSError, ValueError) as e:
            return False, f"cannot load extra_ca_file: {e}"
    try:
        with trio.fail_after(STEP_TIMEOUT_S):
            tcp = await trio.open_tcp_stream(ip, port)
            stream = trio.SSLStream(tcp, ctx, server_hostname=tls_name)
            try:
                await stream.do_handshake()
                cert: Any = stream.getpeercert()
            finally:
                await trio.aclose_forcefully(stream)
    except trio.BrokenResourceError as e:
        cause = e.__cause__
        reason = getattr(cause, "verify_message", None) or str(cause or e)
        return False, f"certificate NOT valid for {tls_name}: {reason}"
    except OUTBOUND_ERRORS as e:
        return False, f"connection failed: {e}"
    expires = cert.get("notAfter", "?") if isinstance(cert, dict) else "?"
    return True, f"certificate valid for {tls_name} (expires {expires})"
