"""Event JSON is zstd-compressed in storage; readers on several threads decode at once."""

from __future__ import annotations

import threading

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
