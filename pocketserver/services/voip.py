"""TURN credentials for VoIP calls (GET /voip/turnServer).

The coturn "use-auth-secret" (TURN REST API) scheme: the username is
``<expiry unix seconds>:<user_id>`` and the password is
``base64(HMAC-SHA1(shared_secret, username))``, which the TURN server recomputes from
the same static secret. Without configured URIs and secret there is nothing to hand
out, and the answer is an empty object.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from pocketserver.config import TurnConfig
from pocketserver.services.clock import Clock


def turn_credentials(secret: str, user_id: str, expiry_s: int) -> tuple[str, str]:
    username = f"{expiry_s}:{user_id}"
    mac = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(mac).decode("ascii")


class VoipService:
    def __init__(self, config: TurnConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock

    def turn_server(self, user_id: str) -> dict[str, Any]:
        cfg = self.config
        if not cfg.uris or not cfg.shared_secret:
            return {}
        expiry = self.clock.time_ms() // 1000 + cfg.lifetime_seconds
        username, password = turn_credentials(cfg.shared_secret, user_id, expiry)
        return {
            "username": username,
            "password": password,
            "uris": list(cfg.uris),
            "ttl": cfg.lifetime_seconds,
        }
