"""Server access control lists (``m.room.server_acl``).

Spec: shared/data/event-schemas/schema/m.room.server_acl.yaml (the order below),
client-server-api/modules/server_acls.md, server-server-api.md "Server Access Control
Lists (ACLs)"; globs: appendices.md "Glob-style matching" (``*`` any run of characters,
``?`` exactly one).

1. No ``m.room.server_acl`` in the room's state: allow.
2. An IP literal server name while ``allow_ip_literals`` is ``false``: deny.
3. A name matching a ``deny`` entry: deny.
4. A name matching an ``allow`` entry: allow.
5. Otherwise: deny.

The port of the server name is never considered. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=512)
def _glob(pattern: str) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL | re.IGNORECASE)


def _host(server_name: str) -> str:
    if server_name.startswith("["):  # [IPv6]:port
        end = server_name.find("]")
        return server_name[: end + 1] if end != -1 else server_name
    return server_name.rsplit(":", 1)[0] if server_name.count(":") == 1 else server_name


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


def _patterns(value: Any) -> list[str]:
    return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


def server_allowed(acl_content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Whether ``server_name`` may take part in a room whose ACL content is
    ``acl_content`` (None: the room has no ACL)."""
    if acl_content is None:
        return True
    host = _host(server_name)
    allow_ip = acl_content.get("allow_ip_literals", True)
    if allow_ip is False and _is_ip_literal(host):
        return False
    if any(_glob(p).fullmatch(host) for p in _patterns(acl_content.get("deny"))):
        return False
    return any(_glob(p).fullmatch(host) for p in _patterns(acl_content.get("allow")))
