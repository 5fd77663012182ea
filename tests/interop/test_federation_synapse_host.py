"""Rooms hosted by a real Synapse, joined by pocketserver's users (federation/joining.py
against the real thing): joins by alias and by room ID with ``via``, messages and state
both ways, invites accepted and rejected, backfill of history from before the join,
leave and rejoin, an encrypted conversation, and recovery with pocketserver stopped.

Uses the session's one Synapse and pocketserver (the ``pair`` fixture); the recovery
test restarts pocketserver, so it runs last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.interop.conftest import restart_pocketserver, stop_process
from tests.interop.synapse import Pair, register
from tests.interop.test_federation_synapse import (
    WAIT_S,
    Syncer,
    _api,
    _logs,
    _membership_seen,
    _ok,
    _send,
    nio_conversation,
)

pytestmark = pytest.mark.interop


@dataclass
class SynRoom:
    """A public room on Synapse (sam) that our pat joined by its alias."""

    room_id: str
    alias: str
    sam: str
    sam_token: str
    pat: str
    pat_token: str
    sam_sync: Syncer
    pat_sync: Syncer


def _state_seen(sy: Syncer, room_id: str, etype: str, pred: object) -> bool:
    return any(
        e.get("type") == etype and "state_key" in e and pred(e["content"])  # type: ignore[operator]
        for e in sy.events.get(room_id, [])
    )


@pytest.fixture(scope="module")
def synroom(pair: Pair) -> SynRoom:
    p, s = pair.pocket.base_url, pair.synapse.base_url
    sam, sam_token = register(s, "synsam")
    pat, pat_token = register(p, "pocketpat")
    room_id = _ok(_api(s, "POST", "/createRoom", sam_token, {
        "preset": "public_chat", "room_alias_name": "synroom", "name": "On Synapse",
    }), *_logs(pair))["room_id"]
    alias = f"#synroom:{pair.synapse.server_name}"
    _send(s, sam_token, room_id, "before pat")
    sam_sync, pat_sync = Syncer(s, sam_token), Syncer(p, pat_token)
    sam_sync.once(0)
    r = _api(p, "POST", f"/join/{quote(alias)}", pat_token, {})
    assert _ok(r, *_logs(pair))["room_id"] == room_id
    return SynRoom(room_id, alias, sam, sam_token, pat, pat_token, sam_sync, pat_sync)


def test_our_user_joins_a_synapse_room_by_alias_and_they_talk(pair: Pair, synroom: SynRoom) -> None:
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    h.sam_sync.wait(lambda sy: _membership_seen(sy, h.room_id, h.pat, "join"), "pat's join on Synapse", *_logs(pair))
    # The room's name came with the join's state; the room shows in pat's /sync.
    state = _ok(_api(p, "GET", f"/rooms/{quote(h.room_id)}/state/m.room.name/", h.pat_token))
    assert state == {"name": "On Synapse"}
    _send(p, h.pat_token, h.room_id, "hello from pocketserver")
    h.sam_sync.wait(lambda sy: "hello from pocketserver" in sy.bodies(h.room_id), "pat's message", *_logs(pair))
    _send(s, h.sam_token, h.room_id, "hello from synapse")
    h.pat_sync.wait(lambda sy: "hello from synapse" in sy.bodies(h.room_id), "sam's message", *_logs(pair))
    # A state change from Synapse (pat may now set the topic), then one from us.
    levels = _ok(_api(s, "GET", f"/rooms/{quote(h.room_id)}/state/m.room.power_levels/", h.sam_token))
    levels["users"][h.pat] = 50
    _ok(_api(s, "PUT", f"/rooms/{quote(h.room_id)}/state/m.room.power_levels/", h.sam_token, levels))
    h.pat_sync.wait(
        lambda sy: _state_seen(sy, h.room_id, "m.room.power_levels", lambda c: c.get("users", {}).get(h.pat) == 50),
        "pat's new power level on pocketserver", *_logs(pair),
    )
    _ok(_api(p, "PUT", f"/rooms/{quote(h.room_id)}/state/m.room.topic/", h.pat_token, {"topic": "set from pocketserver"}),
        *_logs(pair))
    h.sam_sync.wait(
        lambda sy: _state_seen(sy, h.room_id, "m.room.topic", lambda c: c.get("topic") == "set from pocketserver"),
        "pat's topic on Synapse", *_logs(pair),
    )
    topic = _ok(_api(s, "GET", f"/rooms/{quote(h.room_id)}/state/m.room.topic/", h.sam_token))
    assert topic == {"topic": "set from pocketserver"}


def test_a_second_user_joins_by_room_id_with_via(pair: Pair, synroom: SynRoom) -> None:
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    quinn, quinn_token = register(p, "pocketquinn")
    r = _api(p, "POST", f"/join/{quote(h.room_id)}", quinn_token, {}, via=pair.synapse.server_name)
    assert _ok(r, *_logs(pair))["room_id"] == h.room_id
    h.sam_sync.wait(lambda sy: _membership_seen(sy, h.room_id, quinn, "join"), "quinn's join on Synapse", *_logs(pair))
    quinn_sync = Syncer(p, quinn_token)
    _send(s, h.sam_token, h.room_id, "hi quinn")
    quinn_sync.wait(lambda sy: "hi quinn" in sy.bodies(h.room_id), "sam's message for quinn", *_logs(pair))
    _send(p, quinn_token, h.room_id, "hi sam, quinn here")
    h.sam_sync.wait(lambda sy: "hi sam, quinn here" in sy.bodies(h.room_id), "quinn's message", *_logs(pair))
    # pat, on the same server, sees quinn's message too (sent locally, not over federation).
    h.pat_sync.wait(lambda sy: "hi sam, quinn here" in sy.bodies(h.room_id), "quinn's message for pat", *_logs(pair))


def test_profile_typing_and_receipts_in_the_synapse_room(pair: Pair, synroom: SynRoom) -> None:
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    # A new display name goes out as a member event into the room Synapse hosts.
    _ok(_api(p, "PUT", f"/profile/{quote(h.pat)}/displayname", h.pat_token, {"displayname": "Pat P."}), *_logs(pair))
    h.sam_sync.wait(
        lambda sy: any(e.get("type") == "m.room.member" and e.get("state_key") == h.pat
                       and e["content"].get("displayname") == "Pat P." for e in sy.events.get(h.room_id, [])),
        "pat's new name on Synapse", *_logs(pair),
    )
    members = _ok(_api(s, "GET", f"/rooms/{quote(h.room_id)}/joined_members", h.sam_token))["joined"]
    assert members[h.pat].get("display_name") == "Pat P.", members
    _ok(_api(p, "PUT", f"/rooms/{quote(h.room_id)}/typing/{quote(h.pat)}", h.pat_token, {"typing": True, "timeout": 30000}))
    h.sam_sync.wait(
        lambda sy: any(e.get("type") == "m.typing" and h.pat in e["content"].get("user_ids", [])
                       for e in sy.ephemeral.get(h.room_id, [])), "pat typing on Synapse", *_logs(pair),
    )
    _ok(_api(s, "PUT", f"/rooms/{quote(h.room_id)}/typing/{quote(h.sam)}", h.sam_token, {"typing": True, "timeout": 30000}))
    h.pat_sync.wait(
        lambda sy: any(e.get("type") == "m.typing" and h.sam in e["content"].get("user_ids", [])
                       for e in sy.ephemeral.get(h.room_id, [])), "sam typing on pocketserver", *_logs(pair),
    )
    ev = _send(s, h.sam_token, h.room_id, "did you read this?")
    h.pat_sync.wait(lambda sy: "did you read this?" in sy.bodies(h.room_id), "sam's question", *_logs(pair))
    _ok(_api(p, "POST", f"/rooms/{quote(h.room_id)}/receipt/m.read/{quote(ev)}", h.pat_token, {}))
    h.sam_sync.wait(
        lambda sy: any(e.get("type") == "m.receipt" and h.pat in e["content"].get(ev, {}).get("m.read", {})
                       for e in sy.ephemeral.get(h.room_id, [])), "pat's receipt on Synapse", *_logs(pair),
    )


def test_restricted_join_through_synapse_for_members_of_a_space(pair: Pair, synroom: SynRoom) -> None:
    """A room open to the members of another room: Synapse's resident user authorises
    (and Synapse countersigns) our user's join; someone not in that room is refused."""
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    room = _ok(_api(s, "POST", "/createRoom", h.sam_token, {
        "preset": "private_chat", "room_version": "10",
        "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
            "join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": h.room_id}],
        }}],
    }), *_logs(pair))["room_id"]
    outsider, outsider_token = register(p, "pocketout")
    r = _api(p, "POST", f"/join/{quote(room)}", outsider_token, {}, via=pair.synapse.server_name)
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text
    # pat is in sam's room, so may join.
    _ok(_api(p, "POST", f"/join/{quote(room)}", h.pat_token, {}, via=pair.synapse.server_name), *_logs(pair))
    member = _ok(_api(p, "GET", f"/rooms/{quote(room)}/state/m.room.member/{quote(h.pat)}", h.pat_token))
    assert member["membership"] == "join" and member["join_authorised_via_users_server"] == h.sam, member
    _send(p, h.pat_token, room, "in through the space")
    sam_sync = Syncer(s, h.sam_token)
    sam_sync.wait(lambda sy: "in through the space" in sy.bodies(room), "pat's message in the restricted room",
                  *_logs(pair))
    del outsider


