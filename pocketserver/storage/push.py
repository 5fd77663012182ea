"""Push rules, pushers and the pusher worker's position.

User-defined rules are stored per (user, kind, rule_id) with an integer priority (higher
is more important); the server-default rules are code (protocol/push_rules.py), and only
a user's enabled/actions changes to them are stored (``push_rule_overrides``).

There is no per-member notification row: counts and /notifications are computed from
the timeline when read (services/push.py). The queries over the event stream here are
the ones that evaluation needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pocketserver.storage import events as ev_store
from pocketserver.storage.database import Conn
from pocketserver.storage.events import EventRecord

PUSH_POSITION_KEY = "push_stream_pos"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# -- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRule:
    kind: str
    rule_id: str
    priority: int
    data: dict[str, Any]  # {"actions", "conditions" | "pattern"}
    enabled: bool


def get_user_rules(conn: Conn, user_id: str) -> list[StoredRule]:
    """A user's own rules, each kind most important first."""
    return [
        StoredRule(kind, rule_id, int(prio), json.loads(data), bool(enabled))
        for kind, rule_id, prio, data, enabled in conn.execute(
            "SELECT kind, rule_id, priority, rule_json, enabled FROM push_rules"
            " WHERE user_id = ? ORDER BY kind, priority DESC, rule_id",
            (user_id,),
        )
    ]


def count_user_rules(conn: Conn, user_id: str) -> int:
    """How many push rules this user has defined (all kinds)."""
    (n,) = conn.execute("SELECT COUNT(*) FROM push_rules WHERE user_id = ?", (user_id,)).fetchone()
    return int(n)


def get_rule_ids(conn: Conn, user_id: str, kind: str) -> list[str]:
    """The user's rule IDs of one kind, most important first."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT rule_id FROM push_rules WHERE user_id = ? AND kind = ?"
            " ORDER BY priority DESC, rule_id",
            (user_id, kind),
        )
    ]


def upsert_rule(conn: Conn, user_id: str, kind: str, rule_id: str, priority: int, data: dict[str, Any]) -> None:
    """Create (enabled) or replace a rule's definition; an existing rule keeps ``enabled``."""
    conn.execute(
        "INSERT INTO push_rules (user_id, kind, rule_id, priority, rule_json, enabled)"
        " VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (user_id, kind, rule_id)"
        " DO UPDATE SET priority = excluded.priority, rule_json = excluded.rule_json",
        (user_id, kind, rule_id, priority, _dumps(data)),
    )


def set_priorities(conn: Conn, user_id: str, kind: str, ordered_ids: Sequence[str]) -> None:
    """Renumber one kind's rules so that ``ordered_ids[0]`` is the most important."""
    n = len(ordered_ids)
    for i, rule_id in enumerate(ordered_ids):
        conn.execute(
            "UPDATE push_rules SET priority = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
            (n - i, user_id, kind, rule_id),
        )


def delete_rule(conn: Conn, user_id: str, kind: str, rule_id: str) -> bool:
    conn.execute(
        "DELETE FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
        (user_id, kind, rule_id),
    )
    return bool(conn.changes())


def set_rule_enabled(conn: Conn, user_id: str, kind: str, rule_id: str, enabled: bool) -> bool:
    conn.execute(
        "UPDATE push_rules SET enabled = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
        (int(enabled), user_id, kind, rule_id),
    )
    return bool(conn.changes())


def set_rule_actions(conn: Conn, user_id: str, kind: str, rule_id: str, actions: list[Any]) -> bool:
    row = conn.execute(
        "SELECT rule_json FROM push_rules WHERE user_id = ? AND kind = ? AND rule_id = ?",
        (user_id, kind, rule_id),
    ).fetchone()
    if row is None:
        return False
    data = json.loads(row[0])
    data["actions"] = actions
    conn.execute(
        "UPDATE push_rules SET rule_json = ? WHERE user_id = ? AND kind = ? AND rule_id = ?",
        (_dumps(data), user_id, kind, rule_id),
    )
    return True


def get_default_overrides(conn: Conn, user_id: str) -> dict[str, tuple[bool | None, list[Any] | None]]:
    return {
        rule_id: (
            None if enabled is None else bool(enabled),
            None if actions is None else json.loads(actions),
        )
        for rule_id, enabled, actions in conn.execute(
            "SELECT rule_id, enabled, actions_json FROM push_rule_overrides WHERE user_id = ?",
            (user_id,),
        )
    }


def set_default_enabled(conn: Conn, user_id: str, rule_id: str, enabled: bool) -> None:
    conn.execute(
        "INSERT INTO push_rule_overrides (user_id, rule_id, enabled) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id, rule_id) DO UPDATE SET enabled = excluded.enabled",
        (user_id, rule_id, int(enabled)),
    )


def set_default_actions(conn: Conn, user_id: str, rule_id: str, actions: list[Any]) -> None:
    conn.execute(
        "INSERT INTO push_rule_overrides (user_id, rule_id, actions_json) VALUES (?, ?, ?)"
        " ON CONFLICT (user_id, rule_id) DO UPDATE SET actions_json = excluded.actions_json",
        (user_id, rule_id, _dumps(actions)),
    )


