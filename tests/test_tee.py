"""The tee alone: every answer replayed through it cut at every byte gives the same bytes to
the client and the same result, compressed or not, stream or not, 2xx or error."""

from __future__ import annotations

import gzip
import zlib

import pytest

from majordomo.providers import get_provider
from majordomo.proxy.tee import Tee, TeeResult
from majordomo.records import Usage
from tests.test_providers import (
    CHAT_MODEL,
    CHAT_USAGE,
    fixture,
    splits,
)

pytestmark = pytest.mark.fast

MAX_EVENT = 16 * 1024 * 1024


def tee(
    provider: str = "openai",
    path: str = "/v1/chat/completions",
    *,
    status: int = 200,
    stream: bool = False,
    strip: bool = False,
    encoding: str = "identity",
    max_event_size: int = MAX_EVENT,
    max_decompressed_size: int = 64 * 1024 * 1024,
    capture_limit: int | None = None,
) -> Tee:
    return Tee(
        get_provider(provider),
        path,
        status=status,
        stream=stream,
        strip_usage_chunk=strip,
        content_encoding=encoding,
        max_event_size=max_event_size,
        max_decompressed_size=max_decompressed_size,
        capture_limit=capture_limit,
    )


def replay(make: dict[str, object], chunks: tuple[bytes, ...]) -> tuple[bytes, TeeResult]:
    t = tee(**make)  # type: ignore[arg-type]
    relayed = b"".join(t.feed(chunk) for chunk in chunks)
    result = t.close()
    return relayed + result.tail, result


CASES: list[tuple[str, dict[str, object], bytes]] = [
    ("stream", {"stream": True}, fixture("openai/chat_stream_usage.sse")),
    ("stream-strip", {"stream": True, "strip": True}, fixture("openai/chat_stream_usage.sse")),
    (
        "stream-gzip",
        {"stream": True, "strip": True, "encoding": "gzip"},
        gzip.compress(fixture("openai/chat_stream_usage.sse")),
    ),
    ("body", {}, fixture("openai/chat.json")),
    ("body-deflate", {"encoding": "deflate"}, zlib.compress(fixture("openai/chat.json"))),
    ("error", {"status": 429}, b'{"error": {"message": "slow down", "type": "rate_limit"}}'),
    (
        "anthropic-stream-captured",
        {"provider": "anthropic", "path": "/v1/messages", "stream": True, "capture_limit": 300},
        fixture("anthropic/message_stream.sse"),
    ),
]


@pytest.mark.parametrize(("make", "answer"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_byte_split_gives_the_same_relay_and_result(
    make: dict[str, object], answer: bytes
) -> None:
    whole = replay(make, (answer,))
    for chunks in splits(answer):
        assert replay(make, chunks) == whole, [len(c) for c in chunks]


def test_a_stream_is_relayed_raw_and_read() -> None:
    answer = fixture("openai/chat_stream_usage.sse")
    relayed, result = replay({"stream": True}, (answer,))
    assert relayed == answer
    assert (result.model, result.usage, result.usage_error) == (CHAT_MODEL, CHAT_USAGE, None)
    assert result.streamed


def test_the_usage_chunk_the_gateway_asked_for_is_held_back() -> None:
    answer = fixture("openai/chat_stream_usage.sse")
    relayed, result = replay({"stream": True, "strip": True}, (answer,))
    assert relayed == fixture("openai/chat_stream.sse")
    assert result.usage == CHAT_USAGE


def test_a_compressed_stream_is_relayed_untouched_and_still_read() -> None:
    answer = gzip.compress(fixture("openai/chat_stream_usage.sse"))
    relayed, result = replay({"stream": True, "strip": True, "encoding": "gzip"}, (answer,))
    assert relayed == answer  # cannot be edited on the fly: the usage chunk stays
    assert result.usage == CHAT_USAGE
    assert result.tail == b""


def test_an_error_body_gives_its_message_and_no_usage() -> None:
    _, result = replay({"status": 429}, (b'{"error": {"message": "slow down"}}',))
    assert (result.error_message, result.usage, result.usage_error) == ("slow down", None, None)


def test_a_body_over_the_bound_says_why_usage_is_missing() -> None:
    body = fixture("openai/chat.json")
    _, result = replay({"max_event_size": 100}, (body[:60], body[60:]))
    assert result.usage is None
    assert result.usage_error is not None
    assert "providers.max_event_size" in result.usage_error


def test_a_body_that_does_not_decode_is_an_event_not_a_silent_miss() -> None:
    _, result = replay({"encoding": "gzip"}, (b"\x1f\x8b\x08\x00not gzip at all",))
    assert result.usage is None
    assert result.usage_error is not None
    assert "does not decode" in result.usage_error


def test_a_gzip_bomb_stops_at_the_decompressed_bound() -> None:
    bomb = gzip.compress(b"{" + b" " * 5_000_000 + b"}")
    t = tee(encoding="gzip", max_decompressed_size=1_000_000, capture_limit=1_000_000)
    assert t.feed(bomb) == bomb
    result = t.close()
    assert result.usage_error is not None
    assert "max_decompressed_size" in result.usage_error
    assert len(result.captured) <= 1_000_000


def test_the_capture_is_bounded_and_says_it_was_cut() -> None:
    body = fixture("openai/chat.json")
    _, whole = replay({"capture_limit": len(body)}, (body,))
    _, cut = replay({"capture_limit": 10}, (body,))
    assert (whole.captured, whole.captured_all) == (body, True)
    assert (cut.captured, cut.captured_all) == (body[:10], False)
    assert cut.usage == whole.usage != Usage()


def test_close_twice_gives_the_same_result() -> None:
    t = tee(stream=True, strip=True)
    t.feed(fixture("openai/chat_stream_usage.sse"))
    assert t.close() is t.close()