def test_our_user_follows_a_room_upgrade_on_synapse(pair: Pair, synroom: SynRoom) -> None:
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    old = _ok(_api(s, "POST", "/createRoom", h.sam_token, {"preset": "public_chat", "room_version": "10"}))["room_id"]
    _ok(_api(p, "POST", f"/join/{quote(old)}", h.pat_token, {}, via=pair.synapse.server_name), *_logs(pair))
    new = _ok(_api(s, "POST", f"/rooms/{quote(old)}/upgrade", h.sam_token, {"new_version": "12"}), *_logs(pair))["replacement_room"]
    h.pat_sync.wait(
        lambda sy: _state_seen(sy, old, "m.room.tombstone", lambda c: c.get("replacement_room") == new),
        "the tombstone on pocketserver", *_logs(pair),
    )
    _ok(_api(p, "POST", f"/join/{quote(new)}", h.pat_token, {}, via=pair.synapse.server_name), *_logs(pair))
    create = _ok(_api(p, "GET", f"/rooms/{quote(new)}/state/m.room.create/", h.pat_token))
    assert create["room_version"] == "12" and create["predecessor"]["room_id"] == old, create
    _send(p, h.pat_token, new, "upgraded")
    Syncer(s, h.sam_token).wait(lambda sy: "upgraded" in sy.bodies(new), "pat's message in the new room", *_logs(pair))


