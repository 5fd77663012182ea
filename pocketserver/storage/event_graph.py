"""The event graph as federation reads and grows it: which events are known and how,
auth chains, walks back through prev_events (backfill, get_missing_events), backward
extremities, outliers, and the received-transactions ledger.

Plain SQL over the tables of storage/schema.py (events, event_edges, event_auth_edges,
backward_extremities, received_transactions); IDs in, IDs out.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pocketserver.protocol.server_acl import server_allowed
from pocketserver.storage.database import Conn
from pocketserver.storage.events import _index_content, event_nid, get_event, get_events, room_nid
from pocketserver.storage.state import get_current_state_ids

_BATCH = 256


@dataclass(frozen=True, slots=True)
class Known:
    """How this server holds an event."""

    outlier: bool
    has_state: bool  # a state group: the state at the event is known
    rejected: bool
    in_timeline: bool


def known_events(conn: Conn, event_ids: Iterable[str]) -> dict[str, Known]:
    wanted = list(dict.fromkeys(event_ids))
    out: dict[str, Known] = {}
    for i in range(0, len(wanted), _BATCH):
        part = wanted[i : i + _BATCH]
        for eid, outlier, group, rejected, pos in conn.execute(
            "SELECT event_id, outlier, state_group, rejected_reason, stream_pos FROM events"
            f" WHERE event_id IN ({','.join('?' * len(part))})",
            part,
        ):
            out[eid] = Known(bool(outlier), group is not None, rejected is not None, pos is not None)
    return out


def auth_chain_ids(conn: Conn, event_ids: Iterable[str], limit: int = 1_000_000) -> set[str]:
    """Every event reachable through auth_events from ``event_ids`` (not themselves,
    unless reachable), as far as this server knows the graph."""
    seen: set[str] = set()
    frontier = list(dict.fromkeys(event_ids))
    while frontier and len(seen) < limit:
        nxt: list[str] = []
        for i in range(0, len(frontier), _BATCH):
            part = frontier[i : i + _BATCH]
            for (aid,) in conn.execute(
                "SELECT a.auth_event_id FROM event_auth_edges a JOIN events e ON e.event_nid = a.event_nid"
                f" WHERE e.event_id IN ({','.join('?' * len(part))})",
                part,
            ):
                if aid not in seen:
                    seen.add(aid)
                    nxt.append(aid)
        frontier = nxt
    return seen


def prev_event_ids(conn: Conn, event_id: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT ed.prev_event_id FROM event_edges ed JOIN events e ON e.event_nid = ed.event_nid"
            " WHERE e.event_id = ?",
            (event_id,),
        )
    ]


def walk_back(
    conn: Conn,
    room_id: str,
    start: Iterable[str],
    *,
    limit: int,
    stop_at: Iterable[str] = (),
    min_depth: int = 0,
    include_start: bool,
) -> list[str]:
    """Events before ``start`` through prev_events, deepest first (backfill and
    get_missing_events): at most ``limit``, never past ``stop_at`` nor below
    ``min_depth``, only events of ``room_id`` that this server holds in the graph
    (outliers have no place in it)."""
    rnid = room_nid(conn, room_id)
    if rnid is None:
        return []
    stop = set(stop_at)
    seen: set[str] = set(stop)
    heap: list[tuple[int, str]] = []

    def push(eid: str) -> None:
        if eid in seen:
            return
        seen.add(eid)
        row = conn.execute(
            "SELECT depth, outlier, room_nid FROM events WHERE event_id = ?", (eid,)
        ).fetchone()
        if row is None or row[1] or row[2] != rnid or row[0] < min_depth:
            return
        heapq.heappush(heap, (-int(row[0]), eid))

    out: list[str] = []
    for eid in start:
        if include_start:
            push(eid)
        else:
            seen.add(eid)
            for p in prev_event_ids(conn, eid):
                push(p)
    while heap and len(out) < limit:
        _, eid = heapq.heappop(heap)
        out.append(eid)
        for p in prev_event_ids(conn, eid):
            push(p)
    return out


def server_in_room(conn: Conn, room_id: str, server_name: str) -> bool:
    """Whether any user of ``server_name`` is joined to the room (one query in SQLite,
    not a list of the room's members)."""
    return joined_users_of_server(conn, room_id, server_name, 1) > 0


def joined_users_of_server(conn: Conn, room_id: str, server_name: str, upto: int) -> int:
    """How many users of ``server_name`` are joined to the room, counted up to ``upto``."""
    suffix = ":" + server_name
    row = conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM room_memberships m JOIN rooms r ON r.room_nid = m.room_nid"
        " WHERE r.room_id = ? AND m.membership = 'join' AND substr(m.user_id, -?) = ? LIMIT ?)",
        (room_id, len(suffix), suffix, upto),
    ).fetchone()
    return int(row[0])


