"""Application service registrations: parsing, namespaces, and interest in events.

Spec: shared/spec/content/application-service-api.md, "Registration" (the
``registration`` definition in data/api/application-service/definitions/) and the
note on which events an application service is "interested" in:

1. an event whose sender, or (for ``m.room.member``) whose ``state_key``, is a *local*
   user in one of the AS's user namespaces, or the AS's own ``sender_localpart`` user;
2. any event in a room whose ID matches a ``rooms`` namespace;
3. any event in a room with an alias (canonical, alternative, or published in the
   room directory) matching an ``aliases`` namespace;
4. any event in a room where a local user of its namespaces is a joined member.

A namespace's regex is matched from the start of the string, as Synapse does
(``re.match``): registrations written for Synapse, which almost every bridge tests
against, mean the same thing here.

Pure: this module reads no files (the caller hands it the decoded YAML) and knows no
storage; the caller passes a room's aliases and members.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pocketserver.protocol.identifiers import is_valid_localpart

# The keys under which bridges ask for ephemeral events: the stable one (spec v1.13)
# and MSC2409's, which mautrix-based bridges still write.
EPHEMERAL_KEYS = ("receive_ephemeral", "de.sorunome.msc2409.push_ephemeral")
# MSC3202 (device masquerading); mautrix writes it where a bridge does end-to-bridge
# encryption. MSC4203 to-device pushes: the key Synapse reads for them.
MSC3202_KEY = "org.matrix.msc3202"
TO_DEVICE_KEY = "org.matrix.msc4203.receive_to_device"
NAMESPACE_KINDS = ("users", "aliases", "rooms")


class RegistrationError(ValueError):
    """A registration is wrong; ``field`` names the key (``namespaces.users[0].regex``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Namespace:
    regex: str
    exclusive: bool
    pattern: re.Pattern[str]

    def matches(self, value: str) -> bool:
        return self.pattern.match(value) is not None


@dataclass(frozen=True, slots=True)
class Registration:
    id: str
    url: str | None
    as_token: str
    hs_token: str
    sender_localpart: str
    server_name: str
    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()
    rate_limited: bool = True
    protocols: tuple[str, ...] = ()
    receive_ephemeral: bool = False
    receive_to_device: bool = False
    device_masquerading: bool = False

    @property
    def sender(self) -> str:
        return f"@{self.sender_localpart}:{self.server_name}"

    # -- users ---------------------------------------------------------------------

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(":" + self.server_name)

    def is_interested_in_user(self, user_id: str) -> bool:
        """The AS's own user, or a *local* user in its user namespaces."""
        if user_id == self.sender:
            return True
        return self.is_local(user_id) and any(ns.matches(user_id) for ns in self.users)

    def is_exclusive_user(self, user_id: str) -> bool:
        if user_id == self.sender:
            return True
        return any(ns.exclusive and ns.matches(user_id) for ns in self.users)

    # -- aliases and rooms -------------------------------------------------------------

    def is_interested_in_alias(self, alias: str) -> bool:
        return any(ns.matches(alias) for ns in self.aliases)

    def is_exclusive_alias(self, alias: str) -> bool:
        return any(ns.exclusive and ns.matches(alias) for ns in self.aliases)

    def is_interested_in_room(self, room_id: str) -> bool:
        return any(ns.matches(room_id) for ns in self.rooms)

    def is_exclusive_room(self, room_id: str) -> bool:
        return any(ns.exclusive and ns.matches(room_id) for ns in self.rooms)


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What :func:`is_interested` needs to know about one event."""

    room_id: str
    sender: str
    type: str
    state_key: str | None = None


def is_interested(
    reg: Registration,
    event: EventFacts,
    room_aliases: Iterable[str] = (),
    joined_members: Iterable[str] = (),
) -> bool:
    """Whether ``reg`` should receive ``event`` (rules 1-4 of the module docstring)."""
    # 1. the sender, or the target of a membership change
    if reg.is_interested_in_user(event.sender):
        return True
    if event.type == "m.room.member" and event.state_key and reg.is_interested_in_user(event.state_key):
        return True
    # 2. the room ID
    if reg.is_interested_in_room(event.room_id):
        return True
    # 3. one of the room's aliases
    if any(reg.is_interested_in_alias(a) for a in room_aliases):
        return True
    # 4. a joined member of the room
    return any(reg.is_interested_in_user(m) for m in joined_members)


# -- parsing ---------------------------------------------------------------------------


def _str(data: Mapping[str, Any], key: str, *, required: bool = True, empty: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise RegistrationError(key, "is required")
        return ""
    if not isinstance(value, str):
        raise RegistrationError(key, "must be a string")
    if not value and not empty:
        raise RegistrationError(key, "must not be empty")
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RegistrationError(key, "must be true or false")
    return value


def _namespaces(data: Any, kind: str) -> tuple[Namespace, ...]:
    where = f"namespaces.{kind}"
    if data is None:
        return ()
    if not isinstance(data, list):
        raise RegistrationError(where, "must be a list")
    out = []
    for i, item in enumerate(data):
        here = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise RegistrationError(here, "must be a mapping with 'regex' and 'exclusive'")
        regex = item.get("regex")
        if not isinstance(regex, str) or not regex:
            raise RegistrationError(f"{here}.regex", "must be a non-empty string")
        try:
            pattern = re.compile(regex)
        except re.error as e:
            raise RegistrationError(f"{here}.regex", f"not a regular expression ({e})") from None
        exclusive = item.get("exclusive", False)
        if not isinstance(exclusive, bool):
            raise RegistrationError(f"{here}.exclusive", "must be true or false")
        out.append(Namespace(regex, exclusive, pattern))
    return tuple(out)


def parse_registration(data: Any, server_name: str) -> Registration:
    """A :class:`Registration` from a decoded registration file, or
    :class:`RegistrationError` naming the first wrong field. Keys it does not know
    are ignored (bridges write their own)."""
    if not isinstance(data, dict):
        raise RegistrationError("(file)", "must be a mapping of keys to values")
    reg_id = _str(data, "id")
    if "url" not in data:
        raise RegistrationError("url", "is required (null for an application service that takes no pushes)")
    url = data.get("url")
    if url is not None:
        if not isinstance(url, str):
            raise RegistrationError("url", "must be a string or null")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistrationError("url", "must be an http:// or https:// URL")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise RegistrationError("url", "has a bad port") from None
    as_token = _str(data, "as_token")
    hs_token = _str(data, "hs_token")
    sender_localpart = _str(data, "sender_localpart")
    if not is_valid_localpart(sender_localpart):
        raise RegistrationError("sender_localpart", "is not a valid user name")
    ns = data.get("namespaces")
    if ns is None:
        raise RegistrationError("namespaces", "is required")
    if not isinstance(ns, dict):
        raise RegistrationError("namespaces", "must be a mapping of users, aliases and rooms")
    protocols = data.get("protocols") or []
    if not isinstance(protocols, list) or not all(isinstance(p, str) and p for p in protocols):
        raise RegistrationError("protocols", "must be a list of protocol names")
    receive_ephemeral = any(_bool(data, k, False) for k in EPHEMERAL_KEYS)
    return Registration(
        id=reg_id,
        url=url.rstrip("/") if url else None,
        as_token=as_token,
        hs_token=hs_token,
        sender_localpart=sender_localpart,
        server_name=server_name,
        users=_namespaces(ns.get("users"), "users"),
        aliases=_namespaces(ns.get("aliases"), "aliases"),
        rooms=_namespaces(ns.get("rooms"), "rooms"),
        rate_limited=_bool(data, "rate_limited", True),
        protocols=tuple(protocols),
        receive_ephemeral=receive_ephemeral,
        receive_to_device=_bool(data, TO_DEVICE_KEY, False),
        device_masquerading=_bool(data, MSC3202_KEY, False),
    )


def check_unique(registrations: Iterable[Registration]) -> None:
    """The spec: "each ``as_token`` and ``id`` MUST be unique per application service"."""
    ids: set[str] = set()
    tokens: set[str] = set()
    for reg in registrations:
        if reg.id in ids:
            raise RegistrationError("id", f"{reg.id!r} is used by another registration")
        if reg.as_token in tokens:
            raise RegistrationError("as_token", "is used by another registration")
        ids.add(reg.id)
        tokens.add(reg.as_token)


class AppserviceRegistry:
    """Every configured application service, with the look-ups requests need."""

    def __init__(self, registrations: Iterable[Registration] = ()) -> None:
        self.all: tuple[Registration, ...] = tuple(registrations)
        check_unique(self.all)
        self._by_token = {r.as_token: r for r in self.all}
        self._by_id = {r.id: r for r in self.all}
        self._senders = {r.sender: r for r in self.all}

    def __bool__(self) -> bool:
        return bool(self.all)

    def by_as_token(self, token: str) -> Registration | None:
        return self._by_token.get(token)

    def by_id(self, as_id: str) -> Registration | None:
        return self._by_id.get(as_id)

    def by_sender(self, user_id: str) -> Registration | None:
        return self._senders.get(user_id)

    def exclusive_owner_of_user(self, user_id: str) -> Registration | None:
        return next((r for r in self.all if r.is_exclusive_user(user_id)), None)

    def exclusive_owner_of_alias(self, alias: str) -> Registration | None:
        return next((r for r in self.all if r.is_exclusive_alias(alias)), None)

    def interested_in_user(self, user_id: str) -> list[Registration]:
        return [r for r in self.all if r.is_interested_in_user(user_id)]

    def interested_in_alias(self, alias: str) -> list[Registration]:
        return [r for r in self.all if r.is_interested_in_alias(alias)]

    def for_protocol(self, protocol: str) -> list[Registration]:
        return [r for r in self.all if protocol in r.protocols]

    def protocols(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.all:
            for p in r.protocols:
                seen.setdefault(p)
        return list(seen)

    def exempt_from_rate_limits(self, user_id: str) -> bool:
        """An AS's own user always ("The sender is excluded"); its namespace's users
        when it registered ``rate_limited: false``."""
        for r in self.all:
            if user_id == r.sender:
                return True
            if not r.rate_limited and r.is_interested_in_user(user_id):
                return True
        return False
