"""The PDU (persistent data unit) as an immutable value.

:class:`Event` holds the PDU exactly as it travels between servers (``pdu``) plus the
fields every algorithm reads, pulled out once into slots so that authorisation and
state resolution over tens of thousands of events touch no dictionaries.

It knows the room-version differences of the event format
(shared/spec/content/rooms/fragments/v1-event-ids.md, v4-event-format.md,
v12-event-format.md): ``event_id`` inside the PDU for v1/v2, a reference hash for v3+;
``prev_events``/``auth_events`` as ``[id, {hashes}]`` pairs for v1/v2 and plain IDs
for v3+; the v12 create event has no ``room_id`` (the room ID is derived from its ID).

It never does I/O and never validates authorisation; see ``auth_rules``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pocketserver.protocol.room_versions import RoomVersion

JsonDict = dict[str, Any]

StateKey = tuple[str, str]  # (event type, state_key)


class EventFormatError(ValueError):
    """The PDU is not well-formed for its room version."""


def _id_list(value: Any, rv: RoomVersion, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise EventFormatError(f"{name} must be a list")
    out: list[str] = []
    for item in value:
        if rv.uses_event_id_in_pdu:
            # v1/v2: [event_id, {"sha256": ...}]
            if not (isinstance(item, list) and item and isinstance(item[0], str)):
                raise EventFormatError(f"{name} entries must be [event_id, hashes]")
            out.append(item[0])
        else:
            if not isinstance(item, str):
                raise EventFormatError(f"{name} entries must be event IDs")
            out.append(item)
    return tuple(out)


class Event:
    """One PDU of a room, immutable once built.

    Build with :meth:`from_pdu`. ``pdu`` is the federation form (for v3+ without
    ``event_id``); do not mutate it.
    """

    __slots__ = (
        "event_id",
        "room_id",
        "sender",
        "type",
        "state_key",
        "content",
        "prev_event_ids",
        "auth_event_ids",
        "depth",
        "origin_server_ts",
        "room_version",
        "pdu",
        "rejected_reason",
    )

    event_id: str
    room_id: str
    sender: str
    type: str
    state_key: str | None
    content: Mapping[str, Any]
    prev_event_ids: tuple[str, ...]
    auth_event_ids: tuple[str, ...]
    depth: int
    origin_server_ts: int
    room_version: RoomVersion
    pdu: JsonDict
    rejected_reason: str | None

    @classmethod
    def from_pdu(
        cls, pdu: JsonDict, room_version: RoomVersion, event_id: str | None = None
    ) -> Event:
        """Wrap a PDU dict. For v3+ the event ID is computed (reference hash) unless
        the caller already knows it and passes ``event_id``."""
        self = cls.__new__(cls)
        rv = room_version
        try:
            if event_id is not None:
                eid = event_id
            elif rv.uses_event_id_in_pdu:
                eid = pdu["event_id"]
            else:
                from pocketserver.protocol.hashes import compute_event_id

                eid = compute_event_id(pdu, rv)
            if not isinstance(eid, str):
                raise EventFormatError("event_id must be a string")
            etype = pdu["type"]
            sender = pdu["sender"]
            content = pdu.get("content", {})
            if not isinstance(etype, str) or not isinstance(sender, str):
                raise EventFormatError("type and sender must be strings")
            if not isinstance(content, dict):
                raise EventFormatError("content must be an object")
            state_key = pdu.get("state_key")
            if state_key is not None and not isinstance(state_key, str):
                raise EventFormatError("state_key must be a string")
            if rv.room_id_is_create_event_hash and etype == "m.room.create" and state_key == "":
                if "room_id" in pdu:
                    room_id = pdu["room_id"]
                else:
                    room_id = "!" + eid[1:]
            else:
                room_id = pdu["room_id"]
            if not isinstance(room_id, str):
                raise EventFormatError("room_id must be a string")
            depth = pdu.get("depth", 0)
            ts = pdu.get("origin_server_ts", 0)
            if type(depth) is not int or type(ts) is not int:
                raise EventFormatError("depth and origin_server_ts must be integers")
            self.prev_event_ids = _id_list(pdu.get("prev_events", []), rv, "prev_events")
            self.auth_event_ids = _id_list(pdu.get("auth_events", []), rv, "auth_events")
        except KeyError as e:
            raise EventFormatError(f"missing key {e.args[0]!r}") from None
        self.event_id = eid
        self.room_id = room_id
        self.sender = sender
        self.type = etype
        self.state_key = state_key
        self.content = content
        self.depth = depth
        self.origin_server_ts = ts
        self.room_version = rv
        self.pdu = pdu
        self.rejected_reason = None
        return self

    @classmethod
    def from_stored(cls, pdu: JsonDict, room_version: RoomVersion, event_id: str) -> Event:
        """Wrap a PDU this server checked with :meth:`from_pdu` when it stored it: the
        same fields, without checking their types again (reading a big room's state
        builds hundreds of these per request)."""
        self = cls.__new__(cls)
        rv = room_version
        etype = pdu["type"]
        state_key = pdu.get("state_key")
        if rv.room_id_is_create_event_hash and etype == "m.room.create" and state_key == "":
            self.room_id = pdu["room_id"] if "room_id" in pdu else "!" + event_id[1:]
        else:
            self.room_id = pdu["room_id"]
        if rv.uses_event_id_in_pdu:
            self.prev_event_ids = tuple(item[0] for item in pdu.get("prev_events", ()))
            self.auth_event_ids = tuple(item[0] for item in pdu.get("auth_events", ()))
        else:
            self.prev_event_ids = tuple(pdu.get("prev_events", ()))
            self.auth_event_ids = tuple(pdu.get("auth_events", ()))
        self.event_id = event_id
        self.sender = pdu["sender"]
        self.type = etype
        self.state_key = state_key
        self.content = pdu.get("content", {})
        self.depth = pdu.get("depth", 0)
        self.origin_server_ts = pdu.get("origin_server_ts", 0)
        self.room_version = rv
        self.pdu = pdu
        self.rejected_reason = None
        return self

    # -- derived, cheap ------------------------------------------------------

    @property
    def is_state(self) -> bool:
        return self.state_key is not None

    @property
    def state_tuple(self) -> StateKey:
        """(type, state_key); only meaningful for state events."""
        assert self.state_key is not None
        return (self.type, self.state_key)

    @property
    def membership(self) -> str | None:
        m = self.content.get("membership")
        return m if isinstance(m, str) else None

    @property
    def redacts(self) -> str | None:
        """The event a redaction targets: top-level before v11, in content from v11."""
        if self.type != "m.room.redaction":
            return None
        if self.room_version.updated_redaction_rules:
            r = self.content.get("redacts")
        else:
            r = self.pdu.get("redacts")
        return r if isinstance(r, str) else None

    @property
    def origin(self) -> str:
        """Server name of the sender."""
        return self.sender.split(":", 1)[1] if ":" in self.sender else ""

    def get_pdu_json(self) -> JsonDict:
        """The PDU as sent over federation (a shallow copy)."""
        return dict(self.pdu)

    def __repr__(self) -> str:
        return f"<Event {self.event_id} {self.type} {self.state_key!r} {self.sender}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.event_id == self.event_id

    def __hash__(self) -> int:
        return hash(self.event_id)
