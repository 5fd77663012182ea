"""OpenID tokens: a user proves who they are to a third party (an integration manager,
a widget) without handing it their access token.

Client-server API "OpenID" (shared/spec/data/api/client-server/openid.yaml) issues the
token; server-server API "OpenID" (data/api/server-server/openid.yaml) exchanges it for
the user's ID. The token is good for that exchange only, until it expires: it is kept in
its own table, so it never authenticates a client request.
"""

from __future__ import annotations

import secrets
from typing import Any

from pocketserver.errors import Forbidden, UnknownToken
from pocketserver.services.auth import Requester, hash_token
from pocketserver.services.clock import Clock
from pocketserver.storage import openid as store
from pocketserver.storage.database import Database

TOKEN_LIFETIME_S = 3600


class OpenIdService:
    def __init__(self, db: Database, clock: Clock, server_name: str) -> None:
        self.db = db
        self.clock = clock
        self.server_name = server_name

    async def request_token(self, requester: Requester, user_id: str) -> dict[str, Any]:
        """POST /user/{userId}/openid/request_token: a token for the requester only."""
        if user_id != requester.user_id:
            raise Forbidden("You can only request an OpenID token for yourself")
        token = secrets.token_urlsafe(32)
        now = self.clock.time_ms()
        await self.db.write(
            store.insert_token, hash_token(token), user_id, now + TOKEN_LIFETIME_S * 1000, now
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "matrix_server_name": self.server_name,
            "expires_in": TOKEN_LIFETIME_S,
        }

    async def userinfo(self, token: str) -> dict[str, Any]:
        """GET /_matrix/federation/v1/openid/userinfo: the token's owner."""
        user_id = await self.db.read(store.get_token_user, hash_token(token), self.clock.time_ms())
        if user_id is None:
            raise UnknownToken("OpenID token unknown or expired")
        return {"sub": user_id}
