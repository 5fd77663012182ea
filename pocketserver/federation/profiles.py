"""Profiles of users on other servers, for the client's ``GET /profile/{userId}``.

Asked over federation (``GET /_matrix/federation/v1/query/profile``, server-server
query.yaml) of the user's own server, and kept a minute (bounded) so that a client
rendering a member list does not ask once per avatar. A remote server's error body is
never handed to the client: a 404 stays a 404, anything else is a 502.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pocketserver.errors import MatrixError, NotFound
from pocketserver.federation.interfaces import (
    FederationError,
    FederationRequester,
    FederationUnreachable,
)
from pocketserver.protocol.identifiers import InvalidIdentifier, UserID
from pocketserver.services.clock import Clock

PROFILE_PATH = "/_matrix/federation/v1/query/profile"
CACHE_S = 60.0
CACHE_ENTRIES = 1000
TIMEOUT_S = 15.0
MAX_PROFILE_RESPONSE = 256 * 1024


class RemoteProfiles:
    def __init__(self, requester: FederationRequester, clock: Clock) -> None:
        self.requester = requester
        self.clock = clock
        self._cache: OrderedDict[str, tuple[dict[str, Any], float]] = OrderedDict()

    async def get_profile(self, user_id: str) -> dict[str, Any]:
        """Every field the remote server gives; 404 M_NOT_FOUND for an unknown user."""
        now = self.clock.monotonic()
        cached = self._cache.get(user_id)
        if cached is not None and cached[1] > now:
            return dict(cached[0])
        try:
            server = UserID.parse(user_id).domain
        except InvalidIdentifier:
            raise NotFound("Profile not found") from None
        try:
            answer = await self.requester.get_json(
                server, PROFILE_PATH, {"user_id": user_id}, timeout_s=TIMEOUT_S
            )
        except FederationError as e:
            if e.status == 404:
                raise NotFound("Profile not found") from None
            raise MatrixError(502, "M_UNKNOWN", f"{server} answered {e.status}") from None
        except FederationUnreachable:
            raise MatrixError(502, "M_UNKNOWN", f"{server} could not be reached") from None
        if not isinstance(answer, dict):
            raise MatrixError(502, "M_UNKNOWN", f"{server} answered a profile that is not an object")
        profile = {k: v for k, v in answer.items() if isinstance(k, str)}
        self._cache[user_id] = (profile, now + CACHE_S)
        self._cache.move_to_end(user_id)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return dict(profile)

    async def get_profile_field(self, user_id: str, key: str) -> dict[str, Any]:
        profile = await self.get_profile(user_id)
        if key not in profile:
            raise NotFound(f"No {key} in this profile")
        return {key: profile[key]}
