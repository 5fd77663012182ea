"""Relations between events (``m.relates_to``): children of an event, threads.

The ``event_relations`` rows are written with the event (``events.insert_event``) and
removed when the child is redacted (the relationship is then broken). Here: pages of
an event's children, optionally recursing through children of children.
"""

from __future__ import annotations

from typing import Any

from pocketserver.storage.database import Conn
from pocketserver.storage.events import _RECORD_COLS, _RECORD_FROM, EventRecord, _record

# How many levels of relations ``recurse`` follows (the spec asks for at least 3).
MAX_RECURSION_DEPTH = 3


def relation_children(
    conn: Conn,
    parent_id: str,
    *,
    rel_type: str | None,
    event_type: str | None,
    from_pos: int | None,
    to_pos: int | None,
    backwards: bool,
    limit: int,
    recurse: bool = False,
) -> list[EventRecord]:
    """Timeline events relating to ``parent_id``, in stream order.

    Positions: backwards returns ``to_pos < pos < from_pos``, newest first; forwards
    ``from_pos < pos <= to_pos``, oldest first (None: unbounded). With ``recurse``,
    events relating to those events are included, up to ``MAX_RECURSION_DEPTH``
    levels, following only children that themselves pass the ``rel_type`` /
    ``event_type`` filters.
    """
    match: list[str] = []
    match_args: list[Any] = []
    if rel_type is not None:
        match.append("r.rel_type = ?")
        match_args.append(rel_type)
    if event_type is not None:
        match.append("c.type = ?")
        match_args.append(event_type)
    match.append("c.stream_pos IS NOT NULL AND c.rejected_reason IS NULL")
    cond = " AND ".join(match)
    depth = MAX_RECURSION_DEPTH if recurse else 1
    bounds: list[str] = []
    bound_args: list[Any] = []
    if backwards:
        if from_pos is not None:
            bounds.append("e.stream_pos < ?")
            bound_args.append(from_pos)
        if to_pos is not None:
            bounds.append("e.stream_pos > ?")
            bound_args.append(to_pos)
    else:
        if from_pos is not None:
            bounds.append("e.stream_pos > ?")
            bound_args.append(from_pos)
        if to_pos is not None:
            bounds.append("e.stream_pos <= ?")
            bound_args.append(to_pos)
    where = " AND ".join(["e.event_nid IN (SELECT nid FROM tree)", *bounds])
    order = "DESC" if backwards else "ASC"
    sql = (
        "WITH RECURSIVE tree(nid, eid, depth) AS ("
        " SELECT c.event_nid, c.event_id, 1 FROM event_relations r"
        " JOIN events c ON c.event_nid = r.event_nid"
        f" WHERE r.relates_to_id = ? AND {cond}"
        " UNION"
        " SELECT c.event_nid, c.event_id, tree.depth + 1 FROM tree"
        " JOIN event_relations r ON r.relates_to_id = tree.eid"
        " JOIN events c ON c.event_nid = r.event_nid"
        f" WHERE tree.depth < ? AND {cond})"
        f" SELECT {_RECORD_COLS}{_RECORD_FROM}WHERE {where}"
        f" ORDER BY e.stream_pos {order} LIMIT ?"
    )
    args = [parent_id, *match_args, depth, *match_args, *bound_args, limit]
    return [_record(conn, row) for row in conn.execute(sql, args).fetchall()]


def thread_root_page(
    conn: Conn,
    room_id: str,
    *,
    participated_by: str | None,
    before_pos: int | None,
    limit: int,
) -> list[tuple[str, int]]:
    """(root event ID, position of its latest reply) of a room's threads, newest first.

    ``participated_by``: only threads whose root or a reply that user sent.
    ``before_pos``: only threads whose latest reply is before that position.
    """
    args: list[Any] = [room_id]
    extra = ""
    if participated_by is not None:
        extra = (
            " AND (root.sender = ? OR EXISTS (SELECT 1 FROM event_relations r2"
            " JOIN events e2 ON e2.event_nid = r2.event_nid WHERE r2.relates_to_id = root.event_id"
            " AND r2.rel_type = 'm.thread' AND e2.sender = ?))"
        )
        args += [participated_by, participated_by]
    having = ""
    if before_pos is not None:
        having = " HAVING MAX(reply.stream_pos) < ?"
        args.append(before_pos)
    args.append(limit)
    rows = conn.execute(
        "SELECT root.event_id, MAX(reply.stream_pos) AS latest FROM events root"
        " JOIN rooms r ON r.room_nid = root.room_nid"
        " JOIN event_relations rel ON rel.relates_to_id = root.event_id AND rel.rel_type = 'm.thread'"
        " JOIN events reply ON reply.event_nid = rel.event_nid"
        " AND reply.stream_pos IS NOT NULL AND reply.rejected_reason IS NULL"
        f" WHERE r.room_id = ? AND root.stream_pos IS NOT NULL{extra}"
        f" GROUP BY root.event_id{having} ORDER BY latest DESC LIMIT ?",
        args,
    ).fetchall()
    return [(str(eid), int(latest)) for eid, latest in rows]


