"""Ignoring users (client-server API "Ignoring Users"): who a user has ignored.

The list is the ``m.ignored_user_list`` global account data (``{"ignored_users":
{user_id: {}}}``). Events from ignored users are left out of /sync timelines,
/messages, /context, relations and aggregations, and their invites are not delivered;
state events are still delivered.
"""

from __future__ import annotations

from collections.abc import Iterable

from pocketserver.storage import account_data as ad_store
from pocketserver.storage.database import Conn
from pocketserver.storage.events import EventRecord

IGNORED_USER_LIST = "m.ignored_user_list"


def ignored_users(conn: Conn, user_id: str | None) -> frozenset[str]:
    if user_id is None:
        return frozenset()
    content = ad_store.get_account_data(conn, user_id, ad_store.GLOBAL, IGNORED_USER_LIST)
    users = (content or {}).get("ignored_users")
    if not isinstance(users, dict):
        return frozenset()
    return frozenset(u for u in users if isinstance(u, str) and u != user_id)


def is_hidden(rec: EventRecord, ignored: frozenset[str]) -> bool:
    """A non-state event sent by an ignored user."""
    return bool(ignored) and rec.event.state_key is None and rec.event.sender in ignored


def without_ignored(records: Iterable[EventRecord], ignored: frozenset[str]) -> list[EventRecord]:
    return [r for r in records if not is_hidden(r, ignored)]
