"""The identity-server client reaches only public addresses (the identity server is
named by the client, so no client can point this server into its own network)."""

from __future__ import annotations

import pytest

from pocketserver.services.outbound import Outbound
from pocketserver.services.third_party_invites import IdentityClient, IdentityServerError


def test_only_public_addresses_unless_allowed() -> None:
    client = IdentityClient(Outbound(), ())
    assert client.policy.allows("8.8.8.8")
    for ip in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "::1", "::ffff:127.0.0.1", "169.254.1.1"):
        assert not client.policy.allows(ip), ip
    assert IdentityClient(Outbound(), ("127.0.0.0/8",)).policy.allows("127.0.0.1")


async def test_a_loopback_identity_server_is_refused_before_connecting() -> None:
    client = IdentityClient(Outbound(), ())
    with pytest.raises(IdentityServerError, match="may not be reached"):
        await client.request("GET", "https://127.0.0.1:1/_matrix/identity/v2/hash_details")
    with pytest.raises(IdentityServerError, match="https"):
        await client.request("GET", "http://example.org/")