# -- pushers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    info: dict[str, Any]  # as GET /pushers shows it
    device_id: str | None
    pushkey_ts: int
    last_stream_pos: int
    failing_since: int | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.app_id, self.pushkey, self.user_id)


_PUSHER_COLS = (
    "user_id, app_id, pushkey, kind, pusher_json, device_id, pushkey_ts, last_stream_pos,"
    " failing_since"
)


def _pusher(row: Sequence[Any]) -> Pusher:
    return Pusher(
        row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], int(row[6]), int(row[7]),
        None if row[8] is None else int(row[8]),
    )  # fmt: skip


def upsert_pusher(
    conn: Conn,
    user_id: str,
    app_id: str,
    pushkey: str,
    kind: str,
    info: dict[str, Any],
    device_id: str | None,
    now_ms: int,
    stream_pos: int,
) -> None:
    """Create or update a pusher; a new one handles events after ``stream_pos``."""
    conn.execute(
        f"INSERT INTO pushers ({_PUSHER_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)"
        " ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET kind = excluded.kind,"
        " pusher_json = excluded.pusher_json, device_id = excluded.device_id,"
        " pushkey_ts = excluded.pushkey_ts, failing_since = NULL",
        (user_id, app_id, pushkey, kind, _dumps(info), device_id, now_ms, stream_pos),
    )


def has_pusher(conn: Conn, user_id: str, app_id: str, pushkey: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id = ?",
        (app_id, pushkey, user_id),
    ).fetchone()
    return row is not None


def count_user_pushers(conn: Conn, user_id: str) -> int:
    (n,) = conn.execute("SELECT COUNT(*) FROM pushers WHERE user_id = ?", (user_id,)).fetchone()
    return int(n)


def delete_pusher(conn: Conn, user_id: str, app_id: str, pushkey: str) -> bool:
    conn.execute(
        "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id = ?",
        (app_id, pushkey, user_id),
    )
    return bool(conn.changes())


def delete_other_users_pushers(conn: Conn, app_id: str, pushkey: str, user_id: str) -> int:
    """``append: false``: no other user keeps a pusher with this app ID and pushkey."""
    conn.execute(
        "DELETE FROM pushers WHERE app_id = ? AND pushkey = ? AND user_id != ?",
        (app_id, pushkey, user_id),
    )
    return int(conn.changes())


def delete_device_pushers(conn: Conn, user_id: str, device_id: str) -> int:
    conn.execute("DELETE FROM pushers WHERE user_id = ? AND device_id = ?", (user_id, device_id))
    return int(conn.changes())


def delete_user_pushers(conn: Conn, user_id: str) -> int:
    conn.execute("DELETE FROM pushers WHERE user_id = ?", (user_id,))
    return int(conn.changes())


def get_pushers(conn: Conn, user_id: str) -> list[Pusher]:
    return [
        _pusher(r)
        for r in conn.execute(
            f"SELECT {_PUSHER_COLS} FROM pushers WHERE user_id = ? ORDER BY app_id, pushkey",
            (user_id,),
        )
    ]


def get_all_pushers(conn: Conn) -> list[Pusher]:
    return [_pusher(r) for r in conn.execute(f"SELECT {_PUSHER_COLS} FROM pushers")]


def pushers_in_room(conn: Conn, room_id: str, extra_users: Iterable[str] = ()) -> list[Pusher]:
    """Pushers of the users joined to ``room_id`` (plus ``extra_users``, e.g. an invitee).

    Walks the pushers (few), never the room's members (possibly thousands).
    """
    rnid = ev_store.room_nid(conn, room_id)
    if rnid is None:
        return []
    out = [
        _pusher(r)
        for r in conn.execute(
            f"SELECT {', '.join('p.' + c.strip() for c in _PUSHER_COLS.split(','))}"
            " FROM pushers p JOIN room_memberships m ON m.user_id = p.user_id"
            " WHERE m.room_nid = ? AND m.membership = 'join'",
            (rnid,),
        )
    ]
    seen = {p.key for p in out}
    for user_id in extra_users:
        for p in get_pushers(conn, user_id):
            if p.key not in seen:
                out.append(p)
                seen.add(p.key)
    return out


def set_pusher_progress(conn: Conn, key: tuple[str, str, str], stream_pos: int) -> None:
    app_id, pushkey, user_id = key
    conn.execute(
        "UPDATE pushers SET last_stream_pos = MAX(last_stream_pos, ?), failing_since = NULL"
        " WHERE app_id = ? AND pushkey = ? AND user_id = ?",
        (stream_pos, app_id, pushkey, user_id),
    )


def set_pusher_failing(conn: Conn, key: tuple[str, str, str], since_ms: int | None) -> None:
    app_id, pushkey, user_id = key
    conn.execute(
        "UPDATE pushers SET failing_since = ? WHERE app_id = ? AND pushkey = ? AND user_id = ?",
        (since_ms, app_id, pushkey, user_id),
    )


