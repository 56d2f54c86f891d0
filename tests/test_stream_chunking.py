"""Stream decoding does not depend on where the network cuts the bytes (property tests).

Every recorded stream under `tests/fixtures/` and every kind of stream the fake upstream
sends is cut at random offsets (Hypothesis draws the list of cut points) and fed piece by
piece to `SSEDecoder` and to the provider's `StreamParser`. The events, the model, the usage
and the relayed bytes (joined) must equal those of the stream fed whole. OpenAI chat and
completions streams that carry a usage chunk are also run with `strip_usage_chunk`, where the
parser rewrites what it relays.

`test_sse.py` and `test_providers.py` already cut each fixture at every single offset; this
adds many cuts at once, which is what a slow network does.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from majordomo.providers import get_provider
from majordomo.records import Usage
from majordomo.sse import SSEDecoder, SSEEvent
from tests.fakeupstream import answer

pytestmark = pytest.mark.fast

FIXTURES = Path(__file__).parent / "fixtures"
# A usage object (not `null`) in any provider's dialect.
USAGE_OBJECT = re.compile(rb'"usage(?:Metadata)?":\s*\{')

# Deterministic (no random seed, no example database on disk) so CI sees the same cases.
PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
CLAUDE = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hi"}],
}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
WITH_USAGE = {"stream": True, "stream_options": {"include_usage": True}}


def fake_stream(path: str, payload: dict[str, Any], query: str = "") -> bytes:
    """The whole body the fake upstream streams for this request (3 content chunks)."""
    reply = answer(
        "POST", path, json.dumps(payload).encode(), query=query, headers=[("x-fake-chunks", "3")]
    )
    assert reply.status == 200
    assert reply.chunks is not None
    return b"".join(reply.chunks)


# The recorded SSE and JSON-array streams. Bedrock's binary event streams and the translated
# anthropic_openai streams have their own split-everywhere tests (test_bedrock_wire.py,
# test_anthropic_openai.py).
STREAM_FIXTURES = [
    path
    for path in sorted(FIXTURES.glob("*/*stream*"))
    if path.parent.name in ("openai", "anthropic", "gemini", "azure")
]
# (id, provider, stream bytes, strip_usage_chunk values to try)
STREAMS: list[tuple[str, str, bytes, tuple[bool, ...]]] = [
    *(
        (f"fixture:{path.relative_to(FIXTURES)}", path.parent.name, path.read_bytes(), strips)
        for path in STREAM_FIXTURES
        for strips in [
            (False, True)
            if path.name in {"chat_stream_usage.sse", "completions_stream_usage.sse"}
            else (False,)
        ]
    ),
    (
        "fake:chat",
        "openai",
        fake_stream("/v1/chat/completions", {**CHAT, "stream": True}),
        (False,),
    ),
    (
        "fake:chat+usage",
        "openai",
        fake_stream("/v1/chat/completions", {**CHAT, **WITH_USAGE}),
        (False, True),
    ),
    (
        "fake:completions+usage",
        "openai",
        fake_stream(
            "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Hi", **WITH_USAGE}
        ),
        (False, True),
    ),
    (
        "fake:responses",
        "openai",
        fake_stream("/v1/responses", {"model": "gpt-5-mini", "input": "Hi", "stream": True}),
        (False,),
    ),
    (
        "fake:messages",
        "anthropic",
        fake_stream("/v1/messages", {**CLAUDE, "stream": True}),
        (False,),
    ),
    (
        "fake:messages+thinking",
        "anthropic",
        fake_stream(
            "/v1/messages",
            {**CLAUDE, "stream": True, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        ),
        (False,),
    ),
    (
        "fake:gemini-sse",
        "gemini",
        fake_stream("/v1beta/models/gemini-2.5-flash:streamGenerateContent", GEMINI, "alt=sse"),
        (False,),
    ),
    (
        "fake:gemini-json",
        "gemini",
        fake_stream("/v1/models/gemini-2.5-flash:streamGenerateContent", GEMINI),
        (False,),
    ),
]

PARSER_CASES = [
    pytest.param(provider, data, strip, id=f"{name}{'-strip' if strip else ''}")
    for name, provider, data, strips in STREAMS
    for strip in strips
]
# Gemini without `alt=sse` streams a JSON array, not SSE.
SSE_CASES = [
    pytest.param(data, id=name)
    for name, _, data, _ in STREAMS
    if not data.lstrip().startswith(b"[")
]


def test_every_streaming_fixture_is_covered() -> None:
    names = {name for name, *_ in STREAMS if name.startswith("fixture:")}
    assert len(names) == len(STREAM_FIXTURES) >= 8
    assert len(SSE_CASES) == len(STREAMS) - 2  # the two Gemini JSON arrays


@st.composite
def cut(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut at a drawn list of offsets (duplicates give empty pieces, which is fine)."""
    points = sorted(draw(st.lists(st.integers(0, len(data)), max_size=40)))
    bounds = [0, *points, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def decode(pieces: list[bytes]) -> tuple[list[SSEEvent], int | None]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.close(), decoder.retry


def parse(
    provider: str, pieces: list[bytes], strip: bool
) -> tuple[bytes, str | None, Usage | None]:
    parser = get_provider(provider).StreamParser(strip_usage_chunk=strip)
    relayed = [parser.feed(piece) for piece in pieces]
    relayed.append(parser.close())
    return b"".join(relayed), parser.model, parser.usage


@pytest.mark.parametrize("data", SSE_CASES)
@PROPERTY
@given(st.data())
def test_sse_decoder_ignores_where_the_stream_is_cut(data: bytes, draws: st.DataObject) -> None:
    whole = decode([data])
    assert whole[0], "a stream with no events proves nothing"
    assert decode(draws.draw(cut(data))) == whole


@pytest.mark.parametrize(("provider", "data", "strip"), PARSER_CASES)
@PROPERTY
@given(st.data())
def test_stream_parser_ignores_where_the_stream_is_cut(
    provider: str, data: bytes, strip: bool, draws: st.DataObject
) -> None:
    whole = parse(provider, [data], strip)
    assert whole[1] is not None  # every stream names its model
    assert parse(provider, draws.draw(cut(data)), strip) == whole


@pytest.mark.parametrize(("provider", "data", "strip"), PARSER_CASES)
def test_unsplit_runs_find_the_usage_there_is(provider: str, data: bytes, strip: bool) -> None:
    # Sanity for the properties above: the reference run is not vacuous.
    relayed, _, usage = parse(provider, [data], strip)
    assert (usage is not None) == (USAGE_OBJECT.search(data) is not None)
    if strip:
        assert len(relayed) < len(data)
        assert b'"usage":null' not in relayed
    else:
        assert relayed == data
