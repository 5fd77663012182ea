"""Invite permission (client-server API modules/invite_permission.md, v1.18).

A user blocks every invite with the global account data ``m.invite_permission_config``
``{"default_action": "block"}``; a missing, invalid or other value lets invites through.
While blocked, inviting the user answers 403 ``M_INVITE_BLOCKED`` (``/invite``,
``createRoom``'s ``invite`` list, a ``PUT`` of an invite membership), and invites already
stored are left out of the synchronisation endpoints (``/sync``, ``/initialSync``,
``/events``); ``/state`` and the other readers still show them. Lifting the block
does not bring a suppressed invite back into an incremental ``/sync`` (the spec's MAY);
an initial sync shows it again.

Federation (for the federation work): ``PUT /_matrix/federation/v1|v2/invite`` for a
blocking user must refuse with the same 403 ``M_INVITE_BLOCKED``.
"""

from __future__ import annotations

from pocketserver.storage import account_data as ad_store
from pocketserver.storage.database import Conn

INVITE_PERMISSION_CONFIG = "m.invite_permission_config"


def blocks_invites(conn: Conn, user_id: str) -> bool:
    content = ad_store.get_account_data(conn, user_id, ad_store.GLOBAL, INVITE_PERMISSION_CONFIG)
    return isinstance(content, dict) and content.get("default_action") == "block"