def _invited(pair: Pair, inviter_token: str, invitee: str) -> str:
    s = pair.synapse.base_url
    room = _ok(_api(s, "POST", "/createRoom", inviter_token, {"preset": "private_chat"}))["room_id"]
    _ok(_api(s, "POST", f"/rooms/{quote(room)}/invite", inviter_token, {"user_id": invitee}), *_logs(pair))
    return str(room)


def test_synapse_user_invites_ours_who_accepts_and_then_rejects_another(pair: Pair, synroom: SynRoom) -> None:
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    rita, rita_token = register(p, "pocketrita")
    rita_sync = Syncer(p, rita_token)
    accepted = _invited(pair, h.sam_token, rita)
    rita_sync.wait(lambda sy: accepted in sy.invites, "the invite on pocketserver", *_logs(pair))
    # No via: the join goes through the inviter's server.
    _ok(_api(p, "POST", f"/rooms/{quote(accepted)}/join", rita_token, {}), *_logs(pair))
    _send(s, h.sam_token, accepted, "glad you came")
    rita_sync.wait(lambda sy: "glad you came" in sy.bodies(accepted), "a message in the accepted room", *_logs(pair))
    members = _ok(_api(s, "GET", f"/rooms/{quote(accepted)}/joined_members", h.sam_token))["joined"]
    assert rita in members, members

    rejected = _invited(pair, h.sam_token, rita)
    rita_sync.wait(lambda sy: rejected in sy.invites, "the second invite", *_logs(pair))
    _ok(_api(p, "POST", f"/rooms/{quote(rejected)}/leave", rita_token, {}), *_logs(pair))
    sam_sync = Syncer(s, h.sam_token)
    sam_sync.wait(lambda sy: _membership_seen(sy, rejected, rita, "leave"), "the rejection on Synapse", *_logs(pair))
    # Our side shows the room as left, and no longer as an invite.
    assert rita_sync.since is not None
    rooms = _ok(_api(p, "GET", "/sync", rita_token, timeout="0", since=rita_sync.since))["rooms"]
    assert rejected in rooms.get("leave", {}) and rejected not in rooms.get("invite", {}), rooms
    rooms = _ok(_api(p, "GET", "/sync", rita_token, timeout="0"))["rooms"]
    assert rejected not in rooms.get("invite", {}) and rejected not in rooms.get("join", {}), rooms


