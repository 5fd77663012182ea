"""Server ACL matching (m.room.server_acl's rules, in order), table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from pocketserver.protocol.server_acl import server_allowed

ALLOW_ALL_DENY_EVIL = {"allow": ["*"], "deny": ["evil.com", "*.evil.com"], "allow_ip_literals": True}

CASES: list[tuple[str, dict[str, Any] | None, str, bool]] = [
    ("rule 1: no ACL", None, "anything.org", True),
    ("deny exact", ALLOW_ALL_DENY_EVIL, "evil.com", False),
    ("port ignored", ALLOW_ALL_DENY_EVIL, "evil.com:8448", False),
    ("deny glob", ALLOW_ALL_DENY_EVIL, "matrix.evil.com", False),
    ("deny is case-insensitive", ALLOW_ALL_DENY_EVIL, "EVIL.com", False),
    ("glob does not match the bare domain", {"allow": ["*.good.org"]}, "good.org", False),
    ("allow glob", {"allow": ["*.good.org"]}, "hs.good.org:443", True),
    ("? is one character", {"allow": ["s?.org"]}, "s1.org", True),
    ("? is exactly one", {"allow": ["s?.org"]}, "s12.org", False),
    ("rule 5: no allow list denies all", {"deny": []}, "good.org", False),
    ("empty content denies all", {}, "good.org", False),
    ("deny wins over allow", {"allow": ["*"], "deny": ["good.org"]}, "good.org", False),
    ("rule 2: IPv4 literal denied", {"allow": ["*"], "allow_ip_literals": False}, "1.2.3.4:8448", False),
    ("rule 2: IPv6 literal denied", {"allow": ["*"], "allow_ip_literals": False}, "[::1]:8448", False),
    ("IP literals allowed by default", {"allow": ["*"]}, "1.2.3.4", True),
    ("non-boolean allow_ip_literals counts as true", {"allow": ["*"], "allow_ip_literals": "no"}, "1.2.3.4", True),
    ("an IP literal by pattern", {"allow": ["1.2.3.*"]}, "1.2.3.4:8448", True),
    ("non-string entries ignored", {"allow": [1, None, "ok.org"], "deny": [True]}, "ok.org", True),
    ("a non-list allow is empty", {"allow": "*"}, "ok.org", False),
    ("a non-list deny is empty", {"allow": ["*"], "deny": "ok.org"}, "ok.org", True),
    ("regex characters are literal", {"allow": ["a.b"]}, "axb", False),
]


@pytest.mark.parametrize(("acl", "server", "allowed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_server_acl(acl: dict[str, Any] | None, server: str, allowed: bool) -> None:
    assert server_allowed(acl, server) is allowed
