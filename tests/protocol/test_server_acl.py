"""protocol/server_acl.py: the ACL order of m.room.server_acl, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from pocketserver.protocol.server_acl import server_allowed

CASES: list[tuple[dict[str, Any] | None, str, bool]] = [
    (None, "anything.example", True),
    ({}, "anything.example", False),  # no allow rule: nobody
    ({"allow": ["*"]}, "evil.example", True),
    ({"allow": ["*"], "deny": ["evil.example"]}, "evil.example", False),
    ({"allow": ["*"], "deny": ["evil.example"]}, "evil.example:8448", False),  # ports ignored
    ({"allow": ["*"], "deny": ["*.evil.example"]}, "a.evil.example", False),
    ({"allow": ["*"], "deny": ["*.evil.example"]}, "evil.example", True),
    ({"allow": ["good.example"]}, "good.example", True),
    ({"allow": ["good.example"]}, "other.example", False),
    ({"allow": ["?.example"]}, "a.example", True),
    ({"allow": ["?.example"]}, "ab.example", False),
    ({"allow": ["*"], "allow_ip_literals": False}, "1.2.3.4", False),
    ({"allow": ["*"], "allow_ip_literals": False}, "[::1]:8448", False),
    ({"allow": ["*"], "allow_ip_literals": "no"}, "1.2.3.4", True),  # not a boolean: default
    ({"allow": ["*"]}, "1.2.3.4:8448", True),
    ({"allow": ["*"], "deny": [5, "bad.example"]}, "bad.example", False),  # junk entries skipped
    ({"allow": "*"}, "x.example", False),  # not a list: no allow rule
    ({"allow": ["EXAMPLE.org"]}, "example.org", True),
]


@pytest.mark.parametrize(("content", "server", "allowed"), CASES)
def test_server_acl(content: dict[str, Any] | None, server: str, allowed: bool) -> None:
    assert server_allowed(content, server) is allowed
