"""The identity service's pure rules (shared/spec/content/identity-service-api.md).

- Lookups ("Association lookup", "Algorithms"): ``sha256`` hashes
  ``"<address> <medium> <pepper>"`` and encodes it URL-safe unpadded base64; ``none``
  sends ``"<address> <medium>"`` as it is.
- Email addresses: the checks a validation session or an invitation makes of an address,
  and the form it is kept in (the appendix's "3PID Types": the domain is lower-cased, the
  local part is kept as given).
- What the service signs: an association (``/3pid/bind``:
  ``address, medium, mxid, not_before, not_after, ts``) and an invitation's ``signed``
  object (``/3pid/onbind`` and ``/sign-ed25519``: ``mxid, sender, token``).
- The display name of an invitation: the address with most of it hidden ("b...@e...").
- Tokens, session IDs and client secrets: ``[0-9a-zA-Z.=_-]``, 1 to 255 characters.

No I/O, no clock, no randomness: the service hands in times and random values.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from unpaddedbase64 import encode_base64

#: The lookup algorithms this service answers (``/hash_details``).
ALGORITHMS = ("sha256", "none")

_OPAQUE = re.compile(r"[0-9A-Za-z.=_\-]{1,255}")
# A practical address check: one @, a local part without spaces or controls, and a
# domain of dot-separated labels (or an IP literal in brackets).
_LOCAL = re.compile(r"[^\s@\"(),:;<>\[\\\]\x00-\x1f\x7f]{1,64}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_IDN_LABEL = re.compile(r"[^\s@.\x00-\x1f\x7f]{1,63}")
MAX_ADDRESS = 254


class InvalidAddress(ValueError):
    """Not an email address this service takes."""


def is_opaque_id(value: Any) -> bool:
    """A client secret, session ID or token: ``[0-9a-zA-Z.=_-]``, 1-255 characters."""
    return isinstance(value, str) and _OPAQUE.fullmatch(value) is not None


def normalise_email(address: str) -> str:
    """The address as it is kept and compared: surrounding space removed, the domain
    lower-cased. Raises :class:`InvalidAddress`."""
    address = address.strip()
    if len(address) > MAX_ADDRESS or address.count("@") != 1:
        raise InvalidAddress("an email address has one @")
    local, domain = address.split("@")
    if not _LOCAL.fullmatch(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidAddress("the part before @ is not valid")
    domain = domain.lower()
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(lb) or (_IDN_LABEL.fullmatch(lb) and not lb.isascii())
                                  for lb in labels):
        raise InvalidAddress("the domain is not valid")
    return f"{local}@{domain}"


def lookup_hash(address: str, medium: str, pepper: str) -> str:
    """The ``sha256`` lookup form of a 3PID."""
    digest = hashlib.sha256(f"{address} {medium} {pepper}".encode()).digest()
    return encode_base64(digest, urlsafe=True)


def lookup_plain(address: str, medium: str) -> str:
    """The ``none`` lookup form of a 3PID."""
    return f"{address} {medium}"


def association(medium: str, address: str, mxid: str, ts: int, not_before: int, not_after: int) -> dict[str, Any]:
    """The fields of a bound association, to be signed (v2_associations.yaml)."""
    return {
        "address": address,
        "medium": medium,
        "mxid": mxid,
        "not_before": not_before,
        "not_after": not_after,
        "ts": ts,
    }


def invite_signed(mxid: str, sender: str, token: str) -> dict[str, Any]:
    """The ``signed`` object of an invitation, to be signed (signed_third_party_invite.yaml)."""
    return {"mxid": mxid, "sender": sender, "token": token}


def redacted_display_name(address: str) -> str:
    """An invitation's display name: enough to recognise, not to read, the address
    ("bob.smith@example.org" -> "bob...@exa...")."""
    local, _, domain = address.partition("@")

    def cut(part: str) -> str:
        keep = min(3, max(1, len(part) // 3)) if part else 0
        return part[:keep] + "..."

    return f"{cut(local)}@{cut(domain)}" if domain else cut(local)
