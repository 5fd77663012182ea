"""Events as clients see them: the client format, unsigned data, bundled aggregations.

Client-server API "Room Event Format" and the relationships module (bundled
aggregations for m.replace, m.thread and m.reference). Everything here runs inside one
read transaction (``serialize_events(conn, ...)``) so a page of events costs one thread
hop, not one per aggregation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pocketserver.protocol.redaction import redact, redact_client_event
from pocketserver.services.visibility import VisibilityChecker
from pocketserver.storage import accounts as accounts_store
from pocketserver.storage import events as ev_store
from pocketserver.storage import relations
from pocketserver.storage.database import Conn
from pocketserver.storage.events import EventRecord

JsonDict = dict[str, Any]

# Bounds on what one aggregation reads: edits compared, references listed.
MAX_EDITS_CONSIDERED = 100
MAX_REFERENCES = 100


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


# What the pre-r0 ("v1") event format lifted out of ``unsigned`` to the top level.
_V1_LIFTED = ("age", "prev_content", "replaces_state", "redacted_because")


def v1_format(event: JsonDict) -> JsonDict:
    """The event as the deprecated ``/initialSync``, ``/rooms/{roomId}/initialSync``,
    ``/events`` and ``/events/{eventId}`` have always given it, for the clients and bots
    written against them: the ClientEvent plus the old ``user_id`` (the sender) and
    ``age``, ``prev_content``, ``replaces_state`` and ``redacted_because`` also at the
    top level. Extra keys only, so a client reading the ClientEvent shape still can."""
    out = dict(event)
    out["user_id"] = event["sender"]
    unsigned = event.get("unsigned") or {}
    for key in _V1_LIFTED:
        if key in unsigned:
            out[key] = unsigned[key]
    return out


def serialize_events(
    conn: Conn,
    records: Iterable[EventRecord],
    *,
    user_id: str | None,
    device_id: str | None,
    now_ms: int,
    bundle: bool = True,
    ignored: frozenset[str] = frozenset(),
) -> list[JsonDict]:
    """Serialize a page of events; which of them have relations at all is looked up
    once for the page, so events without children cost no aggregation queries."""
    records = list(records)
    present: Mapping[str, set[str]] | None = None
    if bundle:
        present = relations.child_rel_types(
            conn, [r.event.event_id for r in records if r.event.state_key is None]
        )
    # The events these replaced (their prev_content) and the redactions, read at once:
    # a member list of people who changed their names is not one query per member.
    linked = ev_store.get_events(
        conn,
        [r.replaces_event_id for r in records if r.replaces_event_id is not None]
        + [r.redacted_by for r in records if r.redacted_by is not None],
    )
    erasures = Erasures(conn, user_id, {r.event.sender for r in records})
    return [
        serialize_event(
            conn, rec, user_id=user_id, device_id=device_id, now_ms=now_ms, bundle=bundle,
            ignored=ignored, present_relations=present, linked=linked, erasures=erasures,
        )
        for rec in records
    ]


class Erasures:
    """Which events a viewer is served redacted because their sender was erased
    (account_deactivation.yaml, ``erase``: users who join the room after the erasure
    get redacted copies, users who had visibility before keep the events). The senders
    of a page are looked up once; a viewer's history in a room is read only when an
    erased sender's event is there."""

    def __init__(self, conn: Conn, viewer: str | None, senders: Iterable[str] = ()) -> None:
        self.conn = conn
        self.viewer = viewer
        self._looked_up = set(senders)
        self.erased = accounts_store.erased_since(conn, self._looked_up)
        self._checkers: dict[str, VisibilityChecker] = {}

    def hides(self, rec: EventRecord) -> bool:
        sender = rec.event.sender
        if sender == self.viewer:
            return False
        if sender not in self._looked_up:
            self._looked_up.add(sender)
            self.erased.update(accounts_store.erased_since(self.conn, (sender,)))
        if sender not in self.erased:
            return False
        room_id = rec.event.room_id
        checker = self._checkers.get(room_id)
        if checker is None:
            checker = self._checkers[room_id] = VisibilityChecker(self.conn, room_id, self.viewer)
        return not checker.could_see_before(rec, self.erased[sender])


def serialize_event(
    conn: Conn,
    rec: EventRecord,
    *,
    user_id: str | None,
    device_id: str | None,
    now_ms: int,
    bundle: bool = True,
    ignored: frozenset[str] = frozenset(),
    present_relations: Mapping[str, set[str]] | None = None,
    linked: Mapping[str, EventRecord] | None = None,
    erasures: Erasures | None = None,
) -> JsonDict:
    """``ignored``: users whose child events are left out of the aggregations.
    ``present_relations`` (from :func:`serialize_events`): the relation types each
    event has children of; events missing from it have none. ``linked``: events
    already read (the replaced state events, the redactions), by ID. ``erasures``: the
    page's erased senders (looked up for this event alone when not given)."""
    out = client_format(rec, now_ms)
    unsigned = out["unsigned"]
    if erasures is None:
        erasures = Erasures(conn, user_id, (rec.event.sender,))
    if erasures.hides(rec):
        hidden = redact_client_event(out, rec.event.room_version)
        hidden["unsigned"]["age"] = unsigned["age"]
        return hidden
    if rec.txn_key is not None and user_id is not None and device_id is not None:
        prefix = f"{user_id}|{device_id}|"
        if rec.txn_key.startswith(prefix):
            unsigned["transaction_id"] = rec.txn_key[len(prefix) :]
    if rec.replaces_event_id is not None:
        prev = _linked(conn, linked, rec.replaces_event_id)
        if prev is not None:
            unsigned["prev_content"] = dict(prev.event.content)
            unsigned["replaces_state"] = rec.replaces_event_id
            unsigned["prev_sender"] = prev.event.sender
    if rec.redacted_by is not None:
        because = _linked(conn, linked, rec.redacted_by)
        redacted = redact_client_event(
            out,
            rec.event.room_version,
            redacted_because=client_format(because, now_ms) if because else None,
        )
        redacted["unsigned"]["age"] = unsigned["age"]
        # Not in the spec, but what Synapse has always sent beside ``redacted_because``
        # and what clients and SyTest read: the redaction's ID alone.
        redacted["unsigned"]["redacted_by"] = rec.redacted_by
        return redacted
    if bundle and rec.event.state_key is None:
        present = None if present_relations is None else present_relations.get(rec.event.event_id, set())
        relations = bundled_aggregations(
            conn, rec, user_id=user_id, now_ms=now_ms, ignored=ignored, present=present
        )
        if relations:
            unsigned["m.relations"] = relations
    return out