def test_a_late_joiner_pages_back_over_history_from_synapse(pair: Pair, synroom: SynRoom) -> None:
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    room = _ok(_api(s, "POST", "/createRoom", h.sam_token, {"preset": "public_chat"}))["room_id"]
    early = [f"old news {i}" for i in range(25)]
    # History with state changes in it: a topic, and another Synapse user who joins,
    # talks and leaves again (the late joiner's server never had that state).
    wes, wes_token = register(s, "synwes")
    for i, text in enumerate(early):
        if i == 8:
            _ok(_api(s, "PUT", f"/rooms/{quote(room)}/state/m.room.topic/", h.sam_token, {"topic": "old topic"}))
        if i == 12:
            _ok(_api(s, "POST", f"/join/{quote(room)}", wes_token, {}))
        _send(s, wes_token if 12 <= i < 16 else h.sam_token, room, text)
        if i == 16:
            _ok(_api(s, "POST", f"/rooms/{quote(room)}/leave", wes_token, {}))
    late, late_token = register(p, "pocketlate")
    _ok(_api(p, "POST", f"/join/{quote(room)}", late_token, {}, via=pair.synapse.server_name), *_logs(pair))
    seen: list[str] = []
    senders: dict[str, str] = {}
    token = None
    deadline = time.monotonic() + WAIT_S
    for _ in range(30):
        params = {"dir": "b", "limit": "10"}
        if token:
            params["from"] = token
        page = _ok(_api(p, "GET", f"/rooms/{quote(room)}/messages", late_token, **params), *_logs(pair))
        for e in page.get("chunk", []):
            if e.get("type") == "m.room.message":
                seen.append(e["content"].get("body"))
                senders[e["content"].get("body")] = e["sender"]
            elif e.get("type") == "m.room.topic":
                seen.append("topic: " + e["content"].get("topic", ""))
            elif e.get("type") == "m.room.member" and e.get("state_key") == wes:
                seen.append(f"wes: {e['content'].get('membership')}")
        if all(t in seen for t in early) or "end" not in page or time.monotonic() > deadline:
            break
        token = page["end"]
    # Newest first going back, so reversed it is the order they were sent in, each once.
    want = [*early[:8], "topic: old topic", *early[8:12], "wes: join", *early[12:17], "wes: leave", *early[17:]]
    assert [t for t in reversed(seen) if t in want] == want, (seen, *_logs(pair))
    assert senders["old news 13"] == wes and senders["old news 7"] == h.sam
    del late


def test_our_user_leaves_and_rejoins_the_synapse_room(pair: Pair, synroom: SynRoom) -> None:
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    _ok(_api(p, "POST", f"/rooms/{quote(h.room_id)}/leave", h.pat_token, {}), *_logs(pair))
    h.sam_sync.wait(lambda sy: _membership_seen(sy, h.room_id, h.pat, "leave"), "pat's leave on Synapse", *_logs(pair))
    _send(s, h.sam_token, h.room_id, "said while pat was away")
    n = sum(1 for e in h.sam_sync.events.get(h.room_id, []) if e.get("state_key") == h.pat)
    _ok(_api(p, "POST", f"/join/{quote(h.room_id)}", h.pat_token, {}, via=pair.synapse.server_name), *_logs(pair))
    h.sam_sync.wait(
        lambda sy: sum(1 for e in sy.events.get(h.room_id, []) if e.get("state_key") == h.pat) > n
        and _membership_seen(sy, h.room_id, h.pat, "join"), "pat's rejoin on Synapse", *_logs(pair),
    )
    _send(s, h.sam_token, h.room_id, "welcome back pat")
    h.pat_sync.wait(lambda sy: "welcome back pat" in sy.bodies(h.room_id), "a message after the rejoin", *_logs(pair))
    _send(p, h.pat_token, h.room_id, "glad to be back")
    h.sam_sync.wait(lambda sy: "glad to be back" in sy.bodies(h.room_id), "pat's message after the rejoin", *_logs(pair))


