"""Event JSON is zstd-compressed in storage; readers on several threads decode at once."""

from __future__ import annotations

import threading
from pathlib import Path

from pocketserver.storage.events import decode_pdu, encode_pdu


def test_concurrent_decoding_on_reader_threads_never_corrupts() -> None:
    pdus = [
        {"type": "m.room.message", "content": {"body": f"message {i} " + "lorem ipsum " * 40}, "depth": i}
        for i in range(20)
    ]
    blobs = [encode_pdu(p) for p in pdus]
    assert all(b[:4] == b"\x28\xb5\x2f\xfd" for b in blobs)  # compressed, so the codec runs
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(300):
                for pdu, blob in zip(pdus, blobs, strict=True):
                    assert decode_pdu(blob) == pdu
                    assert decode_pdu(encode_pdu(pdu)) == pdu
        except BaseException as e:  # reported to the test thread below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]


def test_small_events_stay_plain_json() -> None:
    blob = encode_pdu({"type": "m.room.message", "content": {"body": "hi"}})
    assert blob.startswith(b"{")
    assert decode_pdu(blob)["content"] == {"body": "hi"}


def test_events_json_reads_beyond_the_fast_parser_decode_as_before() -> None:
    # A lone surrogate escape and an integer past 64 bits (an old room's event from
    # another server) are JSON the fast parser refuses: they still read back.
    blob = b'{"content":{"body":"\\ud800","n":123456789012345678901234567890},"type":"m.room.message"}'
    pdu = decode_pdu(blob)
    assert pdu["content"] == {"body": "\ud800", "n": 123456789012345678901234567890}


def test_a_redaction_is_seen_by_the_next_read_of_a_decoded_event(tmp_path: Path) -> None:
    from pocketserver.protocol.events import Event
    from pocketserver.protocol.room_versions import KNOWN_ROOM_VERSIONS
    from pocketserver.storage import events as ev_store
    from pocketserver.storage.database import open_connection
    from pocketserver.storage.schema import migrate

    conn = open_connection(str(tmp_path / "db.sqlite"))
    migrate(conn)
    ev_store.insert_room(conn, "!r:test", "10", "@a:test", 0)
    pdu = {
        "type": "m.room.message", "sender": "@a:test", "room_id": "!r:test", "depth": 1,
        "origin_server_ts": 1, "prev_events": [], "auth_events": [],
        "content": {"body": "secret " * 50},
    }
    ev = Event.from_pdu(pdu, KNOWN_ROOM_VERSIONS["10"], event_id="$m")
    ev_store.insert_event(conn, ev_store.NewEvent(ev, 1), 0)
    for _ in range(2):  # the second read comes from the decoded events
        rec = ev_store.get_event(conn, "$m")
        assert rec is not None and rec.event.content == pdu["content"]
    redacted = {k: v for k, v in pdu.items() if k != "content"} | {"content": {}}
    assert ev_store.apply_redaction(conn, "$m", "$redaction", redacted)
    rec = ev_store.get_event(conn, "$m")
    assert rec is not None and rec.event.content == {} and rec.redacted_by == "$redaction"
    assert ev_store.event_cache_statistics()["hits"] >= 1
