"""A real IRC bridge through pocketserver's Application Service API (issue 13).

heisenbridge (PyPI; built on mautrix) generates its registration with ``--generate``;
pocketserver loads it from ``[appservices] registration_files``. ngIRCd runs on a
loopback port (tests/interop/irc.py). A Matrix user, alice, driven over plain HTTP,
invites the bridge's bot to a direct chat (which makes it her control room) and uses
heisenbridge's own commands: ADDNETWORK, ADDSERVER, OPEN, then CONNECT and JOIN in the
network room. bob, a plain IRC client in the test, talks with her in ``#bridge`` both ways.

Then the bridge is stopped; alice keeps talking on Matrix (pocketserver accepts every
message); the bridge starts again, and bob receives every message from the outage.
heisenbridge accepts transactions before it has reconnected to IRC and drops what it
cannot deliver yet, so the bridge's registered URL points at a ``Gate`` the test opens only
once the restarted bridge is back in the channel: until then pocketserver sees a bridge
that refuses connections, exactly as while it was stopped, and must keep the events.

Skipped, with the reason, only when ngircd or heisenbridge cannot be installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest

from tests.interop.conftest import free_port, start_pocketserver
from tests.interop.irc import (
    Gate,
    Heisenbridge,
    IrcUser,
    generate_registration,
    heisenbridge_python,
    start_ngircd,
)
from tests.interop.synapse import register

pytestmark = pytest.mark.interop

T = TypeVar("T")

STEP_DEADLINE_S = 60.0
# pocketserver retries a bridge that was down with back-off; the backlog must arrive
# once the bridge answers again, within this bound.
BACKLOG_DEADLINE_S = 240.0
NETWORK = "loopnet"
CHANNEL = "#bridge"


class MatrixUser:
    """A Matrix user over plain HTTP: every event /sync brings, kept per room."""

    def __init__(self, base_url: str, name: str) -> None:
        self.user_id, token = register(base_url, name)
        self.http = httpx.Client(
            base_url=base_url + "/_matrix/client/v3",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        self.since: str | None = None
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.invited: list[str] = []
        self._txn = 0

    def call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        r = self.http.request(method, path, json=body, params=params or None)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def send_text(self, room_id: str, text: str) -> str:
        self._txn += 1
        path = f"/rooms/{quote(room_id)}/send/m.room.message/irc{self._txn}"
        return str(self.call("PUT", path, {"msgtype": "m.text", "body": text})["event_id"])

    def join(self, room_id: str) -> None:
        self.call("POST", f"/join/{quote(room_id)}", {})

    def _sync(self) -> None:
        params = {"timeout": "2000"}
        if self.since:
            params["since"] = self.since
        answer = self.call("GET", "/sync", **params)
        self.since = answer["next_batch"]
        rooms = answer.get("rooms", {})
        for room_id, room in rooms.get("join", {}).items():
            self.events.setdefault(room_id, []).extend(room.get("timeline", {}).get("events", []))
        for room_id in rooms.get("invite", {}):
            if room_id not in self.invited:
                self.invited.append(room_id)

    def wait(self, what: str, check: Callable[[], T | None], deadline_s: float = STEP_DEADLINE_S) -> T:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            found = check()
            if found is not None:
                return found
            self._sync()
        raise AssertionError(f"{self.user_id} never saw {what}")

    def messages(self, room_id: str, sender: str | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.events.get(room_id, [])
            if e.get("type") == "m.room.message" and (sender is None or e.get("sender") == sender)
        ]

    def wait_notice(self, room_id: str, sender: str, contains: str) -> str:
        """The body of the first notice from ``sender`` containing ``contains``."""

        def check() -> str | None:
            for e in self.messages(room_id, sender):
                body = str(e.get("content", {}).get("body", ""))
                if contains in body:
                    return body
            return None

        return self.wait(f"a notice from {sender} containing {contains!r}", check)

    def command(self, room_id: str, bot: str, text: str, answer: str) -> str:
        """Send a bridge command and wait for the bridge's answer."""
        self.send_text(room_id, text)
        return self.wait_notice(room_id, bot, answer)

    def wait_invite(self, known: set[str]) -> str:
        """A room alice is invited to that is not in ``known``; she joins it."""
        room_id = self.wait("an invitation from the bridge", lambda: next((r for r in self.invited if r not in known), None))
        self.join(room_id)
        return room_id