@pytest.mark.parametrize("version", ["1", "6", "11", "12"])
def test_joins_and_talk_in_each_room_version_synapse_hosts(pair: Pair, synroom: SynRoom, version: str) -> None:
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    room = _ok(_api(s, "POST", "/createRoom", h.sam_token, {"preset": "public_chat", "room_version": version}),
               *_logs(pair))["room_id"]
    _send(s, h.sam_token, room, f"v{version} before")
    _ok(_api(p, "POST", f"/join/{quote(room)}", h.pat_token, {}, via=pair.synapse.server_name), *_logs(pair))
    create = _ok(_api(p, "GET", f"/rooms/{quote(room)}/state/m.room.create/", h.pat_token))
    assert create.get("room_version", "1") == version
    _send(p, h.pat_token, room, f"v{version} from pocketserver")
    sam_sync = Syncer(s, h.sam_token)
    sam_sync.wait(lambda sy: f"v{version} from pocketserver" in sy.bodies(room), "pat's message", *_logs(pair))
    _send(s, h.sam_token, room, f"v{version} from synapse")
    h.pat_sync.wait(lambda sy: f"v{version} from synapse" in sy.bodies(room), "sam's message", *_logs(pair))


def test_synapse_moderation_reaches_our_users(pair: Pair, synroom: SynRoom) -> None:
    """A redaction, a kick and a ban by the Synapse room's admin, as our users see them."""
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    room = _ok(_api(s, "POST", "/createRoom", h.sam_token, {"preset": "public_chat"}))["room_id"]
    vic, vic_token = register(p, "pocketvic")
    vic_sync = Syncer(p, vic_token)
    _ok(_api(p, "POST", f"/join/{quote(room)}", vic_token, {}, via=pair.synapse.server_name), *_logs(pair))
    oops = _send(s, h.sam_token, room, "oops, wrong room")
    vic_sync.wait(lambda sy: "oops, wrong room" in sy.bodies(room), "the message", *_logs(pair))
    _ok(_api(s, "PUT", f"/rooms/{quote(room)}/redact/{quote(oops)}/r1", h.sam_token, {"reason": "typo"}))

    def redacted(sy: Syncer) -> bool:
        return any(e.get("type") == "m.room.redaction" and oops in (e.get("redacts"), e.get("content", {}).get("redacts"))
                   for e in sy.events.get(room, []))

    vic_sync.wait(redacted, "the redaction", *_logs(pair))
    r = _api(p, "GET", f"/rooms/{quote(room)}/event/{quote(oops)}", vic_token)
    assert _ok(r)["content"] == {}, r.text
    _ok(_api(s, "POST", f"/rooms/{quote(room)}/kick", h.sam_token, {"user_id": vic, "reason": "out"}), *_logs(pair))
    deadline = time.monotonic() + WAIT_S
    left = False
    for _ in range(100):
        rooms = _ok(_api(p, "GET", "/sync", vic_token, timeout="1000", since=vic_sync.since or ""))["rooms"]
        if room in rooms.get("leave", {}):
            left = True
            break
        if time.monotonic() > deadline:
            break
    assert left, _logs(pair)
    members = _ok(_api(p, "GET", f"/rooms/{quote(h.room_id)}/joined_members", h.pat_token))["joined"]
    assert h.pat in members
    # Banned: joining again is refused by the room's server, with its errcode.
    _ok(_api(s, "POST", f"/rooms/{quote(room)}/ban", h.sam_token, {"user_id": vic}), *_logs(pair))
    r = _api(p, "POST", f"/join/{quote(room)}", vic_token, {}, via=pair.synapse.server_name)
    assert r.status_code == 403 and r.json()["errcode"] == "M_FORBIDDEN", r.text


