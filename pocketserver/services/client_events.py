"""Events as clients see them: the client format, unsigned data, bundled aggregations.

Client-server API "Room Event Format" and the relationships module (bundled
aggregations for m.replace, m.thread and m.reference). Everything here runs inside one
read transaction (``serialize_events(conn, ...)``) so a page of events costs one thread
hop, not one per aggregation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pocketserver.protocol.redaction import redact_client_event
from pocketserver.storage import events as ev_store
from pocketserver.storage.database import Conn
from pocketserver.storage.events import EventRecord

JsonDict = dict[str, Any]


def client_format(rec: EventRecord, now_ms: int) -> JsonDict:
    """The ClientEvent form of a stored event, without bundled aggregations."""
    ev = rec.event
    out: JsonDict = {
        "content": dict(ev.content),
        "event_id": ev.event_id,
        "origin_server_ts": ev.origin_server_ts,
        "room_id": ev.room_id,
        "sender": ev.sender,
        "type": ev.type,
    }
    if ev.state_key is not None:
        out["state_key"] = ev.state_key
    redacts = ev.redacts
    if redacts is not None:
        out["redacts"] = redacts
        if ev.room_version.updated_redaction_rules:
            out["content"].setdefault("redacts", redacts)
    out["unsigned"] = {"age": max(0, now_ms - ev.origin_server_ts)}
    return out


def serialize_events(
    conn: Conn,
    records: Iterable[EventRecord],
    *,
    user_id: str | None,
    device_id: str | None,
    now_ms: int,
    bundle: bool = True,
) -> list[JsonDict]:
    return [
        serialize_event(conn, rec, user_id=user_id, device_id=device_id, now_ms=now_ms, bundle=bundle)
        for rec in records
    ]


def serialize_event(
    conn: Conn,
    rec: EventRecord,
    *,
    user_id: str | None,
    device_id: str | None,
    now_ms: int,
    bundle: bool = True,
) -> JsonDict:
    out = client_format(rec, now_ms)
    unsigned = out["unsigned"]
    if rec.txn_key is not None and user_id is not None and device_id is not None:
        prefix = f"{user_id}|{device_id}|"
        if rec.txn_key.startswith(prefix):
            unsigned["transaction_id"] = rec.txn_key[len(prefix) :]
    if rec.replaces_event_id is not None:
        prev = ev_store.get_event(conn, rec.replaces_event_id)
        if prev is not None:
            unsigned["prev_content"] = dict(prev.event.content)
            unsigned["replaces_state"] = rec.replaces_event_id
            unsigned["prev_sender"] = prev.event.sender
    if rec.redacted_by is not None:
        because = ev_store.get_event(conn, rec.redacted_by)
        redacted = redact_client_event(
            out,
            rec.event.room_version,
            redacted_because=client_format(because, now_ms) if because else None,
        )
        redacted["unsigned"]["age"] = unsigned["age"]
        return redacted
    if bundle and rec.event.state_key is None:
        relations = bundled_aggregations(conn, rec, user_id=user_id, now_ms=now_ms)
        if relations:
            unsigned["m.relations"] = relations
    return out


def latest_edit(conn: Conn, rec: EventRecord) -> EventRecord | None:
    """The newest valid m.replace of an event: same sender, same type, not itself a replace."""
    ev = rec.event
    edits = ev_store.relations_of(
        conn, ev.event_id, "m.replace", None, from_pos=None, backwards=True, limit=50
    )
    for edit in edits:
        e = edit.event
        if e.sender != ev.sender or e.type != ev.type or edit.redacted_by is not None:
            continue
        if ev.state_key is not None or e.state_key is not None:
            continue
        new_content = e.content.get("m.new_content")
        if ev.type != "m.room.encrypted" and not isinstance(new_content, dict):
            continue
        return edit
    return None


def bundled_aggregations(conn: Conn, rec: EventRecord, *, user_id: str | None, now_ms: int) -> JsonDict:
    ev = rec.event
    relations: JsonDict = {}
    rel = ev.content.get("m.relates_to")
    own_rel_type = rel.get("rel_type") if isinstance(rel, dict) else None
    # Events that are themselves edits get no aggregations.
    if own_rel_type == "m.replace":
        return relations
    edit = latest_edit(conn, rec)
    if edit is not None:
        relations["m.replace"] = serialize_event(
            conn, edit, user_id=user_id, device_id=None, now_ms=now_ms, bundle=False
        )
    thread = ev_store.relations_of(
        conn, ev.event_id, "m.thread", None, from_pos=None, backwards=True, limit=1
    )
    if thread:
        count = thread_count(conn, ev.event_id)
        participated = user_id is not None and (
            ev.sender == user_id or thread_participated(conn, ev.event_id, user_id)
        )
        relations["m.thread"] = {
            "latest_event": serialize_event(
                conn, thread[0], user_id=user_id, device_id=None, now_ms=now_ms, bundle=True
            ),
            "count": count,
            "current_user_participated": participated,
        }
    refs = ev_store.relations_of(
        conn, ev.event_id, "m.reference", None, from_pos=None, backwards=False, limit=100
    )
    if refs:
        relations["m.reference"] = {"chunk": [{"event_id": r.event.event_id} for r in refs]}
    return relations


def thread_count(conn: Conn, root_id: str) -> int:
    return ev_store.count_relations(conn, root_id, "m.thread")


def thread_participated(conn: Conn, root_id: str, user_id: str) -> bool:
    return ev_store.has_related_from(conn, root_id, "m.thread", user_id)


def stripped_state(rec: EventRecord) -> JsonDict:
    ev = rec.event
    return {
        "content": dict(ev.content),
        "sender": ev.sender,
        "state_key": ev.state_key or "",
        "type": ev.type,
    }
