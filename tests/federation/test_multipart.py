"""The multipart/mixed media answers: what we write reads back whole, however the
bytes are cut on the way; malformed answers are refused, never mis-read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pocketserver.federation.multipart import (
    MultipartError,
    MultipartReader,
    boundary_of,
    content_disposition,
    filename_from_disposition,
    media_parts,
)


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _written(boundary: str, ctype: str, disposition: str, body: bytes) -> bytes:
    return b"".join([p async for p in media_parts(boundary, ctype, disposition, _one(body))])


async def _read(answer: bytes, boundary: str, size: int) -> tuple[dict[str, str], bytes, bytes]:
    reader = MultipartReader(_pieces(answer, size), boundary)
    headers = await reader.open()
    body = b"".join([p async for p in reader.content()])
    return headers, reader.metadata, body


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 65536])
async def test_a_written_answer_reads_back_whatever_the_piece_size(size: int) -> None:
    boundary = "b0undary"
    # Bytes that look like the start of the delimiter inside the body (the whole
    # delimiter cannot occur: that is why boundaries are random).
    body = b"\r\n--b0undar\r\n-\n--b0undary\r\r\n--b0undarY" * 3 + bytes(range(256))
    answer = await _written(boundary, "application/pdf", 'attachment; filename="a.pdf"', body)
    headers, metadata, got = await _read(answer, boundary, size)
    assert got == body
    assert metadata == b"{}"
    assert headers == {"content-type": "application/pdf", "content-disposition": 'attachment; filename="a.pdf"'}


async def test_an_empty_body_and_a_preamble_and_epilogue() -> None:
    answer = (
        b"preamble\r\n--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\n"
        b"Content-Type: text/plain\r\n\r\n\r\n--B--\r\nepilogue"
    )
    headers, metadata, body = await _read(answer, "B", 5)
    assert (headers, metadata, body) == ({"content-type": "text/plain"}, b"{}", b"")


async def test_a_location_part_is_read_as_headers() -> None:
    answer = (
        b"--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\n"
        b"Location: https://cdn.example/x\r\n\r\n\r\n--B--\r\n"
    )
    headers, _, _ = await _read(answer, "B", 10)
    assert headers == {"location": "https://cdn.example/x"}


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B\r\n\r\ny\r\n--B--\r\n",  # first part not JSON
        b"--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B--\r\n",  # one part only
        b"--B\r\nContent-Type: application/json\r\n\r\n{}",  # ends early
        b"--B\r\nno colon here\r\n\r\n{}\r\n--B\r\n\r\nx\r\n--B--\r\n",
        b"x" * 100_000,  # no delimiter at all
    ],
)
async def test_malformed_answers_are_refused(answer: bytes) -> None:
    reader = MultipartReader(_pieces(answer, 4096), "B")
    with pytest.raises(MultipartError):
        await reader.open()
        async for _ in reader.content():
            pass


async def test_a_body_that_never_ends_is_refused() -> None:
    answer = b"--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\n\r\n" + b"x" * 1000
    reader = MultipartReader(_pieces(answer, 100), "B")
    await reader.open()
    with pytest.raises(MultipartError):
        async for _ in reader.content():
            pass


def test_boundaries_and_file_names() -> None:
    assert boundary_of("multipart/mixed; boundary=abc") == "abc"
    assert boundary_of('Multipart/Mixed; charset=x; boundary="a b"') == "a b"
    assert boundary_of("multipart/form-data; boundary=abc") is None
    assert boundary_of("multipart/mixed") is None
    assert boundary_of(None) is None
    assert filename_from_disposition('attachment; filename="a \\"b\\".txt"') == 'a "b".txt'
    assert filename_from_disposition("inline; filename=plain.txt") == "plain.txt"
    assert filename_from_disposition("inline; filename=\"x\"; filename*=utf-8''%C3%BC.txt") == "ü.txt"
    assert filename_from_disposition("inline; filename*=bogus''%C3") is None
    assert filename_from_disposition("inline") is None
    for name in ("plain.txt", "ü space.txt", 'q"uote'):
        assert filename_from_disposition(content_disposition("inline", name)) == name
