"""The incremental splitter of a big JSON object (a send_join answer): every element and
value comes out whole and decoded however the bytes are cut, strings with quotes,
brackets and escapes do not confuse it, and bad or oversized input is refused."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pocketserver.protocol.json_stream import JsonStreamError, ObjectSplitter, Piece

STREAMED = ("state", "auth_chain")
WANTED = ("event", "origin")


def split(raw: bytes, step: int | None = None, *, max_value: int = 1 << 20) -> tuple[list[Piece], ObjectSplitter]:
    sp = ObjectSplitter(STREAMED, WANTED, max_value=max_value)
    out: list[Piece] = []
    step = step or len(raw) or 1
    for i in range(0, len(raw), step):
        out.extend(sp.feed(raw[i : i + step]))
    sp.close()
    return out, sp


def pdu(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "m.room.member",
        "state_key": f"@u{i}:x",
        "content": {"membership": "join", "displayname": f"u{i}"},
        "prev_events": [["$a", {"sha256": "h"}]],
        "depth": i,
        **extra,
    }


TRICKY = [
    pdu(1, content={"displayname": 'quote " and }, { and ], [ inside'}),
    pdu(2, content={"displayname": "backslash at the end \\"}),
    pdu(3, content={"displayname": "escaped \\\" quote then },{\"x\":1}"}),
    pdu(4, content={"displayname": "unicode é \u2028 \U0001f600 and \\u escapes"}),
    pdu(5, content={"nested": {"a": [{"b": {"c": []}}, {}], "d": "}]"}}),
    pdu(6, content={}),
]


def answer(state: list[Any], auth_chain: list[Any], **extra: Any) -> dict[str, Any]:
    return {"origin": "x", "members_omitted": False, "state": state, "auth_chain": auth_chain,
            "event": pdu(0), "servers_in_room": ["x", "y"], **extra}


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 1000, None])
def test_every_cut_gives_the_same_pieces(step: int | None) -> None:
    doc = answer(TRICKY, TRICKY[::-1])
    raw = orjson.dumps(doc)
    pieces, sp = split(raw, step)
    assert [p.value for p in pieces if p.key == "state"] == TRICKY
    assert [p.value for p in pieces if p.key == "auth_chain"] == TRICKY[::-1]
    assert [p.index for p in pieces if p.key == "state"] == list(range(len(TRICKY)))
    assert [p.value for p in pieces if p.key == "event"] == [pdu(0)]
    assert [p.value for p in pieces if p.key == "origin"] == ["x"]
    # members not asked for are skipped, not handed out
    assert not [p for p in pieces if p.key in ("members_omitted", "servers_in_room")]
    assert sp.arrays_seen == {"state", "auth_chain"}
    for p in pieces:
        assert orjson.loads(raw[p.offset : p.offset + p.size]) == p.value


def test_whitespace_anywhere_and_empty_arrays() -> None:
    raw = b' \n{ "state" :\t[ ] ,\r\n "auth_chain": [ {"a" : "}" } , {"b":[1, 2]}\n] ,"event":{} }\n '
    for step in (1, 5, None):
        pieces, sp = split(raw, step)
        assert [(p.key, p.index, p.value) for p in pieces] == [
            ("auth_chain", 0, {"a": "}"}), ("auth_chain", 1, {"b": [1, 2]}), ("event", None, {}),
        ]
        assert sp.arrays_seen == {"state", "auth_chain"}


def test_a_huge_array_comes_out_element_by_element() -> None:
    n = 100_000
    raw = orjson.dumps(answer([pdu(i) for i in range(n)], []))
    sp = ObjectSplitter(STREAMED, WANTED, max_value=1 << 16)
    count = 0
    for i in range(0, len(raw), 65536):
        got = sp.feed(raw[i : i + 65536])
        for p in got:
            if p.key == "state":
                assert p.value == pdu(count)
                count += 1
        # what the splitter keeps between pieces stays under one value's size
        assert len(sp._buf) <= 1 << 16
    sp.close()
    assert count == n


def test_a_non_array_where_an_array_is_streamed_is_a_whole_value() -> None:
    pieces, sp = split(b'{"state": {"not": "a list"}, "auth_chain": []}')
    assert [(p.key, p.index, p.value) for p in pieces] == [("state", None, {"not": "a list"})]
    assert sp.arrays_seen == {"auth_chain"}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"state": [{"a": 1}',  # ends inside the array
        b'{"state": [{"a": "unterminated}]}',
        b'{"state": [{"a": 1},]}',  # trailing comma
        b'{"state": [{"a": 1} {"b": 2}]}',  # no comma
        b'{"state": [{"a": 1]}]}',  # mismatched brackets
        b'{"state": [{"a": NaN}]}',
        b'{"state": [{"a": tru}]}',
        b'{"event": {"a": 1}, }',
        b'{"event" {"a": 1}}',
        b'{state: []}',
        b'{"state": []} trailing',
        b'{"event": "\xff\xfe"}',  # not UTF-8
        b'{"state": [' + b"[" * 200 + b"]" * 200 + b"]}",  # nested too deeply
    ],
)
def test_malformed_input_is_refused(raw: bytes) -> None:
    for step in (1, 4, None):
        with pytest.raises(JsonStreamError):
            split(raw, step)


def test_values_over_the_cap_are_refused_before_they_are_whole() -> None:
    big = {"content": {"body": "x" * 5000}}
    raw = orjson.dumps(answer([pdu(1), big], []))
    with pytest.raises(JsonStreamError, match="over 4096 bytes"):
        split(raw, 100, max_value=4096)
    # an element never closed is refused once it passes the cap, not at the end
    sp = ObjectSplitter(STREAMED, WANTED, max_value=4096)
    sp.feed(b'{"state": [{"a": "')
    with pytest.raises(JsonStreamError):
        for _ in range(10):
            sp.feed(b"y" * 1000)
    # a skipped member is bounded too
    with pytest.raises(JsonStreamError):
        split(orjson.dumps({"servers_in_room": ["s" * 100] * 100}), 50, max_value=4096)