def acl_allows(conn: Conn, room_id: str, server_name: str) -> bool:
    """The room's current ``m.room.server_acl`` lets ``server_name`` take part."""
    ids = get_current_state_ids(conn, room_id, [("m.room.server_acl", "")])
    eid = ids.get(("m.room.server_acl", ""))
    rec = get_event(conn, eid) if eid is not None else None
    return server_allowed(rec.event.content if rec is not None else None, server_name)


# -- writing ------------------------------------------------------------------------------


def promote_outlier(conn: Conn, event_id: str, stream_pos: int | None, rejected_reason: str | None) -> None:
    """An event first stored as an outlier joins the graph (its state now known)."""
    conn.execute(
        "UPDATE events SET outlier = 0, stream_pos = ?, rejected_reason = ? WHERE event_id = ?",
        (stream_pos, rejected_reason, event_id),
    )
    nid = event_nid(conn, event_id)
    if nid is not None and rejected_reason is None:
        rec = get_events(conn, [event_id]).get(event_id)
        if rec is not None:
            conn.execute("DELETE FROM event_relations WHERE event_nid = ?", (nid,))
            conn.execute("DELETE FROM event_search WHERE rowid = ?", (nid,))
            _index_content(conn, nid, rec.event)


def replace_forward_extremities(conn: Conn, room_id: str, event_id: str) -> None:
    """The room's only forward extremity is now ``event_id`` (a join through another
    server: what this server held before is superseded by the state it was given)."""
    rnid = room_nid(conn, room_id)
    nid = event_nid(conn, event_id)
    conn.execute("DELETE FROM forward_extremities WHERE room_nid = ?", (rnid,))
    conn.execute("INSERT INTO forward_extremities (room_nid, event_nid) VALUES (?, ?)", (rnid, nid))


def update_backward_extremities(conn: Conn, room_id: str, event_id: str, missing_prevs: Iterable[str]) -> None:
    rnid = room_nid(conn, room_id)
    conn.execute("DELETE FROM backward_extremities WHERE room_nid = ? AND event_id = ?", (rnid, event_id))
    for p in missing_prevs:
        conn.execute(
            "INSERT OR IGNORE INTO backward_extremities (room_nid, event_id) VALUES (?, ?)", (rnid, p)
        )


def backward_extremities(conn: Conn, room_id: str) -> list[str]:
    rnid = room_nid(conn, room_id)
    return [r[0] for r in conn.execute("SELECT event_id FROM backward_extremities WHERE room_nid = ?", (rnid,))]


# -- received transactions ---------------------------------------------------------------


def get_received_transaction(conn: Conn, origin: str, txn_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT response_json FROM received_transactions WHERE origin = ? AND txn_id = ?",
        (origin, txn_id),
    ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def put_received_transaction(conn: Conn, origin: str, txn_id: str, response: dict[str, Any], now_ms: int) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO received_transactions (origin, txn_id, response_json, received_ts)"
        " VALUES (?, ?, ?, ?)",
        (origin, txn_id, json.dumps(response), now_ms),
    )


def delete_old_received_transactions(conn: Conn, before_ms: int) -> int:
    conn.execute("DELETE FROM received_transactions WHERE received_ts < ?", (before_ms,))
    return int(conn.changes())