def test_matrix_and_irc_talk_both_ways_and_nothing_is_lost_while_the_bridge_is_down(tmp_path: Path) -> None:
    python = heisenbridge_python()
    with start_ngircd(tmp_path / "ngircd") as irc:
        gate_port = free_port()
        registration = tmp_path / "heisenbridge.yaml"  # next to pocketserver.toml
        generate_registration(python, registration, gate_port)
        appservices = '[appservices]\nregistration_files = ["heisenbridge.yaml"]\n'
        with start_pocketserver(tmp_path, extra_toml=appservices) as sp:
            bridge = Heisenbridge(python, registration, free_port(), sp.base_url, tmp_path / "heisenbridge.log")
            gate = Gate(gate_port, bridge.listen_port)
            bob = IrcUser.connect(irc.port, "bob")
            try:
                gate.open()
                bridge.start()
                _scenario(sp.base_url, sp.server_name, bridge, gate, irc.port, bob)
            except BaseException:
                print(f"--- pocketserver log ---\n{sp.log()[-8000:]}")
                print(f"--- heisenbridge log ---\n{bridge.log()[-8000:]}")
                raise
            finally:
                bob.close()
                bridge.stop()
                gate.close()


def _scenario(
    base_url: str, server_name: str, bridge: Heisenbridge, gate: Gate, irc_port: int, bob: IrcUser
) -> None:
    bot = f"@heisenbridge:{server_name}"
    bob.join(CHANNEL)

    # alice opens the control room by inviting the bridge's bot to a direct chat.
    alice = MatrixUser(base_url, "alice")
    control = alice.call("POST", "/createRoom", {"invite": [bot], "is_direct": True, "preset": "trusted_private_chat"})["room_id"]
    alice.wait_notice(control, bot, "You have been granted access to the IRC bridge")

    # heisenbridge's own commands: a network, its server, and a network room.
    alice.command(control, bot, f"ADDNETWORK {NETWORK}", "Network added.")
    alice.command(control, bot, f"ADDSERVER {NETWORK} 127.0.0.1 {irc_port}", "Server added.")
    known = {control}
    alice.command(control, bot, f"OPEN {NETWORK}", f"You have been invited to {NETWORK}")
    network_room = alice.wait_invite(known)
    known.add(network_room)
    alice.command(network_room, bot, "CONNECT", "Welcome to the Internet Relay Network")
    alice.send_text(network_room, f"JOIN {CHANNEL}")
    bob.wait_for(lambda m: m.command == "JOIN" and m.nick == "alice" and m.params[:1] == (CHANNEL,), "alice joining")
    channel_room = alice.wait_invite(known)

    # IRC -> Matrix: bob's line arrives from his puppet.
    puppet = f"@irc_{NETWORK}_bob:{server_name}"
    bob.say(CHANNEL, "hello from IRC")
    event = alice.wait("bob's message from IRC", lambda: _find(alice.messages(channel_room, puppet), "hello from IRC"))
    assert event["content"]["msgtype"] == "m.text"

    # Matrix -> IRC: alice's message reaches bob under her nick.
    alice.send_text(channel_room, "hello from Matrix")
    bob.wait_for(
        lambda m: m.command == "PRIVMSG" and m.nick == "alice" and m.params == (CHANNEL, "hello from Matrix"),
        "alice's message from Matrix",
    )

    # The bridge goes down; alice keeps talking and pocketserver accepts every message.
    bridge.stop()
    gate.close()
    bob.wait_for(lambda m: m.command == "QUIT" and m.nick == "alice", "alice's bridge leaving IRC")
    during = [f"said while the bridge was down #{i}" for i in range(1, 4)]
    for text in during:
        alice.send_text(channel_room, text)

    # The bridge comes back, reconnects to IRC and rejoins the channel on its own; then its
    # URL answers again and the outage's messages must all reach IRC.
    bridge.start()
    bob.wait_for(lambda m: m.command == "JOIN" and m.nick == "alice" and m.params[:1] == (CHANNEL,), "alice rejoining")
    gate.open()
    deadline = time.monotonic() + BACKLOG_DEADLINE_S
    while not set(during) <= set(bob.messages_from("alice", CHANNEL)):
        left = deadline - time.monotonic()
        assert left > 0, f"bob received only {bob.messages_from('alice', CHANNEL)} after the bridge came back"
        bob.wait_for(lambda m: m.command == "PRIVMSG", "the outage's messages", deadline_s=left)
    assert bob.messages_from("alice", CHANNEL) == ["hello from Matrix", *during], "each message once, in order"

    # And both ways again after the restart.
    bob.say(CHANNEL, "welcome back")
    alice.wait("bob's message after the restart", lambda: _find(alice.messages(channel_room, puppet), "welcome back"))
    alice.send_text(channel_room, "thanks")
    bob.wait_for(lambda m: m.command == "PRIVMSG" and m.nick == "alice" and m.params == (CHANNEL, "thanks"), "alice's reply")


def _find(events: list[dict[str, Any]], body: str) -> dict[str, Any] | None:
    return next((e for e in events if e.get("content", {}).get("body") == body), None)