def has_annotation(conn: Conn, parent_id: str, sender: str, event_type: str, key: str) -> bool:
    """Whether ``sender`` already annotated ``parent_id`` with (type, key), unredacted."""
    return (
        conn.execute(
            "SELECT 1 FROM event_relations r JOIN events e ON e.event_nid = r.event_nid"
            " WHERE r.relates_to_id = ? AND r.rel_type = 'm.annotation' AND r.aggregation_key = ?"
            " AND e.sender = ? AND e.type = ? AND e.redacted_by IS NULL"
            " AND e.rejected_reason IS NULL LIMIT 1",
            (parent_id, key, sender, event_type),
        ).fetchone()
        is not None
    )


def _not_sender_clause(ignored: frozenset[str]) -> tuple[str, list[Any]]:
    if not ignored:
        return "", []
    return f" AND e.sender NOT IN ({','.join('?' * len(ignored))})", sorted(ignored)


def latest_child(
    conn: Conn, parent_id: str, rel_type: str, ignored: frozenset[str] = frozenset()
) -> EventRecord | None:
    """The newest timeline event relating to ``parent_id`` with ``rel_type``."""
    extra, extra_args = _not_sender_clause(ignored)
    row = conn.execute(
        f"SELECT {_RECORD_COLS}{_RECORD_FROM}JOIN event_relations rel ON rel.event_nid = e.event_nid"
        " WHERE rel.relates_to_id = ? AND rel.rel_type = ? AND e.stream_pos IS NOT NULL"
        f" AND e.rejected_reason IS NULL{extra} ORDER BY e.stream_pos DESC LIMIT 1",
        [parent_id, rel_type, *extra_args],
    ).fetchone()
    return None if row is None else _record(conn, row)


def count_children(
    conn: Conn, parent_id: str, rel_type: str, ignored: frozenset[str] = frozenset()
) -> int:
    extra, extra_args = _not_sender_clause(ignored)
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM event_relations rel JOIN events e ON e.event_nid = rel.event_nid"
        " WHERE rel.relates_to_id = ? AND rel.rel_type = ? AND e.stream_pos IS NOT NULL"
        f" AND e.rejected_reason IS NULL{extra}",
        [parent_id, rel_type, *extra_args],
    ).fetchone()
    return int(n)


def reference_ids(
    conn: Conn, parent_id: str, ignored: frozenset[str] = frozenset(), limit: int = 100
) -> list[str]:
    """Event IDs of the m.reference children of ``parent_id``, oldest first."""
    extra, extra_args = _not_sender_clause(ignored)
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT e.event_id FROM event_relations rel JOIN events e ON e.event_nid = rel.event_nid"
            " WHERE rel.relates_to_id = ? AND rel.rel_type = 'm.reference'"
            f" AND e.stream_pos IS NOT NULL AND e.rejected_reason IS NULL{extra}"
            " ORDER BY e.stream_pos LIMIT ?",
            [parent_id, *extra_args, limit],
        )
    ]


def child_rel_types(conn: Conn, parent_ids: list[str]) -> dict[str, set[str]]:
    """Which relation types have children, for each of ``parent_ids`` that has any
    (one indexed query per 500 parents: most events have no relations at all)."""
    out: dict[str, set[str]] = {}
    for i in range(0, len(parent_ids), 500):
        part = parent_ids[i : i + 500]
        marks = ",".join("?" * len(part))
        for parent, rel_type in conn.execute(
            f"SELECT DISTINCT relates_to_id, rel_type FROM event_relations"
            f" WHERE relates_to_id IN ({marks})",
            part,
        ):
            out.setdefault(parent, set()).add(rel_type)
    return out