def _linked(conn: Conn, linked: Mapping[str, EventRecord] | None, event_id: str) -> EventRecord | None:
    if linked is not None and event_id in linked:
        return linked[event_id]
    return ev_store.get_event(conn, event_id)


def latest_edit(conn: Conn, rec: EventRecord) -> EventRecord | None:
    """The most recent valid m.replace of an event ("Validity of replacement events").

    Valid: same sender, same type, neither is a state event, the original is not itself
    an edit, and the replacement has ``m.new_content`` (unless encrypted, where it sits
    in the ciphertext). Most recent: greatest ``origin_server_ts``, then the
    lexicographically largest event ID.
    """
    ev = rec.event
    if ev.state_key is not None or _rel_type(ev.content) == "m.replace":
        return None
    best: EventRecord | None = None
    for edit in relations.relation_children(
        conn, ev.event_id, rel_type="m.replace", event_type=ev.type, from_pos=None, to_pos=None,
        backwards=True, limit=MAX_EDITS_CONSIDERED,
    ):
        e = edit.event
        if e.sender != ev.sender or e.state_key is not None or edit.redacted_by is not None:
            continue
        if ev.type != "m.room.encrypted" and not isinstance(e.content.get("m.new_content"), dict):
            continue
        if best is None or (e.origin_server_ts, e.event_id) > (
            best.event.origin_server_ts, best.event.event_id
        ):
            best = edit
    return best


def _rel_type(content: Mapping[str, Any]) -> str | None:
    rel = content.get("m.relates_to")
    value = rel.get("rel_type") if isinstance(rel, dict) else None
    return value if isinstance(value, str) else None


def bundled_aggregations(
    conn: Conn,
    rec: EventRecord,
    *,
    user_id: str | None,
    now_ms: int,
    ignored: frozenset[str] = frozenset(),
    present: set[str] | None = None,
) -> JsonDict:
    """``unsigned.m.relations``: m.replace, m.thread and m.reference (m.annotation is
    not aggregated by the server). Children sent by ``ignored`` users do not count.
    ``present``, when known, is the set of relation types the event has children of."""
    ev = rec.event
    out: JsonDict = {}
    # Events that are themselves edits get no aggregations.
    if _rel_type(ev.content) == "m.replace" or present is not None and not present:
        return out
    edit = latest_edit(conn, rec) if present is None or "m.replace" in present else None
    if edit is not None and edit.event.sender not in ignored:
        out["m.replace"] = serialize_event(
            conn, edit, user_id=user_id, device_id=None, now_ms=now_ms, bundle=False
        )
    latest = (
        relations.latest_child(conn, ev.event_id, "m.thread", ignored)
        if present is None or "m.thread" in present
        else None
    )
    if latest is not None:
        participated = user_id is not None and (
            ev.sender == user_id or thread_participated(conn, ev.event_id, user_id)
        )
        out["m.thread"] = {
            "latest_event": serialize_event(
                conn, latest, user_id=user_id, device_id=None, now_ms=now_ms, bundle=True,
                ignored=ignored,
            ),
            "count": relations.count_children(conn, ev.event_id, "m.thread", ignored),
            "current_user_participated": participated,
        }
    refs = (
        relations.reference_ids(conn, ev.event_id, ignored, MAX_REFERENCES)
        if present is None or "m.reference" in present
        else None
    )
    if refs:
        out["m.reference"] = {"chunk": [{"event_id": r} for r in refs]}
    return out


def thread_count(conn: Conn, root_id: str) -> int:
    return ev_store.count_relations(conn, root_id, "m.thread")


def thread_participated(conn: Conn, root_id: str, user_id: str) -> bool:
    return ev_store.has_related_from(conn, root_id, "m.thread", user_id)


def federation_format(rec: EventRecord, client_event: JsonDict) -> JsonDict:
    """The event as servers exchange it (a filter's ``event_format: federation``): the
    stored PDU (redacted when the event was) with its ID, and the ``unsigned`` data
    computed for the client form."""
    ev = rec.event
    out = dict(ev.pdu)
    if rec.redacted_by is None and ev.redacts is None and client_event.get("content") != ev.content:
        # Served redacted to this viewer (an erased sender's event, see Erasures).
        out = redact(out, ev.room_version)
    out["event_id"] = rec.event.event_id
    out["unsigned"] = {**(out.get("unsigned") or {}), **client_event.get("unsigned", {})}
    return out


def stripped_state(rec: EventRecord) -> JsonDict:
    ev = rec.event
    return {
        "content": dict(ev.content),
        "sender": ev.sender,
        "state_key": ev.state_key or "",
        "type": ev.type,
    }
