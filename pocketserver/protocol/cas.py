"""CAS ticket validation answers and user names from other systems (pure: no I/O).

A CAS server answers ``/proxyValidate`` (CAS protocol 2.0/3.0, "serviceValidate")
with XML::

    <cas:serviceResponse xmlns:cas="http://www.yale.edu/tp/cas">
      <cas:authenticationSuccess>
        <cas:user>jo.smith</cas:user>
        <cas:attributes><cas:department>staff</cas:department></cas:attributes>
      </cas:authenticationSuccess>
    </cas:serviceResponse>

or ``<cas:authenticationFailure code="INVALID_TICKET">...``. :func:`parse_service_response`
reads that with expat directly and refuses any document type declaration, so no entity
(internal or external) is ever defined or expanded, and refuses documents over a size
and depth limit. Elements are matched by local name (the ``cas`` namespace or none).

:func:`localpart_from_external_name` maps a user name of the CAS server to a Matrix
localpart (appendices "Mapping from other character sets", case-insensitive variant as
Synapse does it, so accounts map alike when a server moves from Synapse).
"""

from __future__ import annotations

import re
import xml.parsers.expat
from dataclasses import dataclass, field

MAX_RESPONSE_BYTES = 64 * 1024
MAX_DEPTH = 16
CAS_NS = "http://www.yale.edu/tp/cas"


class CasResponseError(ValueError):
    """The answer is not a CAS service response we can read."""


@dataclass(frozen=True, slots=True)
class CasAnswer:
    """A ticket validation's outcome: ``user`` on success, else ``failure`` (the code)."""

    user: str | None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    failure: str | None = None


@dataclass(slots=True)
class _Node:
    name: str
    attrs: dict[str, str]
    children: list[_Node] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def content(self) -> str:
        return "".join(self.text).strip()


def _local(name: str) -> str:
    # expat with namespace_separator=" " names elements "uri local".
    return name.rsplit(" ", 1)[-1]


def _parse_tree(body: bytes) -> _Node:
    if len(body) > MAX_RESPONSE_BYTES:
        raise CasResponseError(f"the answer is over {MAX_RESPONSE_BYTES} bytes")
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Node] = []
    root: list[_Node] = []

    def refuse(*_args: object) -> None:
        raise CasResponseError("document type declarations are not accepted")

    def start(name: str, attrs: dict[str, str]) -> None:
        if len(stack) >= MAX_DEPTH:
            raise CasResponseError("the answer is nested too deeply")
        node = _Node(name, dict(attrs))
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)

    def end(_name: str) -> None:
        stack.pop()

    def text(data: str) -> None:
        if stack:
            stack[-1].text.append(data)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    try:
        parser.Parse(body, True)
    except xml.parsers.expat.ExpatError as e:
        raise CasResponseError(f"not well-formed XML: {e}") from None
    if not root:
        raise CasResponseError("empty document")
    return root[0]


def parse_service_response(body: bytes) -> CasAnswer:
    """Read a ``/proxyValidate`` (or ``/serviceValidate``) answer.

    :raises CasResponseError: the body is not a readable CAS service response.
    """
    root = _parse_tree(body)
    if _local(root.name) != "serviceResponse":
        raise CasResponseError("not a CAS serviceResponse")
    for child in root.children:
        kind = _local(child.name)
        if kind == "authenticationFailure":
            code = child.attrs.get("code", "") or "UNKNOWN"
            return CasAnswer(None, failure=code)
        if kind == "authenticationSuccess":
            user: str | None = None
            attributes: dict[str, list[str]] = {}
            for part in child.children:
                if _local(part.name) == "user":
                    user = part.content()
                elif _local(part.name) == "attributes":
                    for attr in part.children:
                        attributes.setdefault(_local(attr.name), []).append(attr.content())
            if not user:
                raise CasResponseError("authenticationSuccess without a user")
            return CasAnswer(user, attributes)
    raise CasResponseError("neither authenticationSuccess nor authenticationFailure")


def has_required_attributes(attributes: dict[str, list[str]], required: dict[str, str]) -> bool:
    """Every required attribute is present, with the required value where one is given."""
    for name, value in required.items():
        values = attributes.get(name)
        if values is None or (value and value not in values):
            return False
    return True


_ALLOWED = re.compile(rb"[^a-z0-9._\-/+]")


def localpart_from_external_name(name: str) -> str:
    """A Matrix localpart for ``name``: ASCII letters lower-cased, every byte outside the localpart
    grammar written as ``=xx`` (its UTF-8 bytes in hex; ``=`` itself too), and a
    leading ``_`` (reserved for application services by convention) as ``=5f``."""
    raw = name.encode("utf-8").lower()  # ASCII letters only, as bytes.lower() does
    escaped = _ALLOWED.sub(lambda m: b"=%02x" % m.group()[0], raw)
    if escaped.startswith(b"_"):
        escaped = b"=5f" + escaped[1:]
    return escaped.decode("ascii")
