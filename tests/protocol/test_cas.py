"""CAS ticket validation answers and the mapping of outside user names to localparts."""

from __future__ import annotations

import pytest

from pocketserver.protocol.cas import (
    MAX_RESPONSE_BYTES,
    CasAnswer,
    CasResponseError,
    has_required_attributes,
    localpart_from_external_name,
    parse_service_response,
)
from pocketserver.protocol.identifiers import is_valid_localpart

NS = "xmlns:cas='http://www.yale.edu/tp/cas'"

ANSWERS = [
    (
        f"<cas:serviceResponse {NS}><cas:authenticationSuccess><cas:user>jo</cas:user>"
        "</cas:authenticationSuccess></cas:serviceResponse>",
        CasAnswer("jo", {}),
    ),
    (
        f"<cas:serviceResponse {NS}>\n  <cas:authenticationSuccess>\n    <cas:user> jo </cas:user>\n"
        "    <cas:attributes><cas:group>a</cas:group><cas:group>b</cas:group>"
        "<cas:mail>jo@x</cas:mail></cas:attributes>\n  </cas:authenticationSuccess>\n"
        "</cas:serviceResponse>",
        CasAnswer("jo", {"group": ["a", "b"], "mail": ["jo@x"]}),
    ),
    (  # no namespace prefix (a default namespace) reads the same
        "<serviceResponse xmlns='http://www.yale.edu/tp/cas'><authenticationSuccess><user>jo</user>"
        "</authenticationSuccess></serviceResponse>",
        CasAnswer("jo", {}),
    ),
    (
        f"<cas:serviceResponse {NS}><cas:authenticationFailure code='INVALID_TICKET'>no"
        "</cas:authenticationFailure></cas:serviceResponse>",
        CasAnswer(None, {}, "INVALID_TICKET"),
    ),
]


@pytest.mark.parametrize(("xml", "expected"), ANSWERS)
def test_answers(xml: str, expected: CasAnswer) -> None:
    assert parse_service_response(xml.encode()) == expected


REFUSED = [
    b"",
    b"not xml",
    b"<html><body>CAS is down</body></html>",
    f"<cas:serviceResponse {NS}></cas:serviceResponse>".encode(),
    f"<cas:serviceResponse {NS}><cas:authenticationSuccess></cas:authenticationSuccess></cas:serviceResponse>".encode(),
    # Entities are never defined, let alone expanded (billion laughs, external files).
    b'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>',
    b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    b'<!DOCTYPE x SYSTEM "http://127.0.0.1/evil.dtd"><x/>',
    b"<a>" * 40 + b"</a>" * 40,
    b"<x>" + b"a" * MAX_RESPONSE_BYTES + b"</x>",
]


@pytest.mark.parametrize("body", REFUSED)
def test_what_is_refused(body: bytes) -> None:
    with pytest.raises(CasResponseError):
        parse_service_response(body)


@pytest.mark.parametrize(
    ("name", "localpart"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("cas_user!", "cas_user=21"),
        ("jo smith", "jo=20smith"),
        ("a=b", "a=3db"),
        ("_hidden", "=5fhidden"),
        ("zoë", "zo=c3=ab"),
        ("ÉMILE", "=c3=89mile"),  # only ASCII letters are lower-cased
        ("d.o-t/s+", "d.o-t/s+"),
    ],
)
def test_localparts(name: str, localpart: str) -> None:
    assert localpart_from_external_name(name) == localpart
    assert is_valid_localpart(localpart)


def test_required_attributes() -> None:
    attrs = {"dept": ["staff", "it"], "mail": ["x@y"]}
    assert has_required_attributes(attrs, {})
    assert has_required_attributes(attrs, {"dept": "it", "mail": ""})
    assert not has_required_attributes(attrs, {"dept": "sales"})
    assert not has_required_attributes(attrs, {"phone": ""})
