"""The SSE decoder against the WHATWG event-stream rules, whole and split at every byte."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from majordomo.sse import SSEDecoder, SSEEvent

pytestmark = pytest.mark.fast


def decode(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def splits(stream: bytes) -> Iterator[tuple[bytes, ...]]:
    """The stream whole, cut in two at every offset, and byte by byte."""
    yield (stream,)
    for cut in range(len(stream) + 1):
        yield stream[:cut], stream[cut:]
    yield tuple(stream[i : i + 1] for i in range(len(stream)))


def msg(data: str, event: str = "message", id: str | None = None) -> SSEEvent:
    return SSEEvent(event=event, data=data, id=id)


# (name, stream, events): every stream is also decoded split at every byte.
CASES: list[tuple[str, bytes, list[SSEEvent]]] = [
    ("lf", b"data: a\n\ndata: b\n\n", [msg("a"), msg("b")]),
    ("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [msg("a"), msg("b")]),
    ("cr", b"data: a\r\rdata: b\r\r", [msg("a"), msg("b")]),
    ("mixed endings", b"data: a\r\n\ndata: b\n\r\ndata: c\r\r\n", [msg("a"), msg("b"), msg("c")]),
    ("multi-line data", b"data: one\ndata: two\ndata:\n\n", [msg("one\ntwo\n")]),
    ("empty data dispatches", b"data\n\ndata:\n\n", [msg(""), msg("")]),
    ("one space stripped", b"data:  two spaces\ndata:none\n\n", [msg(" two spaces\nnone")]),
    ("colon in value", b'data: {"a": "b:c"}\n\n', [msg('{"a": "b:c"}')]),
    ("comments ignored", b": keep-alive\n:\ndata: x\n: between\n\n", [msg("x")]),
    ("comment-only block", b": ping\n\n", []),
    ("event type", b"event: ping\ndata: {}\n\ndata: next\n\n", [msg("{}", "ping"), msg("next")]),
    ("event without data", b"event: lonely\n\ndata: x\n\n", [msg("x")]),
    (
        "id persists",
        b"id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n",
        [msg("a", id="7"), msg("b", id="7"), msg("c", id="")],
    ),
    (
        "id with NUL ignored",
        b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
        [msg("a", id="1"), msg("b", id="1")],
    ),
    ("unknown field ignored", b"foo: bar\nDATA: no\ndata: yes\n\n", [msg("yes")]),
    ("field without colon", b"event\ndata\n\n", [msg("")]),
    ("bom stripped", b"\xef\xbb\xbfdata: a\n\n", [msg("a")]),
    ("utf-8", "data: Lumière — 東京 🚀\n\n".encode(), [msg("Lumière — 東京 🚀")]),
    ("invalid utf-8 replaced", b"data: a\xffb\n\n", [msg("a\ufffdb")]),
    ("trailing event flushed", b"data: a\n\ndata: b", [msg("a"), msg("b")]),
    ("trailing event with newline", b"data: a\ndata: b\n", [msg("a\nb")]),
    ("blank lines only", b"\n\r\n\r\n\n", []),
]


@pytest.mark.parametrize(("stream", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decodes_whole_and_split_at_every_byte(stream: bytes, expected: list[SSEEvent]) -> None:
    for chunks in splits(stream):
        assert decode(*chunks) == expected, chunks


def test_cr_at_end_of_chunk_then_lf_is_one_terminator() -> None:
    # Were the LF read as a second line ending, "a" would be dispatched early and "b" would
    # become its own event.
    assert decode(b"data: a\r", b"\ndata: b\r\n\r\n") == [msg("a\nb")]
    assert decode(b"data: a\r", b"\n", b"\r", b"\n") == [msg("a")]


def test_cr_then_empty_chunk_keeps_waiting_for_lf() -> None:
    assert decode(b"data: a\r", b"", b"\ndata: b\n\n") == [msg("a\nb")]


def test_multibyte_character_split_across_chunks() -> None:
    stream = "data: é🚀\n\n".encode()
    for cut in range(7, 13):  # every cut inside the two characters
        assert decode(stream[:cut], stream[cut:]) == [msg("é🚀")]


def test_events_come_out_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\n") == [msg("a")]
    assert decoder.feed(b"data: b\n\ndata: c") == [msg("b")]
    assert decoder.close() == [msg("c")]
    assert decoder.close() == []


def test_retry_field() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"retry: 1500\n\n")
    assert decoder.retry == 1500
    decoder.feed(b"retry: 1.5\nretry: soon\n\n")
    assert decoder.retry == 1500  # non-digits are ignored


def test_long_line_in_many_chunks() -> None:
    payload = b"x" * 100_000
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for start in range(0, len(payload), 1000):
        events += decoder.feed(
            payload[start : start + 1000] if start else b"data: " + payload[:1000]
        )
    events += decoder.feed(b"\n\n")
    assert events == [msg("x" * 100_000)]


def test_event_defaults() -> None:
    event = SSEEvent(data="x")
    assert (event.event, event.data, event.id) == ("message", "x", None)
