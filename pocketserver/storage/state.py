"""Room state: snapshots plus deltas, the current state, and memberships.

A *state group* is the full state of a room at some point. It is stored as the group's
parent plus the entries that differ (``state_group_entries``; ``event_nid`` NULL deletes
a key), or as a full snapshot when it has no parent. A new snapshot is written only once
the deltas piled on the last snapshot hold as many rows as the snapshot itself, so:

* a message costs no state rows (it keeps its parent's group);
* a state event costs one group row and one entry row, amortised to at most two, whatever
  the number of members (a 10,000-member room does not copy 10,000 rows per event);
* loading a group reads at most about twice the state's size, in one recursive query.

State maps handed to services are ``dict[(type, state_key), event_id]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pocketserver.storage.database import Conn
from pocketserver.storage.events import event_nid, lookup_state_key_nid, room_nid, state_key_nid

StateMap = dict[tuple[str, str], str]

# Never chain a snapshot of fewer rows than this: small rooms stay in few groups.
MIN_SNAPSHOT_ROWS = 32


def _load_group_nids(conn: Conn, group: int) -> dict[int, int]:
    """{sk_nid: event_nid} of a state group."""
    rows = conn.execute(
        "WITH RECURSIVE chain(g, d) AS ("
        "  SELECT ?, 0"
        "  UNION ALL SELECT s.parent_nid, chain.d + 1 FROM state_groups s JOIN chain"
        "  ON s.group_nid = chain.g WHERE s.parent_nid IS NOT NULL)"
        " SELECT e.sk_nid, e.event_nid FROM state_group_entries e JOIN chain ON e.group_nid = chain.g"
        " ORDER BY chain.d DESC",
        (group,),
    ).fetchall()
    out: dict[int, int] = {}
    for sk, ev in rows:
        if ev is None:
            out.pop(sk, None)
        else:
            out[sk] = ev
    return out


# Parameters per IN (...) query: a big room's state is translated in a few statements.
_BATCH = 500


def _nids_to_ids(
    conn: Conn, state: Mapping[int, int], keep: Callable[[str, str], bool] | None = None
) -> StateMap:
    """Translate {sk_nid: event_nid} to {(type, state_key): event_id}, a few batched
    queries for any size; ``keep(type, state_key)``, when given, picks the keys whose
    event IDs are looked up at all (lazy-loaded members: a handful of a big room's)."""
    sks = list(state)
    keys: dict[int, tuple[str, str]] = {}
    for i in range(0, len(sks), _BATCH):
        part = sks[i : i + _BATCH]
        for sk, etype, skey in conn.execute(
            f"SELECT sk_nid, type, state_key FROM state_keys WHERE sk_nid IN ({','.join('?' * len(part))})",
            part,
        ):
            if keep is None or keep(etype, skey):
                keys[sk] = (etype, skey)
    ids = _event_ids_by_nid(conn, (state[sk] for sk in sks if sk in keys))
    # Keep the group's order (the snapshot's, then the deltas'), as the row-by-row
    # translation did.
    out: StateMap = {}
    for sk in sks:
        key = keys.get(sk)
        if key is not None:
            eid = ids.get(state[sk])
            if eid is not None:
                out[key] = eid
    return out


def _event_ids_by_nid(conn: Conn, nids: Iterable[int]) -> dict[int, str]:
    wanted = list(nids)
    ids: dict[int, str] = {}
    for i in range(0, len(wanted), _BATCH):
        part = wanted[i : i + _BATCH]
        for nid, eid in conn.execute(
            f"SELECT event_nid, event_id FROM events WHERE event_nid IN ({','.join('?' * len(part))})",
            part,
        ):
            ids[nid] = eid
    return ids


def load_state_group(
    conn: Conn, group: int, keep: Callable[[str, str], bool] | None = None
) -> StateMap:
    return _nids_to_ids(conn, _load_group_nids(conn, group), keep)


def create_state_group(
    conn: Conn, room_id: str, parent: int | None, changes: Mapping[tuple[str, str], str | None]
) -> int:
    """A new group: ``parent`` with ``changes`` applied (value None removes the key)."""
    rnid = room_nid(conn, room_id)
    assert rnid is not None
    delta: dict[int, int | None] = {}
    for (etype, skey), eid in changes.items():
        sk = state_key_nid(conn, etype, skey)
        delta[sk] = None if eid is None else event_nid(conn, eid)
        if eid is not None and delta[sk] is None:
            raise KeyError(f"state event {eid} is not stored")
    if parent is None:
        return _write_group(conn, rnid, None, 0, {k: v for k, v in delta.items() if v is not None})
    prow = conn.execute(
        "SELECT parent_nid, chain_len, size FROM state_groups WHERE group_nid = ?", (parent,)
    ).fetchone()
    if prow is None:
        raise KeyError(f"unknown state group {parent}")
    _pparent, p_chain, p_size = prow
    snapshot_rows = _snapshot_rows(conn, parent)
    if p_chain + len(delta) > max(MIN_SNAPSHOT_ROWS, snapshot_rows):
        state = _load_group_nids(conn, parent)
        for sk, ev in delta.items():
            if ev is None:
                state.pop(sk, None)
            else:
                state[sk] = ev
        return _write_group(conn, rnid, None, 0, state)
    size = p_size
    for sk, ev in delta.items():
        had = conn.execute(
            "WITH RECURSIVE chain(g, d) AS (SELECT ?, 0 UNION ALL SELECT s.parent_nid, chain.d + 1"
            " FROM state_groups s JOIN chain ON s.group_nid = chain.g WHERE s.parent_nid IS NOT NULL)"
            " SELECT e.event_nid FROM state_group_entries e JOIN chain ON e.group_nid = chain.g"
            " WHERE e.sk_nid = ? ORDER BY chain.d ASC LIMIT 1",
            (parent, sk),
        ).fetchone()
        present = had is not None and had[0] is not None
        if ev is None and present:
            size -= 1
        elif ev is not None and not present:
            size += 1
    return _write_group(conn, rnid, parent, p_chain + len(delta), delta, size=size)


def _snapshot_rows(conn: Conn, group: int) -> int:
    """Size of the full snapshot at the root of ``group``'s chain."""
    row = conn.execute(
        "WITH RECURSIVE chain(g) AS (SELECT ? UNION ALL SELECT s.parent_nid FROM state_groups s"
        " JOIN chain ON s.group_nid = chain.g WHERE s.parent_nid IS NOT NULL)"
        " SELECT s.size FROM state_groups s JOIN chain ON s.group_nid = chain.g"
        " WHERE s.parent_nid IS NULL",
        (group,),
    ).fetchone()
    return int(row[0]) if row else 0


def _write_group(
    conn: Conn,
    rnid: int,
    parent: int | None,
    chain_len: int,
    entries: Mapping[int, int | None],
    *,
    size: int | None = None,
) -> int:
    if size is None:
        size = sum(1 for v in entries.values() if v is not None)
    conn.execute(
        "INSERT INTO state_groups (room_nid, parent_nid, chain_len, size) VALUES (?, ?, ?, ?)",
        (rnid, parent, chain_len, size),
    )
    group = int(conn.last_insert_rowid())
    conn.executemany(
        "INSERT INTO state_group_entries (group_nid, sk_nid, event_nid) VALUES (?, ?, ?)",
        [(group, sk, ev) for sk, ev in entries.items()],
    )
    return group


def set_event_state(conn: Conn, event_id: str, group: int | None, replaces_id: str | None) -> None:
    """Record the state group after an event, and for a state event what it replaced."""
    replaces = event_nid(conn, replaces_id) if replaces_id else None
    conn.execute(
        "UPDATE events SET state_group = ?, replaces_nid = ? WHERE event_id = ?",
        (group, replaces, event_id),
    )


def event_state_group(conn: Conn, event_id: str) -> int | None:
    row = conn.execute("SELECT state_group FROM events WHERE event_id = ?", (event_id,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def state_before_event(
    conn: Conn, event_id: str, keep: Callable[[str, str], bool] | None = None
) -> StateMap | None:
    """The room state just before ``event_id`` (None if not known); only the keys
    ``keep(type, state_key)`` accepts, when given."""
    row = conn.execute(
        "SELECT e.state_group, e.sk_nid, e.replaces_nid, e.rejected_reason FROM events e"
        " WHERE e.event_id = ?",
        (event_id,),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    group, sk, replaces, rejected = row
    state = _load_group_nids(conn, group)
    if sk is not None and rejected is None:
        if replaces is None:
            state.pop(sk, None)
        else:
            state[sk] = replaces
    return _nids_to_ids(conn, state, keep)


def state_after_event(
    conn: Conn, event_id: str, keep: Callable[[str, str], bool] | None = None
) -> StateMap | None:
    group = event_state_group(conn, event_id)
    return None if group is None else load_state_group(conn, group, keep)


# -- current state ---------------------------------------------------------------------------


def current_state_group(conn: Conn, room_id: str) -> int | None:
    row = conn.execute(
        "SELECT current_state_group FROM rooms WHERE room_id = ?", (room_id,)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def set_current_state(
    conn: Conn, room_id: str, group: int, changes: Mapping[tuple[str, str], str | None]
) -> None:
    """Point the room at ``group`` and apply ``changes`` to the current_state table."""
    rnid = room_nid(conn, room_id)
    assert rnid is not None
    conn.execute("UPDATE rooms SET current_state_group = ? WHERE room_nid = ?", (group, rnid))
    for (etype, skey), eid in changes.items():
        sk = state_key_nid(conn, etype, skey)
        if eid is None:
            conn.execute(
                "DELETE FROM current_state WHERE room_nid = ? AND sk_nid = ?", (rnid, sk)
            )
        else:
            nid = event_nid(conn, eid)
            conn.execute(
                "INSERT OR REPLACE INTO current_state (room_nid, sk_nid, event_nid) VALUES (?, ?, ?)",
                (rnid, sk, nid),
            )


def get_current_state_ids(
    conn: Conn,
    room_id: str,
    keys: Iterable[tuple[str, str]] | None = None,
    *,
    etype: str | None = None,
    keep: Callable[[str, str], bool] | None = None,
) -> StateMap:
    """Current state of a room: all of it, only ``keys``, only one event type, or only
    the keys ``keep(type, state_key)`` accepts."""
    rnid = room_nid(conn, room_id)
    if rnid is None:
        return {}
    out: StateMap = {}
    if keys is not None:
        for k in keys:
            sk = lookup_state_key_nid(conn, k[0], k[1])
            if sk is None:
                continue
            row = conn.execute(
                "SELECT e.event_id FROM current_state c JOIN events e ON e.event_nid = c.event_nid"
                " WHERE c.room_nid = ? AND c.sk_nid = ?",
                (rnid, sk),
            ).fetchone()
            if row is not None:
                out[k] = row[0]
        return out
    # The keys first, the event IDs of the wanted ones after: with ``keep`` (a
    # lazy-loading sync) a big room's members are never looked up, only a handful.
    sql = (
        "SELECT k.type, k.state_key, c.event_nid FROM current_state c"
        " JOIN state_keys k ON k.sk_nid = c.sk_nid WHERE c.room_nid = ?"
    )
    args: list[Any] = [rnid]
    if etype is not None:
        sql += " AND k.type = ?"
        args.append(etype)
    kept = {(t, s): nid for t, s, nid in conn.execute(sql, args) if keep is None or keep(t, s)}
    ids = _event_ids_by_nid(conn, kept.values())
    for k, nid in kept.items():
        eid = ids.get(nid)
        if eid is not None:
            out[k] = eid
    return out


def current_state_since(conn: Conn, room_id: str, since: int) -> StateMap:
    """Current state entries whose event arrived after stream position ``since``."""
    rnid = room_nid(conn, room_id)
    if rnid is None:
        return {}
    return {
        (t, s): eid
        for t, s, eid in conn.execute(
            "SELECT k.type, k.state_key, e.event_id FROM current_state c"
            " JOIN state_keys k ON k.sk_nid = c.sk_nid JOIN events e ON e.event_nid = c.event_nid"
            " WHERE c.room_nid = ? AND (e.stream_pos > ? OR e.stream_pos IS NULL)",
            (rnid, since),
        )
    }


# -- memberships ----------------------------------------------------------------------------


def set_membership(
    conn: Conn,
    room_id: str,
    user_id: str,
    membership: str,
    event_id: str,
    stream_pos: int,
    is_local: bool,
) -> None:
    rnid = room_nid(conn, room_id)
    nid = event_nid(conn, event_id)
    conn.execute(
        "INSERT INTO room_memberships (room_nid, user_id, membership, event_nid, stream_pos,"
        " is_local, forgotten) VALUES (?, ?, ?, ?, ?, ?, 0)"
        " ON CONFLICT (room_nid, user_id) DO UPDATE SET membership = excluded.membership,"
        " event_nid = excluded.event_nid, stream_pos = excluded.stream_pos, forgotten = 0",
        (rnid, user_id, membership, nid, stream_pos, int(is_local)),
    )


def get_membership(conn: Conn, room_id: str, user_id: str) -> tuple[str, str] | None:
    """(membership, event_id) of a user in a room, as of the current state."""
    row = conn.execute(
        "SELECT m.membership, e.event_id FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid"
        " JOIN events e ON e.event_nid = m.event_nid WHERE r.room_id = ? AND m.user_id = ?",
        (room_id, user_id),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def rooms_for_user(
    conn: Conn, user_id: str, memberships: Iterable[str] = ("join",), *, include_forgotten: bool = False
) -> dict[str, tuple[str, int]]:
    """{room_id: (membership, stream_pos)} for a user's rooms with the given memberships."""
    ms = list(memberships)
    marks = ",".join("?" * len(ms))
    sql = (
        "SELECT r.room_id, m.membership, m.stream_pos FROM room_memberships m"
        f" JOIN rooms r ON r.room_nid = m.room_nid WHERE m.user_id = ? AND m.membership IN ({marks})"
    )
    if not include_forgotten:
        sql += " AND m.forgotten = 0"
    return {rid: (mem, pos) for rid, mem, pos in conn.execute(sql, (user_id, *ms))}


def membership_changes(conn: Conn, user_id: str, since: int, upto: int) -> dict[str, tuple[str, int]]:
    """{room_id: (membership, stream_pos)} for a user's membership changes in (since, upto]."""
    return {
        rid: (mem, pos)
        for rid, mem, pos in conn.execute(
            "SELECT r.room_id, m.membership, m.stream_pos FROM room_memberships m"
            " JOIN rooms r ON r.room_nid = m.room_nid"
            " WHERE m.user_id = ? AND m.stream_pos > ? AND m.stream_pos <= ? AND m.forgotten = 0",
            (user_id, since, upto),
        )
    }


def room_members(conn: Conn, room_id: str, membership: str | None = "join") -> list[str]:
    sql = (
        "SELECT m.user_id FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid"
        " WHERE r.room_id = ?"
    )
    args: list[Any] = [room_id]
    if membership is not None:
        sql += " AND m.membership = ?"
        args.append(membership)
    return [r[0] for r in conn.execute(sql, args)]


def count_members(conn: Conn, room_id: str, membership: str = "join") -> int:
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid"
        " WHERE r.room_id = ? AND m.membership = ?",
        (room_id, membership),
    ).fetchone()
    return int(n)


def local_members(conn: Conn, room_id: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT m.user_id FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid"
            " WHERE r.room_id = ? AND m.membership = 'join' AND m.is_local = 1",
            (room_id,),
        )
    ]


def rooms_with_local_guests(conn: Conn) -> list[str]:
    """The rooms a guest account of this server is joined to."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT r.room_id FROM room_memberships m"
            " JOIN rooms r ON r.room_nid = m.room_nid JOIN users u ON u.user_id = m.user_id"
            " WHERE m.membership = 'join' AND m.is_local = 1 AND u.is_guest = 1"
        )
    ]


def has_local_member(conn: Conn, room_id: str) -> bool:
    """Whether a user of this server is joined to the room (this server is in it)."""
    row = conn.execute(
        "SELECT 1 FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid"
        " WHERE r.room_id = ? AND m.membership = 'join' AND m.is_local = 1 LIMIT 1",
        (room_id,),
    ).fetchone()
    return row is not None


def servers_in_room(conn: Conn, room_id: str) -> set[str]:
    return {
        uid.split(":", 1)[1]
        for uid in room_members(conn, room_id)
        if ":" in uid
    }


def users_sharing_rooms(conn: Conn, user_id: str) -> set[str]:
    return {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT o.user_id FROM room_memberships m"
            " JOIN room_memberships o ON o.room_nid = m.room_nid"
            " WHERE m.user_id = ? AND m.membership = 'join' AND o.membership = 'join'",
            (user_id,),
        )
    }


def forget_room(conn: Conn, room_id: str, user_id: str) -> None:
    conn.execute(
        "UPDATE room_memberships SET forgotten = 1 WHERE user_id = ? AND room_nid ="
        " (SELECT room_nid FROM rooms WHERE room_id = ?)",
        (user_id, room_id),
    )


def user_membership_history(conn: Conn, room_id: str, user_id: str) -> list[tuple[int, str]]:
    """(stream_pos, membership) of every membership event of a user in a room, oldest first."""
    rnid = room_nid(conn, room_id)
    sk = lookup_state_key_nid(conn, "m.room.member", user_id)
    if rnid is None or sk is None:
        return []
    from pocketserver.storage.events import decode_pdu

    out: list[tuple[int, str]] = []
    for pos, blob in conn.execute(
        "SELECT stream_pos, json FROM events WHERE room_nid = ? AND sk_nid = ?"
        " AND stream_pos IS NOT NULL AND rejected_reason IS NULL ORDER BY stream_pos",
        (rnid, sk),
    ):
        content = decode_pdu(blob).get("content", {})
        m = content.get("membership") if isinstance(content, dict) else None
        if isinstance(m, str):
            out.append((int(pos), m))
    return out


def has_backfilled_history(conn: Conn, room_id: str) -> bool:
    """Whether history was backfilled into the room (negative stream positions)."""
    return conn.execute(
        "SELECT 1 FROM events WHERE room_nid = (SELECT room_nid FROM rooms WHERE room_id = ?)"
        " AND stream_pos < 0 LIMIT 1",
        (room_id,),
    ).fetchone() is not None


def earliest_state_before(conn: Conn, room_id: str, etype: str, state_key: str) -> tuple[int, dict[str, Any] | None] | None:
    """The earliest event of the room's timeline whose state is known (the create
    event; in a room joined over federation, this server's join, before which
    backfilled history sorts with no state of its own): its stream position and the
    content of ``(etype, state_key)`` in the state just before it (None: not in that
    state). None if no timeline event has state. One statement: the event's state
    group is the state *after* it, so its own change is undone through replaces_nid,
    else the key is read from the group's chain of deltas (nearest first)."""
    row = conn.execute(
        "WITH a AS (SELECT stream_pos, state_group, sk_nid, replaces_nid, rejected_reason FROM events"
        "  WHERE room_nid = (SELECT room_nid FROM rooms WHERE room_id = ?)"
        "  AND stream_pos >= 0 AND state_group IS NOT NULL ORDER BY stream_pos LIMIT 1),"
        " k AS (SELECT sk_nid FROM state_keys WHERE type = ? AND state_key = ?),"
        " chain(g, d) AS (SELECT state_group, 0 FROM a"
        "  UNION ALL SELECT s.parent_nid, chain.d + 1 FROM state_groups s JOIN chain"
        "  ON s.group_nid = chain.g WHERE s.parent_nid IS NOT NULL)"
        " SELECT a.stream_pos, (SELECT json FROM events WHERE event_nid = CASE"
        "  WHEN a.sk_nid = (SELECT sk_nid FROM k) AND a.rejected_reason IS NULL THEN a.replaces_nid"
        "  ELSE (SELECT e.event_nid FROM state_group_entries e JOIN chain ON e.group_nid = chain.g"
        "   WHERE e.sk_nid = (SELECT sk_nid FROM k) ORDER BY chain.d LIMIT 1) END)"
        " FROM a",
        (room_id, etype, state_key),
    ).fetchone()
    if row is None:
        return None
    pos, blob = row
    if blob is None:
        return int(pos), None
    from pocketserver.storage.events import decode_pdu

    content = decode_pdu(blob).get("content")
    return int(pos), content if isinstance(content, dict) else {}


def state_history(conn: Conn, room_id: str, etype: str, state_key: str) -> list[tuple[int, dict[str, Any]]]:
    """(stream_pos, content) of every event of one state key, oldest first."""
    rnid = room_nid(conn, room_id)
    sk = lookup_state_key_nid(conn, etype, state_key)
    if rnid is None or sk is None:
        return []
    from pocketserver.storage.events import decode_pdu

    out: list[tuple[int, dict[str, Any]]] = []
    for pos, blob in conn.execute(
        "SELECT stream_pos, json FROM events WHERE room_nid = ? AND sk_nid = ?"
        " AND stream_pos IS NOT NULL AND rejected_reason IS NULL ORDER BY stream_pos",
        (rnid, sk),
    ):
        content = decode_pdu(blob).get("content", {})
        out.append((int(pos), content if isinstance(content, dict) else {}))
    return out
