"""Event relationships: the /relations API, the thread list, and relation checks on send.

Client-server API "Forming relationships between events" (Relationships API) and the
threading module ("Querying threads in a room"). Pagination tokens are stream tokens
``t{pos}`` (the gap after the event at ``pos``), the same as /messages, so a /sync or
/messages token is accepted too. Only events the requester may see (history
visibility) and not sent by users they ignore are returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pocketserver.errors import Forbidden, InvalidParam, MatrixError, NotFound
from pocketserver.services.auth import Requester
from pocketserver.services.client_events import serialize_event, serialize_events
from pocketserver.services.clock import Clock
from pocketserver.services.ignored_users import ignored_users, is_hidden
from pocketserver.services.sync import parse_stream_token
from pocketserver.services.visibility import VisibilityChecker
from pocketserver.storage import events as ev_store
from pocketserver.storage import relations as rel_store
from pocketserver.storage.database import Conn, Database
from pocketserver.storage.events import EventRecord
from pocketserver.storage.streams import current_stream_pos

JsonDict = dict[str, Any]

DEFAULT_LIMIT = 5
MAX_LIMIT = 100
THREADS_DEFAULT_LIMIT = 5
# Pages read past invisible events before giving up on filling a page.
MAX_PAGES = 20


class RelationsService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    async def relations(
        self,
        requester: Requester,
        room_id: str,
        event_id: str,
        *,
        rel_type: str | None,
        event_type: str | None,
        from_token: str | None,
        to_token: str | None,
        limit: int | None,
        backwards: bool,
        recurse: bool | None,
    ) -> JsonDict:
        """GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]"""
        n = min(limit if limit is not None else DEFAULT_LIMIT, MAX_LIMIT)
        start = parse_stream_token(from_token) if from_token else None
        stop = parse_stream_token(to_token) if to_token else None

        def run(conn: Conn) -> JsonDict:
            parent = ev_store.get_event(conn, event_id)
            if parent is None or parent.event.room_id != room_id:
                raise NotFound("Event not found")
            checker = VisibilityChecker(conn, room_id, requester.user_id)
            if not checker.can_see(parent):
                raise NotFound("Event not found")
            ignored = ignored_users(conn, requester.user_id)
            if backwards:
                cursor = (start if start is not None else current_stream_pos(conn)) + 1
            else:
                cursor = start if start is not None else -(2**62)
            picked: list[EventRecord] = []
            more = False
            page_size = max(n, 20)
            for _ in range(MAX_PAGES):
                page = rel_store.relation_children(
                    conn, event_id, rel_type=rel_type, event_type=event_type,
                    from_pos=cursor, to_pos=stop, backwards=backwards, limit=page_size,
                    recurse=bool(recurse),
                )
                for rec in page:
                    if len(picked) >= n:
                        more = True
                        break
                    assert rec.stream_pos is not None
                    cursor = rec.stream_pos
                    if checker.can_see(rec) and not is_hidden(rec, ignored):
                        picked.append(rec)
                if more or len(page) < page_size:
                    break
            else:
                more = True
            out: JsonDict = {
                "chunk": serialize_events(
                    conn, picked, user_id=requester.user_id, device_id=requester.device_id,
                    now_ms=self.clock.time_ms(), ignored=ignored,
                )
            }
            if more and picked:
                out["next_batch"] = f"t{cursor - 1}" if backwards else f"t{cursor}"
            if from_token:
                out["prev_batch"] = from_token
            if recurse is not None:
                out["recursion_depth"] = rel_store.MAX_RECURSION_DEPTH if recurse else 1
            return out

        return await self.db.read(run)

    async def threads(
        self,
        requester: Requester,
        room_id: str,
        *,
        include: str,
        limit: int | None,
        from_token: str | None,
    ) -> JsonDict:
        """GET /rooms/{roomId}/threads: roots ordered by their latest reply, newest first."""
        n = min(limit if limit is not None else THREADS_DEFAULT_LIMIT, MAX_LIMIT)
        before: int | None = None
        if from_token:
            before = parse_stream_token(from_token) + 1

        def run(conn: Conn) -> JsonDict:
            if ev_store.get_room(conn, room_id) is None:
                raise Forbidden("You are not allowed to view this room")
            checker = VisibilityChecker(conn, room_id, requester.user_id)
            if checker.current_membership is None and not checker.world_readable_now:
                raise Forbidden("You are not allowed to view this room")
            ignored = ignored_users(conn, requester.user_id)
            participant = requester.user_id if include == "participated" else None
            cursor = before
            picked: list[EventRecord] = []
            more = False
            page_size = max(n, 20)
            for _ in range(MAX_PAGES):
                page = rel_store.thread_root_page(
                    conn, room_id, participated_by=participant, before_pos=cursor, limit=page_size
                )
                for root_id, latest in page:
                    if len(picked) >= n:
                        more = True
                        break
                    cursor = latest
                    rec = ev_store.get_event(conn, root_id)
                    if rec is not None and checker.can_see(rec):
                        picked.append(rec)
                if more or len(page) < page_size:
                    break
            else:
                more = True
            kw: Any = {
                "user_id": requester.user_id, "device_id": requester.device_id,
                "now_ms": self.clock.time_ms(), "ignored": ignored,
            }
            chunk = []
            for rec in picked:
                event = serialize_event(conn, rec, **kw)
                if is_hidden(rec, ignored):
                    # "returned redacted to the caller", as a client aggregating locally would.
                    from pocketserver.protocol.redaction import redact_client_event

                    relations = event["unsigned"].get("m.relations")
                    event = redact_client_event(event, rec.event.room_version, redacted_because=None)
                    if relations:
                        event["unsigned"]["m.relations"] = relations
                chunk.append(event)
            out: JsonDict = {"chunk": chunk}
            if more and cursor is not None:
                out["next_batch"] = f"t{cursor - 1}"
            return out

        return await self.db.read(run)

    # -- checks on sending ---------------------------------------------------------------

    async def check_new_relation(
        self, sender: str, room_id: str, event_type: str, content: Mapping[str, Any]
    ) -> None:
        """Refuse relations the spec says servers should refuse on send.

        * A second annotation with the same type and key from the same sender:
          400 ``M_DUPLICATE_ANNOTATION`` (event annotations, "Avoiding duplicate
          annotations").
        * A thread off an event that itself has a relation: 400 ``M_UNKNOWN``
          (threading, "Validation of m.thread relationships").
        """
        rel = content.get("m.relates_to")
        if not isinstance(rel, dict):
            return
        rel_type = rel.get("rel_type")
        parent_id = rel.get("event_id")
        if not isinstance(parent_id, str):
            return
        if rel_type == "m.annotation":
            key = rel.get("key")
            if isinstance(key, str) and await self.db.read(
                rel_store.has_annotation, parent_id, sender, event_type, key
            ):
                raise MatrixError(400, "M_DUPLICATE_ANNOTATION", "You already sent this annotation")
        elif rel_type == "m.thread":
            parent = await self.db.read(ev_store.get_event, parent_id)
            if parent is None or parent.event.room_id != room_id:
                return
            if isinstance(parent.event.content.get("m.relates_to"), dict):
                parent_rel = parent.event.content["m.relates_to"]
                if parent_rel.get("rel_type") is not None:
                    raise MatrixError(400, "M_UNKNOWN", "Cannot start a thread from an event with a relation")


def parse_dir(value: str | None) -> bool:
    """``dir`` query parameter: True for backwards (the default)."""
    if value is None or value == "b":
        return True
    if value == "f":
        return False
    raise InvalidParam("dir must be b or f")