# -- the pusher worker's position in the event stream --------------------------------------------


def get_push_position(conn: Conn) -> int | None:
    row = conn.execute("SELECT value FROM server_meta WHERE key = ?", (PUSH_POSITION_KEY,)).fetchone()
    return None if row is None else int(row[0])


def set_push_position(conn: Conn, pos: int) -> None:
    conn.execute(
        "INSERT INTO server_meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (PUSH_POSITION_KEY, str(pos)),
    )


# -- the event stream, as evaluation reads it ------------------------------------------------


def events_after(conn: Conn, after_pos: int, upto: int, limit: int) -> list[EventRecord]:
    """Accepted timeline events in (after_pos, upto], oldest first, at most ``limit``."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT event_id FROM events WHERE stream_pos > ? AND stream_pos <= ?"
            " AND rejected_reason IS NULL ORDER BY stream_pos LIMIT ?",
            (after_pos, upto, limit),
        )
    ]
    recs = ev_store.get_events(conn, ids)
    return [recs[i] for i in ids if i in recs]


def invites_from_elsewhere_after(conn: Conn, after_pos: int, upto: int) -> list[tuple[EventRecord, int]]:
    """Invites of users with an HTTP pusher into rooms this server is not in, received in
    (after_pos, upto], oldest first, each with the stream position of the membership.

    Such an invite arrives alone (``PUT /invite``), is kept as an outlier with no
    timeline position, and is the invitee's membership until they join: it is never
    among :func:`events_after`, yet the invitee is to be told about it.
    """
    rows = conn.execute(
        "SELECT e.event_id, m.stream_pos FROM room_memberships m"
        " JOIN events e ON e.event_nid = m.event_nid"
        " WHERE m.user_id IN (SELECT user_id FROM pushers WHERE kind = 'http')"
        " AND m.stream_pos > ? AND m.stream_pos <= ? AND m.membership = 'invite'"
        " AND e.stream_pos IS NULL AND e.rejected_reason IS NULL"
        " ORDER BY m.stream_pos",
        (after_pos, upto),
    ).fetchall()
    recs = ev_store.get_events(conn, [r[0] for r in rows])
    return [(recs[eid], int(pos)) for eid, pos in rows if eid in recs]


def events_in_rooms_before(
    conn: Conn, room_ids: Iterable[str], before_pos: int | None, limit: int, not_sender: str
) -> list[EventRecord]:
    """Timeline events of some rooms before a position, newest first (for /notifications)."""
    nids = [n for n in (ev_store.room_nid(conn, r) for r in room_ids) if n is not None]
    if not nids:
        return []
    marks = ",".join("?" * len(nids))
    args: list[Any] = [*nids, not_sender]
    sql = (
        f"SELECT event_id FROM events WHERE room_nid IN ({marks}) AND sender != ?"
        " AND stream_pos IS NOT NULL AND rejected_reason IS NULL"
    )
    if before_pos is not None:
        sql += " AND stream_pos < ?"
        args.append(before_pos)
    sql += " ORDER BY stream_pos DESC LIMIT ?"
    args.append(limit)
    ids = [r[0] for r in conn.execute(sql, args)]
    recs = ev_store.get_events(conn, ids)
    return [recs[i] for i in ids if i in recs]


def read_positions(conn: Conn, room_id: str, user_id: str) -> dict[str, int]:
    """{thread_id ('' = unthreaded): the furthest stream position the user has read},
    over both ``m.read`` and ``m.read.private`` (whichever is further ahead counts)."""
    rnid = ev_store.room_nid(conn, room_id)
    if rnid is None:
        return {}
    return {
        tid: int(pos)
        for tid, pos in conn.execute(
            "SELECT r.thread_id, MAX(e.stream_pos) FROM receipts r"
            " JOIN events e ON e.event_id = r.event_id"
            " WHERE r.room_nid = ? AND r.receipt_type IN ('m.read', 'm.read.private')"
            " AND r.user_id = ? AND e.stream_pos IS NOT NULL GROUP BY r.thread_id",
            (rnid, user_id),
        )
        if pos is not None
    }


def read_receipts_of_pusher_users(conn: Conn, after_pos: int, upto: int) -> list[tuple[str, int]]:
    """(user_id, latest stream position) of the users with an HTTP pusher whose ``m.read``
    or ``m.read.private`` receipt moved in (after_pos, upto], oldest first."""
    return [
        (str(user_id), int(pos))
        for user_id, pos in conn.execute(
            "SELECT r.user_id, MAX(r.stream_pos) FROM receipts r"
            " WHERE r.stream_pos > ? AND r.stream_pos <= ?"
            " AND r.receipt_type IN ('m.read', 'm.read.private')"
            " AND r.user_id IN (SELECT user_id FROM pushers WHERE kind = 'http')"
            " GROUP BY r.user_id ORDER BY 2",
            (after_pos, upto),
        )
    ]


def count_pushers(conn: Conn) -> int:
    (n,) = conn.execute("SELECT COUNT(*) FROM pushers").fetchone()
    return int(n)
