"""Identifier grammars: server names, user IDs, room IDs, event IDs, room aliases.

Spec: shared/spec/content/appendices.md, "Identifier Grammar" — "Common Namespaced
Identifier Grammar", "Server Name", "Common Identifier Format", "User Identifiers"
(and "Historical User IDs"), "Room IDs", "Room Aliases", "Event IDs", "Opaque
Identifiers"; room-version specifics in rooms/fragments/v1-event-ids.md,
v4-event-ids.md and rooms/v12.md (hash room IDs).

Two levels of strictness, as the spec asks:

- *accepting* identifiers that other servers already use (events over federation,
  historical rooms): user ID localparts may be any non-surrogate code points except
  ``:`` and NUL, including the empty string (``strict=False``, the default of
  :meth:`UserID.parse`);
- *creating* identifiers (registering a local user): the localpart grammar
  ``[a-z0-9._=/+-]+`` (:func:`is_valid_localpart`, ``UserID.parse(s, strict=True)``).

Every sigilled identifier is at most 255 bytes of UTF-8.  Server names are compared
case-sensitively and never normalised here.

Pure: no DNS, no I/O.  ``ipaddress`` only checks the literal's syntax.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass

from pocketserver.protocol.room_versions import EventIdFormat, RoomVersion

#: Maximum length in bytes of a user ID, room ID, room alias or event ID.
MAX_IDENTIFIER_BYTES = 255


class InvalidIdentifier(ValueError):
    """A string does not match the grammar of the identifier it should be."""


# -- server names ------------------------------------------------------------

_PORT = re.compile(r"[0-9]{1,5}")
_IPV4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_DNS_NAME = re.compile(r"[0-9A-Za-z.-]{1,255}")


def _check_hostname(host: str) -> None:
    if host.startswith("["):
        # "[" IPv6address "]", the address per RFC 3513 section 2.2.
        if not host.endswith("]"):
            raise InvalidIdentifier(f"unterminated IPv6 literal in {host!r}")
        inner = host[1:-1]
        if not _IPV6_CHARS.fullmatch(inner):
            raise InvalidIdentifier(f"bad IPv6 literal {host!r}")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidIdentifier(f"bad IPv6 literal {host!r}") from None
        return
    if _IPV4.fullmatch(host):
        # A dotted quad is an IPv4 literal, whose parts must be 0-255.
        if any(int(part) > 255 for part in host.split(".")):
            raise InvalidIdentifier(f"bad IPv4 literal {host!r}")
        return
    if not _DNS_NAME.fullmatch(host):
        raise InvalidIdentifier(f"bad hostname {host!r}")


def parse_server_name(server_name: str) -> tuple[str, int | None]:
    """Split a server name into ``(host, port)``; port is None when absent.

    ``server_name = hostname [ ":" port ]`` where hostname is a dotted-quad IPv4
    literal, ``[`` IPv6 literal ``]`` or a DNS name.  An IPv6 host is returned *with*
    its brackets (``"[::1]:8448"`` -> ``("[::1]", 8448)``), so that ``host`` and
    ``f"{host}:{port}"`` stay valid server names.  Ports above 65535 are refused.
    """
    if not isinstance(server_name, str) or not server_name:
        raise InvalidIdentifier("empty server name")
    if server_name.startswith("["):
        end = server_name.find("]")
        if end == -1:
            raise InvalidIdentifier(f"unterminated IPv6 literal in {server_name!r}")
        host, rest = server_name[: end + 1], server_name[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidIdentifier(f"junk after IPv6 literal in {server_name!r}")
        port_str: str | None = rest[1:] if rest else None
    else:
        host, sep, port_part = server_name.partition(":")
        port_str = port_part if sep else None
    _check_hostname(host)
    if port_str is None:
        return host, None
    if not _PORT.fullmatch(port_str):
        raise InvalidIdentifier(f"bad port in {server_name!r}")
    port = int(port_str)
    if port > 65535:
        raise InvalidIdentifier(f"port out of range in {server_name!r}")
    return host, port


def is_valid_server_name(server_name: str) -> bool:
    try:
        parse_server_name(server_name)
    except InvalidIdentifier:
        return False
    return True


# -- localparts --------------------------------------------------------------

_STRICT_LOCALPART = re.compile(r"[a-z0-9._=/+\-]+")
# Historical localparts: any non-surrogate code point except ":" and NUL.
_HISTORICAL_FORBIDDEN = re.compile("[:\x00\ud800-\udfff]")


def is_valid_localpart(localpart: str) -> bool:
    """The user ID localpart grammar for *new* users: ``1*[a-z0-9._=/+-]``.

    The 255-byte limit applies to the whole user ID; check that with
    :meth:`UserID.from_parts` or :func:`is_valid_user_id` once the domain is known.
    """
    return isinstance(localpart, str) and bool(_STRICT_LOCALPART.fullmatch(localpart))


def _is_historical_localpart(localpart: str) -> bool:
    return not _HISTORICAL_FORBIDDEN.search(localpart)


def _check_length(s: str, what: str) -> None:
    if len(s.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_BYTES:
        raise InvalidIdentifier(f"{what} longer than {MAX_IDENTIFIER_BYTES} bytes")


def _split_sigilled(s: str, sigil: str, what: str) -> tuple[str, str]:
    if not isinstance(s, str) or not s.startswith(sigil):
        raise InvalidIdentifier(f"{what} must start with {sigil!r}: {s!r}")
    _check_length(s, what)
    localpart, sep, domain = s[1:].partition(":")
    if not sep:
        raise InvalidIdentifier(f"{what} has no server name: {s!r}")
    _check_hostname_and_port(domain, what)
    return localpart, domain


def _check_hostname_and_port(domain: str, what: str) -> None:
    try:
        parse_server_name(domain)
    except InvalidIdentifier as e:
        raise InvalidIdentifier(f"{what} has a bad server name: {e}") from None


# -- user IDs and room aliases -------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserID:
    """``@localpart:domain`` (appendices, "User Identifiers")."""

    localpart: str
    domain: str

    @classmethod
    def parse(cls, s: str, *, strict: bool = False) -> UserID:
        """Parse a user ID.

        ``strict=False`` accepts historical localparts (anything but ``:``, NUL and
        surrogates, even empty), as servers MUST for IDs seen in events.
        ``strict=True`` applies the current grammar, for IDs this server creates.
        """
        localpart, domain = _split_sigilled(s, "@", "user ID")
        if strict:
            if not is_valid_localpart(localpart):
                raise InvalidIdentifier(f"user ID localpart not allowed: {s!r}")
        elif not _is_historical_localpart(localpart):
            raise InvalidIdentifier(f"user ID localpart has forbidden characters: {s!r}")
        return cls(localpart, domain)

    @classmethod
    def from_parts(cls, localpart: str, domain: str, *, strict: bool = True) -> UserID:
        """Build and validate a user ID; strict (new-user grammar) by default."""
        uid = cls.parse(f"@{localpart}:{domain}", strict=strict)
        if uid.localpart != localpart:  # a ":" in the localpart moved into the domain
            raise InvalidIdentifier(f"user ID localpart not allowed: {localpart!r}")
        return uid

    def to_string(self) -> str:
        return f"@{self.localpart}:{self.domain}"

    def __str__(self) -> str:
        return self.to_string()

    @property
    def is_compliant(self) -> bool:
        """False for historical IDs: empty localpart or characters outside U+0021-U+007E.

        The spec says servers SHOULD NOT forward such IDs to clients outside events.
        """
        return bool(self.localpart) and all("\x21" <= c <= "\x7e" for c in self.localpart)


@dataclass(frozen=True, slots=True)
class RoomAlias:
    """``#localpart:domain`` (appendices, "Room Aliases").

    The localpart may hold any non-surrogate code point except ``:`` and NUL.
    """

    localpart: str
    domain: str

    @classmethod
    def parse(cls, s: str) -> RoomAlias:
        localpart, domain = _split_sigilled(s, "#", "room alias")
        if not localpart or not _is_historical_localpart(localpart):
            raise InvalidIdentifier(f"room alias localpart not allowed: {s!r}")
        return cls(localpart, domain)

    @classmethod
    def from_parts(cls, localpart: str, domain: str) -> RoomAlias:
        alias = cls.parse(f"#{localpart}:{domain}")
        if alias.localpart != localpart:  # a ":" in the localpart moved into the domain
            raise InvalidIdentifier(f"room alias localpart not allowed: {localpart!r}")
        return alias

    def to_string(self) -> str:
        return f"#{self.localpart}:{self.domain}"

    def __str__(self) -> str:
        return self.to_string()


def is_valid_user_id(s: str, *, strict: bool = False) -> bool:
    try:
        UserID.parse(s, strict=strict)
    except InvalidIdentifier:
        return False
    return True


def is_valid_room_alias(s: str) -> bool:
    try:
        RoomAlias.parse(s)
    except InvalidIdentifier:
        return False
    return True


def get_domain_from_id(s: str) -> str:
    """The server-name part of a sigilled ``&localpart:domain`` identifier."""
    _, sep, domain = s.partition(":")
    if not sep or not domain:
        raise InvalidIdentifier(f"identifier has no server name: {s!r}")
    return domain


# -- room IDs and event IDs --------------------------------------------------------

_URLSAFE_HASH = re.compile(r"[A-Za-z0-9_-]{43}")
_STANDARD_HASH = re.compile(r"[A-Za-z0-9+/]{43}")


def _is_sha256_base64(s: str, urlsafe: bool) -> bool:
    """True if ``s`` is the canonical 43-character unpadded base64 of 32 bytes.

    Canonical means the last character's 2 spare bits are zero, so that one hash has
    exactly one spelling.
    """
    if not (_URLSAFE_HASH if urlsafe else _STANDARD_HASH).fullmatch(s):
        return False
    try:
        raw = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(s + "=")
    except (binascii.Error, ValueError):  # pragma: no cover - the regex guards this
        return False
    encoded = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw)
    return len(raw) == 32 and encoded.decode("ascii").rstrip("=") == s


def _is_domain_form(s: str, sigil: str) -> bool:
    """``sigil opaque_id ":" server_name`` with a non-empty opaque part."""
    try:
        opaque, _domain = _split_sigilled(s, sigil, "identifier")
    except InvalidIdentifier:
        return False
    return bool(opaque) and _is_historical_localpart(opaque)


def is_valid_room_id(s: str, room_version: RoomVersion | None = None) -> bool:
    """Room ID grammar (appendices, "Room IDs").

    Room versions 1-11: ``!opaque_id:server_name``.  Room version 12: ``!`` + the
    URL-safe unpadded base64 reference hash of the create event (43 characters, no
    server name).  With ``room_version=None`` either form is accepted.
    """
    if not isinstance(s, str) or not s.startswith("!"):
        return False
    if len(s.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_BYTES:
        return False
    hash_form = _is_sha256_base64(s[1:], urlsafe=True)
    if room_version is None:
        return hash_form or _is_domain_form(s, "!")
    if room_version.room_id_is_create_event_hash:
        return hash_form
    return _is_domain_form(s, "!")


def is_valid_event_id(s: str, room_version: RoomVersion | None = None) -> bool:
    """Event ID grammar (appendices, "Event IDs"; rooms/fragments/*-event-ids.md).

    Room versions 1-2: ``$opaque_id:server_name``; v3: ``$`` + 43 characters of standard
    unpadded base64; v4+: ``$`` + 43 characters of URL-safe unpadded base64.  With
    ``room_version=None`` any of the three forms is accepted.
    """
    if not isinstance(s, str) or not s.startswith("$"):
        return False
    if len(s.encode("utf-8", "surrogatepass")) > MAX_IDENTIFIER_BYTES:
        return False
    body = s[1:]
    fmt = room_version.event_id_format if room_version is not None else None
    if fmt is EventIdFormat.V1:
        return _is_domain_form(s, "$")
    if fmt is EventIdFormat.V3:
        return _is_sha256_base64(body, urlsafe=False)
    if fmt is EventIdFormat.V4:
        return _is_sha256_base64(body, urlsafe=True)
    return (
        _is_sha256_base64(body, urlsafe=True)
        or _is_sha256_base64(body, urlsafe=False)
        or _is_domain_form(s, "$")
    )


# -- non-sigilled grammars -------------------------------------------------------

_NAMESPACED = re.compile(r"[a-z][a-z0-9._-]{0,254}")
_OPAQUE = re.compile(r"[0-9A-Za-z._~-]{1,255}")


def is_valid_namespaced_identifier(s: str) -> bool:
    """Common Namespaced Identifier Grammar: 1-255 of ``[a-z0-9._-]``, starting ``[a-z]``."""
    return isinstance(s, str) and bool(_NAMESPACED.fullmatch(s))


def is_valid_opaque_identifier(s: str) -> bool:
    """Opaque Identifier Grammar: 1-255 of ``[0-9A-Za-z._~-]`` (RFC 3986 unreserved)."""
    return isinstance(s, str) and bool(_OPAQUE.fullmatch(s))