def test_our_user_knocks_on_a_synapse_room_and_is_let_in(pair: Pair, synroom: SynRoom) -> None:
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    room = _ok(_api(s, "POST", "/createRoom", h.sam_token, {
        "preset": "private_chat", "room_version": "12",
        "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    }), *_logs(pair))["room_id"]
    kit, kit_token = register(p, "pocketkit")
    _ok(_api(p, "POST", f"/knock/{quote(room)}", kit_token, {"reason": "let me in"}, via=pair.synapse.server_name),
        *_logs(pair))
    sam_sync = Syncer(s, h.sam_token)
    sam_sync.wait(lambda sy: _membership_seen(sy, room, kit, "knock"), "the knock on Synapse", *_logs(pair))
    _ok(_api(s, "POST", f"/rooms/{quote(room)}/invite", h.sam_token, {"user_id": kit}), *_logs(pair))
    kit_sync = Syncer(p, kit_token)
    kit_sync.wait(lambda sy: room in sy.invites, "the invite after the knock", *_logs(pair))
    _ok(_api(p, "POST", f"/join/{quote(room)}", kit_token, {}), *_logs(pair))
    _send(s, h.sam_token, room, "come in")
    kit_sync.wait(lambda sy: "come in" in sy.bodies(room), "a message after the knock", *_logs(pair))


def test_our_user_invites_others_into_the_synapse_room(pair: Pair, synroom: SynRoom) -> None:
    """pat, in sam's room, invites a Synapse user and one of ours; both accept."""
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    tom, tom_token = register(s, "syntom")
    una, una_token = register(p, "pocketuna")
    levels = _ok(_api(s, "GET", f"/rooms/{quote(h.room_id)}/state/m.room.power_levels/", h.sam_token))
    if levels["users"].get(h.pat, 0) < levels.get("invite", 0):  # Synapse's public_chat: invite 50
        levels["users"][h.pat] = levels["invite"]
        _ok(_api(s, "PUT", f"/rooms/{quote(h.room_id)}/state/m.room.power_levels/", h.sam_token, levels))
        h.pat_sync.wait(
            lambda sy: _state_seen(sy, h.room_id, "m.room.power_levels",
                                   lambda c: c.get("users", {}).get(h.pat) == levels["invite"]),
            "pat's power to invite", *_logs(pair),
        )
    for invitee in (tom, una):
        _ok(_api(p, "POST", f"/rooms/{quote(h.room_id)}/invite", h.pat_token, {"user_id": invitee}), *_logs(pair))
    tom_sync, una_sync = Syncer(s, tom_token), Syncer(p, una_token)
    tom_sync.wait(lambda sy: h.room_id in sy.invites, "pat's invite on Synapse", *_logs(pair))
    una_sync.wait(lambda sy: h.room_id in sy.invites, "pat's invite to una", *_logs(pair))
    _ok(_api(s, "POST", f"/rooms/{quote(h.room_id)}/join", tom_token, {}), *_logs(pair))
    _ok(_api(p, "POST", f"/rooms/{quote(h.room_id)}/join", una_token, {}), *_logs(pair))
    h.sam_sync.wait(
        lambda sy: _membership_seen(sy, h.room_id, tom, "join") and _membership_seen(sy, h.room_id, una, "join"),
        "both joins on Synapse", *_logs(pair),
    )
    _send(p, una_token, h.room_id, "una says hi")
    tom_sync.wait(lambda sy: "una says hi" in sy.bodies(h.room_id), "una's message for tom", *_logs(pair))


def test_nio_encrypted_conversation_in_a_synapse_room(pair: Pair, tmp_path: Path) -> None:
    import asyncio

    asyncio.run(nio_conversation(
        pair, tmp_path, synapse_hosts=True, names=("niosyn", "niopocket"),
        texts=("secret from Synapse 🔐", "secret from pocketserver ✓"),
    ))


def test_zz_messages_sent_while_pocketserver_is_down_arrive_in_order(pair: Pair, synroom: SynRoom) -> None:
    """Recovery (last: it restarts pocketserver on the same database): Synapse keeps
    what it could not deliver (in memory while its back-off, 1 s doubling to 10 s in the
    test config, is under an hour; past that it sends only each room's latest event and
    we fetch the rest with get_missing_events) and sends it when it next tries us: on
    its next event for us, its one-minute wake-up, or at once when a signed request of
    ours reaches it (it then ends its back-off for us). Here pat looks at sam's profile
    after the restart, which our server asks Synapse for; pat's /sync then has every
    message, in order."""
    h = synroom
    p, s = pair.pocket.base_url, pair.synapse.base_url
    h.pat_sync.once(0)
    stop_process(pair.pocket.proc)
    texts = [f"while pocketserver was away {i}" for i in range(8)]
    for text in texts:
        _send(s, h.sam_token, h.room_id, text)
    restart_pocketserver(pair.pocket)
    t0 = time.monotonic()
    _ok(_api(p, "GET", f"/profile/{quote(h.sam)}", h.pat_token), *_logs(pair))
    pat_sync = Syncer(pair.pocket.base_url, h.pat_token)
    pat_sync.since = h.pat_sync.since
    pat_sync.wait(lambda sy: all(t in sy.bodies(h.room_id) for t in texts), "the messages sent while down", *_logs(pair))
    print(f"recovery: every message on pocketserver {time.monotonic() - t0:.1f} s after its restart")
    assert [b for b in pat_sync.bodies(h.room_id) if b in texts] == texts
    # And the room goes on both ways.
    _send(pair.pocket.base_url, h.pat_token, h.room_id, "back again")
    h.sam_sync.wait(lambda sy: "back again" in sy.bodies(h.room_id), "pat's message after the restart", *_logs(pair))
