"""Provider wire formats against recorded payloads (tests/fixtures/<provider>/).

Every streaming fixture is also fed cut in two at every byte offset and byte by byte: the
usage must not move and the relayed bytes must be exactly what the client is owed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from majordomo.providers import (
    PROVIDER_NAMES,
    ProviderModule,
    RequestInfo,
    detect_provider,
    get_provider,
)
from majordomo.records import Usage

pytestmark = pytest.mark.fast

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def splits(stream: bytes) -> Iterator[tuple[bytes, ...]]:
    """The stream whole, cut in two at every offset, and byte by byte."""
    yield (stream,)
    for cut in range(len(stream) + 1):
        yield stream[:cut], stream[cut:]
    yield tuple(stream[i : i + 1] for i in range(len(stream)))


CHAT_MODEL = "o4-mini-2025-04-16"
CHAT_USAGE = Usage(input_tokens=1342, output_tokens=200, cached_tokens=1152, reasoning_tokens=192)
COMPLETIONS_MODEL = "gpt-3.5-turbo-instruct:20230824-v2"
COMPLETIONS_USAGE = Usage(input_tokens=5, output_tokens=8)
RESPONSES_MODEL = "gpt-5-mini-2025-08-07"
RESPONSES_USAGE = Usage(
    input_tokens=2110, output_tokens=340, cached_tokens=1920, reasoning_tokens=320
)
CLAUDE = "claude-sonnet-4-5-20250929"
# 12 uncached + 4096 cache reads + 2048 cache writes.
MESSAGE_USAGE = Usage(
    input_tokens=6156, output_tokens=95, cached_tokens=4096, cache_creation_tokens=2048
)
THINKING_USAGE = Usage(input_tokens=48, output_tokens=412)
GEMINI = "gemini-2.5-flash"
# 27 candidate tokens + 642 thinking tokens.
GEMINI_USAGE = Usage(input_tokens=4121, output_tokens=669, cached_tokens=4056, reasoning_tokens=642)

AZURE_MODEL = "gpt-4o-mini-2024-07-18"
AZURE_USAGE = Usage(input_tokens=1290, output_tokens=8, cached_tokens=1152)

# (provider, path, fixture, model, usage) for complete JSON responses.
BODY_CASES: list[tuple[str, str, str, str | None, Usage | None]] = [
    ("openai", "/v1/chat/completions", "openai/chat.json", CHAT_MODEL, CHAT_USAGE),
    ("openai", "/v1/completions", "openai/completions.json", COMPLETIONS_MODEL, COMPLETIONS_USAGE),
    (
        "openai",
        "/v1/embeddings",
        "openai/embeddings.json",
        "text-embedding-3-small",
        Usage(input_tokens=9),
    ),
    ("openai", "/v1/responses", "openai/responses.json", RESPONSES_MODEL, RESPONSES_USAGE),
    (  # Azure OpenAI: OpenAI's shape plus content-filter results
        "azure",
        "/openai/deployments/prod-chat/chat/completions",
        "azure/chat.json",
        AZURE_MODEL,
        AZURE_USAGE,
    ),
    ("anthropic", "/v1/messages", "anthropic/message.json", CLAUDE, MESSAGE_USAGE),
    ("anthropic", "/v1/messages", "anthropic/thinking.json", CLAUDE, THINKING_USAGE),
    (
        "anthropic",
        "/v1/messages/count_tokens",
        "anthropic/count_tokens.json",
        None,
        Usage(input_tokens=14),
    ),
    (
        "gemini",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "gemini/generate_content.json",
        GEMINI,
        GEMINI_USAGE,
    ),
    (
        "gemini",
        "/v1beta/models/gemini-2.5-flash:countTokens",
        "gemini/count_tokens.json",
        GEMINI,
        Usage(input_tokens=4121, cached_tokens=4056),
    ),
    (
        "gemini",
        "/v1beta/models/gemini-embedding-001:embedContent",
        "gemini/embed_content.json",
        "gemini-embedding-001",
        None,
    ),
    (  # a whole stream read at once still yields its final usage
        "gemini",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "gemini/stream_generate_content.json",
        GEMINI,
        GEMINI_USAGE,
    ),
]

# (provider, fixture, strip_usage_chunk, model, usage, fixture the client must receive).
STREAM_CASES: list[tuple[str, str, bool, str | None, Usage | None, str]] = [
    (  # Azure's first event names no model and carries only the prompt's filter results
        "azure",
        "azure/chat_stream_usage.sse",
        False,
        AZURE_MODEL,
        AZURE_USAGE,
        "azure/chat_stream_usage.sse",
    ),
    (
        "openai",
        "openai/chat_stream_usage.sse",
        False,
        CHAT_MODEL,
        CHAT_USAGE,
        "openai/chat_stream_usage.sse",
    ),
    (  # usage injected by the gateway: the client sees the stream it asked for
        "openai",
        "openai/chat_stream_usage.sse",
        True,
        CHAT_MODEL,
        CHAT_USAGE,
        "openai/chat_stream.sse",
    ),
    ("openai", "openai/chat_stream.sse", False, CHAT_MODEL, None, "openai/chat_stream.sse"),
    (
        "openai",
        "openai/completions_stream_usage.sse",
        True,
        COMPLETIONS_MODEL,
        COMPLETIONS_USAGE,
        "openai/completions_stream.sse",
    ),
    (
        "openai",
        "openai/completions_stream_usage.sse",
        False,
        COMPLETIONS_MODEL,
        COMPLETIONS_USAGE,
        "openai/completions_stream_usage.sse",
    ),
    (
        "openai",
        "openai/responses_stream.sse",
        False,
        RESPONSES_MODEL,
        RESPONSES_USAGE,
        "openai/responses_stream.sse",
    ),
    (
        "anthropic",
        "anthropic/message_stream.sse",
        False,
        CLAUDE,
        MESSAGE_USAGE,
        "anthropic/message_stream.sse",
    ),
    (
        "anthropic",
        "anthropic/thinking_stream.sse",
        False,
        CLAUDE,
        THINKING_USAGE,
        "anthropic/thinking_stream.sse",
    ),
    (  # overloaded mid-stream: message_start's usage is all there is
        "anthropic",
        "anthropic/message_stream_overloaded.sse",
        False,
        CLAUDE,
        Usage(input_tokens=6156, output_tokens=1, cached_tokens=4096, cache_creation_tokens=2048),
        "anthropic/message_stream_overloaded.sse",
    ),
    (
        "gemini",
        "gemini/stream_generate_content.sse",
        False,
        GEMINI,
        GEMINI_USAGE,
        "gemini/stream_generate_content.sse",
    ),
    (
        "gemini",
        "gemini/stream_generate_content.json",
        False,
        GEMINI,
        GEMINI_USAGE,
        "gemini/stream_generate_content.json",
    ),
]

# (provider, non-stream fixture, path, stream fixture): the same call both ways.
PARITY_CASES = [
    ("openai", "openai/chat.json", "/v1/chat/completions", "openai/chat_stream_usage.sse"),
    ("openai", "openai/completions.json", "/v1/completions", "openai/completions_stream_usage.sse"),
    ("openai", "openai/responses.json", "/v1/responses", "openai/responses_stream.sse"),
    ("anthropic", "anthropic/message.json", "/v1/messages", "anthropic/message_stream.sse"),
    ("anthropic", "anthropic/thinking.json", "/v1/messages", "anthropic/thinking_stream.sse"),
    (
        "gemini",
        "gemini/generate_content.json",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "gemini/stream_generate_content.sse",
    ),
    (
        "gemini",
        "gemini/generate_content.json",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "gemini/stream_generate_content.json",
    ),
]


def run_stream(
    provider: ProviderModule, chunks: tuple[bytes, ...], *, strip: bool = False
) -> tuple[bytes, str | None, Usage | None]:
    parser = provider.StreamParser(strip_usage_chunk=strip)
    relayed = [parser.feed(chunk) for chunk in chunks]
    relayed.append(parser.close())
    return b"".join(relayed), parser.model, parser.usage


# ------------------------------------------------------------------------------ detection


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", "openai"),
        ("/v1/completions", "openai"),
        ("/v1/embeddings", "openai"),
        ("/v1/responses", "openai"),
        ("/v1/responses/resp_123/input_items", "openai"),
        ("/v1/models", "openai"),
        ("/v1/models/ft:gpt-4o-mini-2024-07-18:acme::9aBcDeF", "openai"),
        ("/v1/audio/transcriptions", "openai"),
        ("/v1/messages", "anthropic"),
        ("/v1/messages/", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"),
        ("/v1/messages/batches", "anthropic"),
        ("/v1/messages/batches/msgbatch_01/results", "anthropic"),
        ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini"),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", "gemini"),
        ("/v1beta/models/gemini-2.5-flash:countTokens", "gemini"),
        ("/v1beta/models/gemini-embedding-001:embedContent", "gemini"),
        ("/v1beta/models/gemini-embedding-001:batchEmbedContents", "gemini"),
        ("/v1beta/tunedModels/my-model-7x:generateContent", "gemini"),
        ("/v1/models/gemini-2.5-flash:generateContent", "gemini"),  # google-genai 3.x
        ("/v1/models/gemini-2.5-flash:streamGenerateContent", "gemini"),
        ("/v1/tunedModels/my-model-7x:countTokens", "gemini"),
        # /v1beta and /v1alpha are Gemini's alone: listing models, caches, files, new methods.
        ("/v1beta/models", "gemini"),
        ("/v1beta/cachedContents", "gemini"),
        ("/v1beta/models/x:unknownMethod", "gemini"),
        ("/v1alpha/models/gemini-2.5-flash:generateContent", "gemini"),
        ("/v2/foo", None),
        ("/health", None),
        ("/", None),
        ("", None),
        ("/v1", None),
        ("/v1beta", None),
        ("/v1messages", None),
        ("/api/v1/chat/completions", None),
        ("/generateContent", None),
    ],
)
def test_detect_provider(path: str, expected: str | None) -> None:
    assert detect_provider(path) == expected


def test_get_provider_returns_each_module() -> None:
    for name in PROVIDER_NAMES:
        provider = get_provider(name)
        assert name == provider.NAME
        assert get_provider(name.upper()) is provider


def test_get_provider_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown provider 'mistral'; use one of: openai"):
        get_provider("mistral")


# -------------------------------------------------------------------------- request_info

CHAT_STREAM_BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi \xc3\xa9"}], "stream": true}'


def test_openai_injects_include_usage_keeping_the_rest_byte_identical() -> None:
    info = get_provider("openai").request_info("/v1/chat/completions", "", CHAT_STREAM_BODY)
    assert info == RequestInfo(
        model="gpt-4o-mini",
        stream=True,
        body=b'{"stream_options":{"include_usage":true},' + CHAT_STREAM_BODY[1:],
        strip_usage_chunk=True,
    )
    assert json.loads(info.body) == {
        **json.loads(CHAT_STREAM_BODY),
        "stream_options": {"include_usage": True},
    }


def test_openai_injects_for_legacy_completions_and_after_leading_whitespace() -> None:
    body = b' \n{"model": "gpt-3.5-turbo-instruct", "prompt": "Say", "stream": true}'
    info = get_provider("openai").request_info("/v1/completions", "", body)
    assert info.strip_usage_chunk
    assert info.body == b' \n{"stream_options":{"include_usage":true},' + body[3:]


@pytest.mark.parametrize(
    ("options", "merged"),
    [
        ({"include_obfuscation": False}, {"include_obfuscation": False, "include_usage": True}),
        ({"include_usage": False}, {"include_usage": True}),
        (None, {"include_usage": True}),
    ],
)
def test_openai_merges_into_existing_stream_options(
    options: dict[str, Any] | None, merged: dict[str, Any]
) -> None:
    request = {"model": "gpt-4o", "messages": [], "stream": True, "stream_options": options}
    info = get_provider("openai").request_info(
        "/v1/chat/completions", "", json.dumps(request).encode()
    )
    assert info.strip_usage_chunk
    assert info.stream
    assert json.loads(info.body) == {**request, "stream_options": merged}


@pytest.mark.parametrize(
    ("path", "body", "model", "stream"),
    [
        # The client asked for usage itself: it must see the usage chunk.
        (
            "/v1/chat/completions",
            b'{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}',
            "gpt-4o",
            True,
        ),
        ("/v1/chat/completions", b'{"model":"gpt-4o","stream":false}', "gpt-4o", False),
        ("/v1/chat/completions", b'{"model":"gpt-4o"}', "gpt-4o", False),
        ("/v1/chat/completions", b'{"model":"gpt-4o","stream":"yes"}', "gpt-4o", False),
        # Malformed options: the provider answers 400 itself.
        (
            "/v1/chat/completions",
            b'{"model":"gpt-4o","stream":true,"stream_options":7}',
            "gpt-4o",
            True,
        ),
        # Responses streams always carry usage.
        ("/v1/responses", b'{"model":"gpt-5-mini","stream":true}', "gpt-5-mini", True),
        (
            "/v1/embeddings",
            b'{"model":"text-embedding-3-small","input":"hi"}',
            "text-embedding-3-small",
            False,
        ),
        (
            "/v1/chat/completions",
            b'{"model": 42, "stream": true, "stream_options": {"include_usage": true}}',
            None,
            True,
        ),
        ("/v1/chat/completions", b'{"model": "gpt-4o", "stream": tru', None, False),
        ("/v1/chat/completions", b"", None, False),
        ("/v1/chat/completions", b"[1, 2]", None, False),
        (
            "/v1/audio/transcriptions",
            b'--abc\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--abc--\r\n',
            None,
            False,
        ),
        ("/v1/chat/completions", b"\xff\xfe{", None, False),
    ],
)
def test_openai_request_info_leaves_body_untouched(
    path: str, body: bytes, model: str | None, stream: bool
) -> None:
    info = get_provider("openai").request_info(path, "", body)
    assert (info.model, info.stream, info.strip_usage_chunk) == (model, stream, False)
    assert info.body is body


def test_openai_injection_can_be_turned_off() -> None:
    info = get_provider("openai").request_info(
        "/v1/chat/completions", "", CHAT_STREAM_BODY, inject_stream_usage=False
    )
    assert info == RequestInfo(model="gpt-4o-mini", stream=True, body=CHAT_STREAM_BODY)
    assert info.body is CHAT_STREAM_BODY


@pytest.mark.parametrize(
    ("body", "model", "stream"),
    [
        (
            b'{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[],"stream":true}',
            "claude-sonnet-4-5",
            True,
        ),
        (
            b'{"model":"claude-haiku-4-5","max_tokens":1024,"messages":[]}',
            "claude-haiku-4-5",
            False,
        ),
        (b'{"model":"claude-sonnet-4-5",', None, False),
        (b"not json", None, False),
    ],
)
def test_anthropic_request_info(body: bytes, model: str | None, stream: bool) -> None:
    info = get_provider("anthropic").request_info("/v1/messages", "", body)
    assert (info.model, info.stream, info.strip_usage_chunk) == (model, stream, False)
    assert info.body is body


@pytest.mark.parametrize(
    ("path", "model", "stream"),
    [
        ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", False),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", "gemini-2.5-flash", True),
        ("/v1/models/gemini-2.5-pro:streamGenerateContent", "gemini-2.5-pro", True),
        ("/v1beta/models/gemini-2.5-flash:countTokens", "gemini-2.5-flash", False),
        ("/v1beta/models/gemini-embedding-001:embedContent", "gemini-embedding-001", False),
        ("/v1beta/tunedModels/my-model-7x:generateContent", "tunedModels/my-model-7x", False),
        ("/v1beta/cachedContents", None, False),
    ],
)
def test_gemini_request_info_reads_the_path(path: str, model: str | None, stream: bool) -> None:
    body = b'{"contents": [{"parts": [{"text": "Hi"}]}]}'
    info = get_provider("gemini").request_info(path, "alt=sse", body)
    assert (info.model, info.stream, info.strip_usage_chunk) == (model, stream, False)
    assert info.body is body


# ----------------------------------------------------------------------- usage from body


@pytest.mark.parametrize(
    ("provider", "path", "name", "model", "usage"),
    BODY_CASES,
    ids=[case[2] for case in BODY_CASES],
)
def test_usage_from_body(
    provider: str, path: str, name: str, model: str | None, usage: Usage | None
) -> None:
    assert get_provider(provider).usage_from_body(path, fixture(name)) == (model, usage)


ODD_BODIES = [
    b"",
    b"null",
    b"[]",
    b"[1, {}]",
    b"{",
    b"\xff\xfe\x00",
    b'"usage"',
    b'{"usage": "lots"}',
    b'{"usage": {"prompt_tokens": "12", "input_tokens": null}}',
    b'{"usage": {"input_tokens": -4, "output_tokens": 1.5, "cache_read_input_tokens": true}}',
    b'{"usageMetadata": [], "totalTokens": "x"}',
    b'{"response": {"usage": []}, "model": ["x"]}',
    b"[" * 100_000,
]


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_usage_from_body_never_raises(name: str) -> None:
    provider = get_provider(name)
    for body in ODD_BODIES:
        model, usage = provider.usage_from_body("/v1beta/models/x:generateContent", body)
        assert model is None or isinstance(model, str)
        assert usage is None or isinstance(usage, Usage)
        assert (
            usage is None or min(usage.input_tokens, usage.output_tokens, usage.cached_tokens) >= 0
        )


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize(
    ("provider", "name", "strip", "model", "usage", "relayed"),
    STREAM_CASES,
    ids=[f"{case[1]}{'-strip' if case[2] else ''}" for case in STREAM_CASES],
)
def test_stream_parser_split_at_every_byte(
    provider: str, name: str, strip: bool, model: str | None, usage: Usage | None, relayed: str
) -> None:
    stream, expected = fixture(name), fixture(relayed)
    module = get_provider(provider)
    for chunks in splits(stream):
        assert run_stream(module, chunks, strip=strip) == (expected, model, usage), [
            len(c) for c in chunks
        ]


@pytest.mark.parametrize(
    ("provider", "name"),
    [(case[0], case[1]) for case in STREAM_CASES if not case[2]],
)
def test_stream_parser_relays_the_very_same_chunks(provider: str, name: str) -> None:
    stream = fixture(name)
    parser = get_provider(provider).StreamParser()
    for start in range(0, len(stream), 100):
        chunk = stream[start : start + 100]
        assert parser.feed(chunk) is chunk
    assert parser.close() == b""


@pytest.mark.parametrize(
    ("provider", "body_name", "path", "stream_name"),
    PARITY_CASES,
    ids=[case[3] for case in PARITY_CASES],
)
def test_stream_and_non_stream_give_the_same_usage(
    provider: str, body_name: str, path: str, stream_name: str
) -> None:
    module = get_provider(provider)
    _, model, usage = run_stream(module, (fixture(stream_name),))
    assert module.usage_from_body(path, fixture(body_name)) == (model, usage)
    assert usage is not None


def test_openai_strip_relays_each_event_as_soon_as_it_is_complete() -> None:
    upstream = fixture("openai/chat_stream_usage.sse").split(b"\n\n")[:-1]
    client = fixture("openai/chat_stream.sse").split(b"\n\n")[:-1]
    parser = get_provider("openai").StreamParser(strip_usage_chunk=True)
    relayed = [parser.feed(event + b"\n\n") for event in upstream]
    assert parser.close() == b""
    # Five content chunks, the swallowed usage chunk, then [DONE].
    assert relayed == [event + b"\n\n" for event in client[:5]] + [b"", b"data: [DONE]\n\n"]
    assert parser.usage == CHAT_USAGE


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_openai_strip_relays_each_event_once_its_blank_line_arrives(newline: bytes) -> None:
    # Fed byte by byte, the client must have every complete event, minus the usage one.
    separator = newline * 2
    upstream = fixture("openai/chat_stream_usage.sse").replace(b"\n", newline)
    client = fixture("openai/chat_stream.sse").replace(b"\n", newline).split(separator)
    # Upstream events in order: five content chunks, the usage chunk, [DONE].
    owed = [event + separator for event in client[:5]] + [b"", client[5] + separator]
    ends = [match.end() for match in re.finditer(re.escape(separator), upstream)]
    parser = get_provider("openai").StreamParser(strip_usage_chunk=True)
    relayed = b""
    for position in range(len(upstream)):
        relayed += parser.feed(upstream[position : position + 1])
        complete = sum(1 for end in ends if end <= position + 1)
        assert relayed == b"".join(owed[:complete]), position


def test_openai_strip_holds_back_only_the_incomplete_event() -> None:
    parser = get_provider("openai").StreamParser(strip_usage_chunk=True)
    assert parser.feed(b'data: {"model":"m","choices":[]') == b""
    assert parser.feed(b'}\n\ndata: {"cho') == b'data: {"model":"m","choices":[]}\n\n'
    assert parser.close() == b'data: {"cho'
    assert parser.model == "m"


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_openai_strip_handles_any_line_ending(newline: bytes) -> None:
    upstream = fixture("openai/chat_stream_usage.sse").replace(b"\n", newline)
    client = fixture("openai/chat_stream.sse").replace(b"\n", newline)
    for chunks in splits(upstream):
        assert run_stream(get_provider("openai"), chunks, strip=True) == (
            client,
            CHAT_MODEL,
            CHAT_USAGE,
        )


def test_openai_strip_drops_a_usage_event_cut_before_its_blank_line() -> None:
    upstream = fixture("openai/chat_stream_usage.sse")
    cut = upstream.index(b"data: [DONE]") - 2  # the usage event without its "\n\n"
    relayed, model, usage = run_stream(get_provider("openai"), (upstream[:cut],), strip=True)
    assert relayed == fixture("openai/chat_stream.sse").removesuffix(b"data: [DONE]\n\n")
    assert (model, usage) == (CHAT_MODEL, CHAT_USAGE)


def test_openai_usage_event_with_choices_is_kept() -> None:
    # Some OpenAI-compatible servers put usage on the last content chunk: keep it visible.
    event = b'data: {"model":"m","choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    relayed, _, usage = run_stream(get_provider("openai"), (event,), strip=True)
    assert relayed == event
    assert usage == Usage(input_tokens=3, output_tokens=2)


def test_openai_usage_found_next_to_a_null_usage_and_in_spaced_json() -> None:
    stream = (
        b'data: {"type": "response.completed", "response": {"model": "gpt-5", '
        b'"output": [{"usage": null}], "usage": {"input_tokens": 4, "output_tokens": 2}}}\n\n'
    )
    _, model, usage = run_stream(get_provider("openai"), (stream,))
    assert (model, usage) == ("gpt-5", Usage(input_tokens=4, output_tokens=2))


def test_anthropic_message_delta_overrides_prompt_counts() -> None:
    stream = (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"model":"claude-x","usage":{"input_tokens":5,"cache_read_input_tokens":0,"output_tokens":1}}}\n\n'
        b"event: message_delta\n"
        b'data: {"type":"message_delta","usage":{"input_tokens":470,"cache_read_input_tokens":null,"output_tokens":30}}\n\n'
        b"event: message_delta\n"
        b'data: {"type":"message_delta","usage":{"output_tokens":31}}\n\n'
    )
    _, model, usage = run_stream(get_provider("anthropic"), (stream,))
    assert (model, usage) == ("claude-x", Usage(input_tokens=470, output_tokens=31))


def test_anthropic_events_without_event_lines() -> None:
    stream = fixture("anthropic/message_stream.sse").replace(b"event: ", b": was event ")
    _, model, usage = run_stream(get_provider("anthropic"), (stream,))
    assert (model, usage) == (CLAUDE, MESSAGE_USAGE)


def test_gemini_json_stream_cut_short_keeps_the_last_complete_chunk() -> None:
    stream = fixture("gemini/stream_generate_content.json")
    cut = stream.rindex(b"\n,\r\n")  # the last element never arrives
    _, model, usage = run_stream(get_provider("gemini"), (stream[:cut],))
    assert model == GEMINI
    assert usage == Usage(
        input_tokens=4121, output_tokens=656, cached_tokens=4056, reasoning_tokens=642
    )


def test_gemini_lone_json_object_is_read() -> None:
    body = fixture("gemini/generate_content.json")
    _, model, usage = run_stream(get_provider("gemini"), (b"\n", body))
    assert (model, usage) == (GEMINI, GEMINI_USAGE)


@pytest.mark.parametrize("name", PROVIDER_NAMES)
def test_stream_parsers_never_raise_on_junk(name: str) -> None:
    junk = [
        b"data: {not json\n\n",
        b'event: message_start\ndata: {"message": 3}\n\n',
        b"event: message_delta\ndata: []\n\n",
        b'data: {"usage": {"prompt_tokens": "x"}, "choices": []}\n\n',
        b']]]}}}"\\',
        b"\xff\xfe\r\n\r\n",
        b'[{"usageMetadata": 7}]',
    ]
    for strip in (False, True):
        parser = get_provider(name).StreamParser(strip_usage_chunk=strip)
        for chunk in junk:
            parser.feed(chunk)
        parser.close()
        assert parser.model is None or isinstance(parser.model, str)
        assert parser.usage is None or isinstance(parser.usage, Usage)


def test_empty_stream() -> None:
    for name in PROVIDER_NAMES:
        relayed, model, usage = run_stream(get_provider(name), (b"",))
        assert (relayed, model, usage) == (b"", None, None)


# --------------------------------------------------------------------------- error bodies

STATUSES = [400, 401, 403, 404, 413, 429, 500, 502, 503, 504]
MESSAGE = "unknown Majordomo key; create one with 'majordomo keys create --name NAME'"


@pytest.mark.parametrize("status", STATUSES)
def test_openai_error_body(status: int) -> None:
    body = json.loads(get_provider("openai").error_body(status, MESSAGE))
    # openai-python reads body["error"] and its message, type, param and code.
    assert set(body) == {"error"}
    error = body["error"]
    assert error["message"] == MESSAGE
    assert isinstance(error["type"], str)
    assert error["param"] is None
    assert "code" in error
    assert error["code"] is None or isinstance(error["code"], str)


@pytest.mark.parametrize("status", STATUSES)
def test_anthropic_error_body(status: int) -> None:
    body = json.loads(get_provider("anthropic").error_body(status, MESSAGE))
    assert body["type"] == "error"
    assert body["error"]["message"] == MESSAGE
    assert isinstance(body["error"]["type"], str)


@pytest.mark.parametrize("status", STATUSES)
def test_gemini_error_body(status: int) -> None:
    body = json.loads(get_provider("gemini").error_body(status, MESSAGE))
    # google-genai's APIError reads error.code, error.message and error.status.
    assert body == {
        "error": {"code": status, "message": MESSAGE, "status": body["error"]["status"]}
    }
    assert body["error"]["status"].isupper()


@pytest.mark.parametrize(
    ("status", "openai_type", "anthropic_type", "gemini_status"),
    [
        (400, "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
        (401, "authentication_error", "authentication_error", "UNAUTHENTICATED"),
        (403, "permission_error", "permission_error", "PERMISSION_DENIED"),
        (404, "invalid_request_error", "not_found_error", "NOT_FOUND"),
        (413, "invalid_request_error", "request_too_large", "INVALID_ARGUMENT"),
        (429, "rate_limit_error", "rate_limit_error", "RESOURCE_EXHAUSTED"),
        (500, "server_error", "api_error", "INTERNAL"),
        (502, "server_error", "api_error", "UNAVAILABLE"),
        (503, "server_error", "overloaded_error", "UNAVAILABLE"),
        (504, "server_error", "timeout_error", "DEADLINE_EXCEEDED"),
        (418, "invalid_request_error", "invalid_request_error", "FAILED_PRECONDITION"),
        (599, "server_error", "api_error", "INTERNAL"),
    ],
)
def test_error_kinds(
    status: int, openai_type: str, anthropic_type: str, gemini_status: str
) -> None:
    def read(name: str) -> dict[str, Any]:
        return dict(json.loads(get_provider(name).error_body(status, "m"))["error"])

    assert read("openai")["type"] == openai_type
    assert read("anthropic")["type"] == anthropic_type
    assert read("gemini")["status"] == gemini_status


def test_error_body_escapes_the_message() -> None:
    message = 'bad "key" \\ é \n'
    for name in PROVIDER_NAMES:
        body = json.loads(get_provider(name).error_body(401, message))
        # Bedrock's errors are flat ({"message", "__type"}), as boto3 reads them.
        assert (body if name == "bedrock" else body["error"])["message"] == message


# ---------------------------------------------------------------------------------------------
# A hostile stream: no line ends, ever. Memory stays bounded; the bytes pass through untouched.


@pytest.mark.parametrize(
    ("provider", "strip", "opening"),
    [
        ("openai", False, b"data: "),
        ("openai", True, b"data: "),
        ("anthropic", False, b"event: message_start\ndata: "),
        ("gemini", False, b"data: "),  # ?alt=sse
        ("gemini", False, b'[{"text": "'),  # the JSON array layout
    ],
)
def test_a_stream_without_line_ends_holds_at_most_max_event_size(
    provider: str, strip: bool, opening: bytes
) -> None:
    import tracemalloc

    limit = 1024 * 1024
    parser = get_provider(provider).StreamParser(strip_usage_chunk=strip, max_event_size=limit)
    chunk = b"x" * 65536
    relayed = bytearray(parser.feed(opening))
    tracemalloc.start()
    try:
        for _ in range(400):  # 25 MiB, 25 times the limit
            relayed += parser.feed(chunk)
            relayed = relayed[-len(chunk) :]  # what the relay keeps of it: nothing
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * limit  # the limit plus a chunk or two, never the stream
    assert parser.failure is not None
    assert "exceeded 1048576 bytes (providers.max_event_size)" in parser.failure
    assert parser.feed(b"tail") == b"tail"  # from now on: pass-through
    assert parser.usage is None


def test_events_up_to_the_limit_are_read_as_usual() -> None:
    body = FIXTURES / "anthropic" / "message_stream.sse"
    data = body.read_bytes()
    parser = get_provider("anthropic").StreamParser(max_event_size=2048)
    assert parser.feed(data) == data
    parser.close()
    assert parser.failure is None
    assert parser.usage is not None


def test_everything_about_a_provider_derives_from_its_module() -> None:
    from majordomo.config import SPECS, load_settings
    from majordomo.pricing import GENAI_PROVIDER_IDS, LLM_PRICES_VENDORS
    from majordomo.providers import MODULES
    from majordomo.proxy import Upstreams

    settings = load_settings()
    upstreams = Upstreams.from_settings(settings)
    for module in MODULES:
        spec = SPECS[f"providers.{module.NAME}.base_url"]
        assert spec.default == module.BASE_URL
        assert module.BASE_URL_HINT in spec.doc
        assert settings.providers.upstream(module.NAME).base_url == module.BASE_URL
        if module.BASE_URL:
            assert upstreams.by_provider[module.NAME].host in module.BASE_URL
        elif module.NAME == "bedrock":  # the endpoint of providers.bedrock.region
            assert (
                upstreams.by_provider[module.NAME].host == "bedrock-runtime.us-east-1.amazonaws.com"
            )
        else:  # no default endpoint (Azure: the resource's): no upstream until configured
            assert module.NAME not in upstreams.by_provider
        assert GENAI_PROVIDER_IDS[module.NAME] == module.PRICE_PROVIDER
        assert LLM_PRICES_VENDORS[module.NAME] == module.LLM_PRICES_VENDOR
        assert get_provider(module.NAME) is module
    assert tuple(m.NAME for m in MODULES) == PROVIDER_NAMES
