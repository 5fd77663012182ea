"""The reCAPTCHA verifier against a fake siteverify API on loopback: the answer and
the private key go as a form; a verifier that fails or answers nonsense is an
upstream error (502), never a solved CAPTCHA."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import pytest
import trio

from pocketserver.config import FederationConfig, RegistrationConfig
from pocketserver.errors import MatrixError
from pocketserver.services.captcha import RecaptchaVerifier
from pocketserver.services.outbound import Outbound
from tests.api.appservice_helpers import AsRequest, FakeAppservice


async def test_verifier(nursery: trio.Nursery) -> None:
    replies: list[tuple[int, Any]] = []

    async def handler(req: AsRequest) -> tuple[int, Any]:
        return replies.pop(0)

    fake = FakeAppservice(handler)
    await fake.start(nursery)
    verifier = RecaptchaVerifier(
        RegistrationConfig(
            recaptcha_public_key="pub", recaptcha_private_key="secret",
            recaptcha_siteverify_api=fake.url + "/recaptcha/api/siteverify",
        ),
        Outbound(FederationConfig()),
    )
    replies.append((200, {"success": True, "hostname": "example.org"}))
    assert await verifier.verify("answer & more") is True
    req = fake.requests[-1]
    assert (req.method, req.path) == ("POST", "/recaptcha/api/siteverify")
    assert parse_qs(req.raw.decode()) == {"secret": ["secret"], "response": ["answer & more"]}
    replies.append((200, {"success": False, "error-codes": ["invalid-input-response"]}))
    assert await verifier.verify("wrong") is False
    replies.append((200, {"success": "yes"}))  # only true is true
    assert await verifier.verify("odd") is False
    assert await verifier.verify("") is False  # not even asked
    assert len(fake.requests) == 3
    for reply in [(500, {}), (200, b"<html>oops</html>"), (200, b"[" * 5000)]:
        replies.append(reply)
        with pytest.raises(MatrixError) as e:
            await verifier.verify("answer")
        assert e.value.status == 502
