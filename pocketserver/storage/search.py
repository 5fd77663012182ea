"""Full-text search over the ``event_search`` FTS5 index (contentless, rowid = event_nid).

What is indexed is decided when an event is stored (``events._searchable_text``);
redactions remove the row. Queries here take an FTS5 match expression built by
:func:`fts_query` from what a user typed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pocketserver.storage.database import Conn
from pocketserver.storage.events import (
    _RECORD_COLS,
    _RECORD_FROM,
    _RECORD_NCOLS,
    EventRecord,
    _record,
)

_TERM = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    match: str | None  # None: nothing can match (no positive term)
    highlights: tuple[str, ...]


def fts_query(search_term: str) -> ParsedQuery:
    """A safe FTS5 expression for a user's search term.

    Words match as prefixes (``hel`` finds "hello"), all must match; ``"a phrase"``
    matches those words in a row; ``-word`` excludes; ``or`` between two terms makes
    either suffice. Everything else a user types is treated as text, never as FTS5
    syntax.
    """
    positives: list[str] = []
    negatives: list[str] = []
    highlights: list[str] = []
    pending_or = False
    for m in _TERM.finditer(search_term):
        negate, phrase, bare = m.group(1), m.group(2), m.group(3)
        if bare is not None and bare.lower() == "or" and positives:
            pending_or = True
            continue
        if bare is not None and bare.startswith("-") and len(bare) > 1:
            negate, bare = "-", bare[1:]
        text = phrase if phrase is not None else bare or ""
        words = [w.lower() for w in _WORD.findall(text)]
        if not words:
            continue
        expr = '"' + " ".join(words) + '"' + ("" if phrase is not None else "*")
        if negate:
            negatives.append(expr)
            pending_or = False
            continue
        highlights.extend(w for w in words if w not in highlights)
        if pending_or:
            positives[-1] = f"{positives[-1]} OR {expr}"
            pending_or = False
        else:
            positives.append(expr)
    if not positives:
        return ParsedQuery(None, ())
    match = " AND ".join(f"({p})" for p in positives)
    for n in negatives:
        match = f"({match}) NOT {n}"
    return ParsedQuery(match, tuple(highlights))


Ranges = Sequence[tuple[int | None, int | None]]


@dataclass(frozen=True, slots=True)
class Scope:
    """What a search may find: per room, the stream-position ranges ``[lo, hi)``
    (``None``: unbounded) whose events the searcher may see; the event types; the
    senders to keep (``None``: all), the senders to leave out, and the senders whose
    non-state events to leave out (ignored users)."""

    rooms: dict[str, Ranges]
    types: Sequence[str]
    senders: Sequence[str] | None = None
    not_senders: Sequence[str] = ()
    hidden_senders: Sequence[str] = ()

    @property
    def empty(self) -> bool:
        return not any(self.rooms.values()) or not self.types or self.senders == []


def _in(column: str, values: Sequence[Any]) -> str:
    return f"{column} IN ({','.join('?' * len(values))})"


def _conditions(scope: Scope) -> tuple[str, list[Any]]:
    args: list[Any] = []
    per_room: list[str] = []
    for room_id, ranges in scope.rooms.items():
        if not ranges:
            continue
        args.append(room_id)
        spans: list[str] = []
        for lo, hi in ranges:
            bounds = []
            if lo is not None:
                bounds.append("e.stream_pos >= ?")
                args.append(lo)
            if hi is not None:
                bounds.append("e.stream_pos < ?")
                args.append(hi)
            spans.append(" AND ".join(bounds) or "1")
        per_room.append(f"(r.room_id = ? AND ({' OR '.join(f'({x})' for x in spans)}))")
    clauses = [
        f"({' OR '.join(per_room)})",
        _in("e.type", scope.types),
        "e.redacted_by IS NULL",
        "e.rejected_reason IS NULL",
        "e.stream_pos IS NOT NULL",
    ]
    args += scope.types
    if scope.senders is not None:
        clauses.append(_in("e.sender", scope.senders))
        args += scope.senders
    if scope.not_senders:
        clauses.append("NOT " + _in("e.sender", scope.not_senders))
        args += scope.not_senders
    if scope.hidden_senders:
        clauses.append("NOT (e.sk_nid IS NULL AND " + _in("e.sender", scope.hidden_senders) + ")")
        args += scope.hidden_senders
    return " AND ".join(clauses), args


def search_events(
    conn: Conn,
    match: str,
    scope: Scope,
    *,
    by_rank: bool,
    before_pos: int | None = None,
    offset: int = 0,
    limit: int,
) -> list[tuple[EventRecord, float]]:
    """(event, rank) of matching events in ``scope``; rank is higher for better matches.

    ``by_rank``: best first, paged by ``offset``; otherwise newest first, paged by
    ``before_pos``.
    """
    if scope.empty:
        return []
    where, args = _conditions(scope)
    if not by_rank and before_pos is not None:
        where += " AND e.stream_pos < ?"
        args.append(before_pos)
    order = "bm25(event_search), e.stream_pos DESC" if by_rank else "e.stream_pos DESC"
    rows = conn.execute(
        f"SELECT {_RECORD_COLS}, bm25(event_search){_RECORD_FROM}"
        " JOIN event_search ON event_search.rowid = e.event_nid"
        f" WHERE event_search MATCH ? AND {where} ORDER BY {order} LIMIT ? OFFSET ?",
        [match, *args, limit, offset if by_rank else 0],
    ).fetchall()
    return [(_record(conn, r[:_RECORD_NCOLS]), -float(r[_RECORD_NCOLS])) for r in rows]


def matching_rooms(conn: Conn, match: str, scope: Scope) -> set[str]:
    """The rooms of ``scope`` that hold at least one matching event."""
    if scope.empty:
        return set()
    where, args = _conditions(scope)
    rows = conn.execute(
        "SELECT DISTINCT r.room_id FROM events e JOIN rooms r ON r.room_nid = e.room_nid"
        " JOIN event_search ON event_search.rowid = e.event_nid"
        f" WHERE event_search MATCH ? AND {where}",
        [match, *args],
    ).fetchall()
    return {str(r[0]) for r in rows}


def count_events(conn: Conn, match: str, scope: Scope) -> int:
    """How many events in ``scope`` match: counted by the index and the events' columns,
    without reading the events themselves."""
    if scope.empty:
        return 0
    where, args = _conditions(scope)
    (n,) = conn.execute(
        "SELECT COUNT(*) FROM events e JOIN rooms r ON r.room_nid = e.room_nid"
        " JOIN event_search ON event_search.rowid = e.event_nid"
        f" WHERE event_search MATCH ? AND {where}",
        [match, *args],
    ).fetchone()
    return int(n)
