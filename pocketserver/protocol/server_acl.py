"""Server access control lists (``m.room.server_acl``): may a server take part in a room?

Spec: shared/spec/data/event-schemas/schema/m.room.server_acl.yaml and
server-server-api.md, "Server Access Control Lists (ACLs)". The rules, in order:

1. no ``m.room.server_acl`` event in the room's state: allow;
2. the server name is an IP literal (v4 or v6) and ``allow_ip_literals`` is present
   and ``false``: deny (anything that is not a boolean counts as ``true``);
3. the name matches an entry of ``deny``: deny;
4. the name matches an entry of ``allow``: allow;
5. otherwise deny (a missing ``allow`` is an empty list).

Names are compared without their port, case-insensitively, against glob patterns
(``*`` any run of characters, ``?`` one character: appendices, "Glob-style matching").
Entries that are not strings are ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from pocketserver.protocol.push_rules import glob_matches


def _host_of(server_name: str) -> str:
    """The host part of a server name: the port and IPv6 brackets removed."""
    if server_name.startswith("["):
        end = server_name.find("]")
        return server_name[1:end] if end != -1 else server_name
    return server_name.rsplit(":", 1)[0] if server_name.count(":") == 1 else server_name


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _patterns(content: Mapping[str, Any], key: str) -> list[str]:
    value = content.get(key)
    if not isinstance(value, list):
        return []
    return [p for p in value if isinstance(p, str)]


def server_allowed(acl_content: Mapping[str, Any] | None, server_name: str) -> bool:
    """Whether ``server_name`` passes the ACL whose event content is ``acl_content``
    (None: the room has no ACL)."""
    if acl_content is None:  # rule 1
        return True
    host = _host_of(server_name)
    if acl_content.get("allow_ip_literals") is False and _is_ip_literal(host):  # rule 2
        return False
    if server_name.startswith("["):
        host = f"[{host}]"  # patterns name IPv6 literals with their brackets
    if any(glob_matches(p, host) for p in _patterns(acl_content, "deny")):  # rule 3
        return False
    return any(glob_matches(p, host) for p in _patterns(acl_content, "allow"))  # rules 4, 5
