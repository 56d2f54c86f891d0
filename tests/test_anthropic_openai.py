"""The OpenAI <-> Anthropic translation (providers/anthropic_openai.py), as tables.

Requests are checked field by field against the Anthropic body expected; answers against the
OpenAI body expected, which must also validate as the `openai` SDK's own types. Every stream
is fed whole, cut in two at every byte offset and byte by byte: the output must not move.
The real `openai` SDK meets the translation over HTTP, through the gateway, in
`tests/test_anthropic_openai_e2e.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from majordomo.providers.anthropic_openai import (
    DEFAULT_MAX_TOKENS,
    MAX_ERROR_MESSAGE,
    StreamTranslator,
    Translated,
    Untranslatable,
    translate_error,
    translate_request,
    translate_response,
)

pytestmark = pytest.mark.fast

FIXTURES = Path(__file__).parent / "fixtures"
CREATED = 1761300000
MODEL = "claude-sonnet-4-5-20250929"
USER_HI = {"role": "user", "content": "Hi"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
SAO_PAULO = {"city": "São Paulo", "unit": "celsius"}
ZURICH = {"city": "Zürich", "unit": "celsius"}


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def splits(stream: bytes) -> Iterator[tuple[bytes, ...]]:
    """The stream whole, cut in two at every offset, and byte by byte."""
    yield (stream,)
    for cut in range(len(stream) + 1):
        yield stream[:cut], stream[cut:]
    yield tuple(stream[i : i + 1] for i in range(len(stream)))


def chat(*messages: Any, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), **fields}


def claude(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), "max_tokens": DEFAULT_MAX_TOKENS, **fields}


def request(payload: dict[str, Any]) -> Translated:
    return translate_request(json.dumps(payload).encode())


REQUEST_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("minimal, max_tokens default", chat(USER_HI), claude(USER_HI)),
    (
        "one system message becomes a string",
        chat({"role": "system", "content": "Be brief."}, USER_HI),
        claude(USER_HI, system="Be brief."),
    ),
    (
        "system and developer messages join, in order, wherever they stand",
        chat(
            {"role": "system", "content": "Be brief."},
            USER_HI,
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        ),
        claude(
            USER_HI,
            system=[
                {"type": "text", "text": "Be brief."},
                {"type": "text", "text": "Answer in French."},
            ],
        ),
    ),
    (
        "max_completion_tokens wins over max_tokens",
        chat(USER_HI, max_completion_tokens=300, max_tokens=100),
        claude(USER_HI, max_tokens=300),
    ),
    ("max_tokens", chat(USER_HI, max_tokens=100), claude(USER_HI, max_tokens=100)),
    (
        "sampling passed through, a stop string becomes a list",
        chat(USER_HI, temperature=0.2, top_p=0.9, stop="END"),
        claude(USER_HI, temperature=0.2, top_p=0.9, stop_sequences=["END"]),
    ),
    (
        "stop list",
        chat(USER_HI, stop=["END", "\n\n"]),
        claude(USER_HI, stop_sequences=["END", "\n\n"]),
    ),
    (
        "images: base64 data URL and https URL (detail dropped)",
        chat(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare these."},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"},
                    },
                ],
            }
        ),
        claude(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare these."},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.jpg"},
                    },
                ],
            }
        ),
    ),
    (
        "tools, with and without parameters or description",
        chat(
            USER_HI,
            tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "now", "strict": True}}],
        ),
        claude(
            USER_HI,
            tools=[
                ANTHROPIC_WEATHER_TOOL,
                {"name": "now", "input_schema": {"type": "object", "properties": {}}},
            ],
        ),
    ),
    *[
        (
            f"tool_choice {openai_choice}",
            chat(USER_HI, tools=[WEATHER_TOOL], tool_choice=openai_choice),
            claude(USER_HI, tools=[ANTHROPIC_WEATHER_TOOL], tool_choice=anthropic_choice),
        )
        for openai_choice, anthropic_choice in [
            ("auto", {"type": "auto"}),
            ("none", {"type": "none"}),
            ("required", {"type": "any"}),
            (
                {"type": "function", "function": {"name": "get_weather"}},
                {"type": "tool", "name": "get_weather"},
            ),
        ]
    ],
    (
        "parallel_tool_calls false without tool_choice",
        chat(USER_HI, tools=[WEATHER_TOOL], parallel_tool_calls=False),
        claude(
            USER_HI,
            tools=[ANTHROPIC_WEATHER_TOOL],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        ),
    ),
    (
        "parallel_tool_calls false with tool_choice required",
        chat(USER_HI, tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False),
        claude(
            USER_HI,
            tools=[ANTHROPIC_WEATHER_TOOL],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
        ),
    ),
    (
        "tool calls and results: consecutive results share one user message with the next text",
        chat(
            {"role": "user", "content": "Weather in São Paulo and Zürich?"},
            {
                "role": "assistant",
                "content": "Looking both up.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps(SAO_PAULO)},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": json.dumps(ZURICH)},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "24 °C"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "9 °C"}],
            },
            {"role": "user", "content": "Which is warmer?"},
        ),
        claude(
            {"role": "user", "content": "Weather in São Paulo and Zürich?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Looking both up."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": SAO_PAULO},
                    {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": ZURICH},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "24 °C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "content": [{"type": "text", "text": "9 °C"}],
                    },
                    {"type": "text", "text": "Which is warmer?"},
                ],
            },
        ),
    ),
    (
        "assistant tool call without content, empty arguments",
        chat(
            USER_HI,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "now", "arguments": ""},
                    }
                ],
            },
        ),
        claude(
            USER_HI,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "call_1", "name": "now", "input": {}}],
            },
        ),
    ),
    (
        "plain assistant text stays a string; consecutive user messages merge",
        chat(
            USER_HI,
            {"role": "assistant", "content": "Hello.", "name": "bot"},
            {"role": "user", "content": "One."},
            {"role": "user", "content": [{"type": "text", "text": "Two."}], "name": "ann"},
        ),
        claude(
            USER_HI,
            {"role": "assistant", "content": "Hello."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}],
            },
        ),
    ),
    (
        "user and stream; stream_options not sent",
        chat(USER_HI, user="user-42", stream=True, stream_options={"include_usage": True}),
        claude(USER_HI, metadata={"user_id": "user-42"}, stream=True),
    ),
    (
        "harmless fields and nulls dropped",
        chat(
            USER_HI,
            seed=7,
            store=False,
            metadata={"team": "a"},
            service_tier="auto",
            parallel_tool_calls=True,
            n=1,
            logprobs=False,
            frequency_penalty=0,
            presence_penalty=0.0,
            response_format={"type": "text"},
            modalities=["text"],
            stream=False,
            temperature=None,
            top_logprobs=None,
            max_tokens=None,
        ),
        claude(USER_HI),
    ),
]


@pytest.mark.parametrize(
    ("openai_request", "expected"),
    [case[1:] for case in REQUEST_CASES],
    ids=[case[0] for case in REQUEST_CASES],
)
def test_translate_request(openai_request: dict[str, Any], expected: dict[str, Any]) -> None:
    translated = request(openai_request)
    assert json.loads(translated.body) == expected
    translated.body.decode("ascii")  # compact ASCII JSON
    assert b": " not in translated.body


def test_translated_facts() -> None:
    translated = request(chat(USER_HI, stream=True, stream_options={"include_usage": True}))
    assert (translated.model, translated.stream, translated.include_usage) == (MODEL, True, True)
    translated = request({"messages": [USER_HI], "stream_options": {"include_usage": False}})
    assert (translated.model, translated.stream, translated.include_usage) == (None, False, False)


def _call(arguments: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
        ],
    }


def _user_parts(*parts: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


TEXT_PART = {"type": "text", "text": "Look:"}
UNTRANSLATABLE_CASES: list[tuple[Any, str]] = [
    (chat(USER_HI, n=2), "n"),
    (chat(USER_HI, logprobs=True), "logprobs"),
    (chat(USER_HI, top_logprobs=3), "top_logprobs"),
    (chat(USER_HI, logit_bias={"50256": -100}), "logit_bias"),
    (chat(USER_HI, audio={"voice": "alloy", "format": "wav"}), "audio"),
    (chat(USER_HI, modalities=["text", "audio"]), "modalities"),
    (chat(USER_HI, response_format={"type": "json_object"}), "response_format"),
    (
        chat(USER_HI, response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
        "response_format",
    ),
    (chat(USER_HI, prediction={"type": "content", "content": "x"}), "prediction"),
    (chat(USER_HI, reasoning_effort="high"), "reasoning_effort"),
    (chat(USER_HI, frequency_penalty=0.5), "frequency_penalty"),
    (chat(USER_HI, presence_penalty=-1), "presence_penalty"),
    (chat(USER_HI, functions=[{"name": "f"}]), "functions"),
    (chat(USER_HI, function_call="auto"), "function_call"),
    (chat(USER_HI, web_search_options={}), "web_search_options"),
    (chat(USER_HI, frobnicate=True), "frobnicate"),
    (chat(USER_HI, n=True), "n"),
    ([USER_HI], "body"),
    ("not json", "body"),
    ({"model": MODEL}, "messages"),
    ({"model": MODEL, "messages": "Hi"}, "messages"),
    (chat("Hi"), "messages[0]"),
    (chat({"role": "function", "name": "f", "content": "{}"}), "messages[0].role"),
    (chat({"content": "Hi"}), "messages[0].role"),
    (
        chat(_user_parts(TEXT_PART, {"type": "input_audio", "input_audio": {"data": "UklG"}})),
        "messages[0].content[1].type",
    ),
    (chat(_user_parts({"type": "file", "file": {"file_id": "f"}})), "messages[0].content[0].type"),
    (
        chat(_user_parts({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}})),
        "messages[0].content[0].image_url.url",
    ),
    (
        chat(_user_parts({"type": "image_url", "image_url": {"url": "data:image/png,abc"}})),
        "messages[0].content[0].image_url.url",
    ),
    (chat(_user_parts("Hi")), "messages[0].content[0]"),
    (chat(_user_parts(TEXT_PART, {"type": "text", "text": 7})), "messages[0].content[1].text"),
    (chat({"role": "user", "content": 42}), "messages[0].content"),
    (
        chat(
            {
                "role": "system",
                "content": [{"type": "image_url", "image_url": {"url": "https://a/b"}}],
            }
        ),
        "messages[0].content[0].type",
    ),
    (chat(USER_HI, _call("not json")), "messages[1].tool_calls[0].function.arguments"),
    (chat(USER_HI, _call("[1, 2]")), "messages[1].tool_calls[0].function.arguments"),
    (
        chat(USER_HI, {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom"}]}),
        "messages[1].tool_calls[0].type",
    ),
    (chat(USER_HI, {"role": "assistant", "audio": {"id": "a"}}), "messages[1].audio"),
    (chat(USER_HI, {"role": "tool", "content": "24 °C"}), "messages[1].tool_call_id"),
    (chat(USER_HI, tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0].type"),
    (chat(USER_HI, tools=[WEATHER_TOOL], tool_choice={"type": "allowed_tools"}), "tool_choice"),
    (chat(USER_HI, tool_choice="sometimes"), "tool_choice"),
    (chat(USER_HI, parallel_tool_calls="no"), "parallel_tool_calls"),
]


@pytest.mark.parametrize(("openai_request", "field"), UNTRANSLATABLE_CASES)
def test_untranslatable(openai_request: Any, field: str) -> None:
    body = (
        openai_request.encode()
        if isinstance(openai_request, str)
        else json.dumps(openai_request).encode()
    )
    with pytest.raises(Untranslatable) as caught:
        translate_request(body)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_untranslatable_message_says_what_to_do() -> None:
    with pytest.raises(Untranslatable, match=r"^n=2 cannot be translated") as caught:
        request(chat(USER_HI, n=2))
    assert str(caught.value) == (
        "n=2 cannot be translated to Anthropic Messages (one choice only); remove n, "
        "or call Anthropic's Messages API directly at /v1/messages"
    )
    with pytest.raises(Untranslatable, match=r"\.\.\.") as long_value:
        request(chat(USER_HI, logit_bias={str(token): -100 for token in range(1000)}))
    assert len(str(long_value.value)) < 250
    audio = {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}
    with pytest.raises(Untranslatable, match=r'type="input_audio" .*; remove the part, or call'):
        request(chat(_user_parts(audio)))


def _completion(
    message: dict[str, Any], finish_reason: str, usage: dict[str, Any], *, id: str
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message, "refusal": None},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _anthropic_message(content: list[Any], stop_reason: str | None, **usage: int) -> bytes:
    return json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
    ).encode()


TOOL_CALLS = [
    {
        "id": "toolu_01A9yKp3VmXc7QeRt2WnLs4F",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"São Paulo","unit":"celsius"}'},
    },
    {
        "id": "toolu_01Hb6TnQ2ZsWd8YfLc3KpX9R",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Zürich","unit":"celsius"}'},
    },
]
RESPONSE_CASES: list[tuple[bytes, dict[str, Any]]] = [
    (  # text, with cache reads and writes counted into the prompt
        fixture("anthropic/message.json"),
        _completion(
            {
                "content": "The contract\u2019s termination clause requires 30 days\u2019 written notice."
            },
            "stop",
            _usage(12 + 4096 + 2048, 95, 4096),
            id="msg_01XFDUDYJgAACzvnptvVoYEL",
        ),
    ),
    (  # thinking dropped, text kept, two tool calls
        fixture("anthropic_openai/tool_use.json"),
        _completion(
            {"content": "I\u2019ll look up São Paulo and Zürich.", "tool_calls": TOOL_CALLS},
            "tool_calls",
            _usage(623 + 1536, 142, 1536),
            id="msg_01Vq8kZ3tWfHn2LxRcP5aYbD",
        ),
    ),
    (
        _anthropic_message([], "max_tokens", input_tokens=10, output_tokens=4096),
        _completion({"content": None}, "length", _usage(10, 4096, 0), id="msg_1"),
    ),
    (
        _anthropic_message(
            [{"type": "text", "text": "Part one, "}, {"type": "text", "text": "part two."}],
            "stop_sequence",
            input_tokens=3,
            output_tokens=5,
        ),
        _completion({"content": "Part one, part two."}, "stop", _usage(3, 5, 0), id="msg_1"),
    ),
    *[
        (
            _anthropic_message([{"type": "text", "text": "x"}], stop_reason, output_tokens=1),
            _completion({"content": "x"}, finish_reason, _usage(0, 1, 0), id="msg_1"),
        )
        for stop_reason, finish_reason in [
            ("end_turn", "stop"),
            ("pause_turn", "stop"),
            ("refusal", "content_filter"),
            (None, "stop"),
            ("something_new", "stop"),
        ]
    ],
]


@pytest.mark.parametrize(("anthropic_body", "expected"), RESPONSE_CASES)
def test_translate_response(anthropic_body: bytes, expected: dict[str, Any]) -> None:
    translated = translate_response(anthropic_body, created=CREATED)
    assert json.loads(translated) == expected
    ChatCompletion.model_validate(expected)


@pytest.mark.parametrize(
    "body", [b"", b"<html>502</html>", b"[]", b'{"type":"error","error":{}}', b'{"content":"x"}']
)
def test_unreadable_response_becomes_an_openai_error(body: bytes) -> None:
    error = json.loads(translate_response(body, created=CREATED))["error"]
    assert error == {
        "message": "the Anthropic answer could not be translated to an OpenAI chat completion",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def _anthropic_error(kind: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()


ERROR_CASES: list[tuple[int, bytes, str, str]] = [
    (
        429,
        _anthropic_error("rate_limit_error", "Number of request tokens has exceeded your limit."),
        "rate_limit_error",
        "Number of request tokens has exceeded your limit.",
    ),
    (529, _anthropic_error("overloaded_error", "Overloaded"), "overloaded_error", "Overloaded"),
    (
        400,
        _anthropic_error("invalid_request_error", "max_tokens: 999999 > 64000"),
        "invalid_request_error",
        "max_tokens: 999999 > 64000",
    ),
    (502, b"<html>Bad Gateway</html>", "api_error", "Anthropic answered HTTP 502 with no message"),
    (429, b"", "rate_limit_error", "Anthropic answered HTTP 429 with no message"),
    (
        401,
        b'{"error": "nope"}',
        "authentication_error",
        "Anthropic answered HTTP 401 with no message",
    ),
]


@pytest.mark.parametrize(("status", "body", "kind", "message"), ERROR_CASES)
def test_translate_error(status: int, body: bytes, kind: str, message: str) -> None:
    assert json.loads(translate_error(status, body)) == {
        "error": {"message": message, "type": kind, "param": None, "code": None}
    }


def test_translate_error_bounds_the_message() -> None:
    body = _anthropic_error("api_error", "x" * 100_000)
    message = json.loads(translate_error(500, body))["error"]["message"]
    assert len(message) == MAX_ERROR_MESSAGE
    assert message.endswith("…")


# -- streams ---------------------------------------------------------------------------------


def translate_stream(
    pieces: tuple[bytes, ...], *, include_usage: bool, max_event_size: int | None = None
) -> tuple[bytes, StreamTranslator]:
    if max_event_size is None:
        translator = StreamTranslator(created=CREATED, include_usage=include_usage)
    else:
        translator = StreamTranslator(
            created=CREATED, include_usage=include_usage, max_event_size=max_event_size
        )
    out = b"".join(translator.feed(piece) for piece in pieces) + translator.close()
    return out, translator


def decode(stream: bytes) -> list[Any]:
    """The OpenAI SSE stream as a list of JSON values, "[DONE]" kept as the string."""
    assert stream.endswith(b"\n\n")
    events = stream[:-2].split(b"\n\n")
    assert all(event.startswith(b"data: ") for event in events)
    return ["[DONE]" if event == b"data: [DONE]" else json.loads(event[6:]) for event in events]


def chunk(
    delta: dict[str, Any],
    finish_reason: str | None = None,
    *,
    id: str = "msg_01Vq8kZ3tWfHn2LxRcP5aYbD",
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def tool_args(k: int, arguments: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": k, "function": {"arguments": arguments}}]}


def tool_start(k: int, id: str) -> dict[str, Any]:
    function = {"name": "get_weather", "arguments": ""}
    return {"tool_calls": [{"index": k, "id": id, "type": "function", "function": function}]}


TOOL_STREAM_CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "I\u2019ll look up São Paulo"}),
    chunk({"content": " and Zürich."}),
    chunk(tool_start(0, "toolu_01A9yKp3VmXc7QeRt2WnLs4F")),
    chunk(tool_args(0, '{"city": "São')),
    chunk(tool_args(0, ' Paulo", "unit": "celsius"}')),
    chunk(tool_start(1, "toolu_01Hb6TnQ2ZsWd8YfLc3KpX9R")),
    chunk(tool_args(1, '{"city": "Zürich", "unit"')),
    chunk(tool_args(1, ': "celsius"}')),
    chunk({}, "tool_calls"),
]
USAGE_CHUNK = {
    "id": "msg_01Vq8kZ3tWfHn2LxRcP5aYbD",
    "object": "chat.completion.chunk",
    "created": CREATED,
    "model": MODEL,
    "choices": [],
    "usage": _usage(623 + 1536, 142, 1536),
}


@pytest.mark.parametrize(
    ("include_usage", "expected"),
    [
        (False, [*TOOL_STREAM_CHUNKS, "[DONE]"]),
        (True, [*TOOL_STREAM_CHUNKS, USAGE_CHUNK, "[DONE]"]),
    ],
)
def test_stream_at_every_split(include_usage: bool, expected: list[Any]) -> None:
    stream = fixture("anthropic_openai/tool_stream.sse")
    whole, _ = translate_stream((stream,), include_usage=include_usage)
    assert decode(whole) == expected
    for value in expected[:-1]:
        ChatCompletionChunk.model_validate(value)
    for pieces in splits(stream):
        assert translate_stream(pieces, include_usage=include_usage)[0] == whole


def test_streamed_tool_arguments_reassemble_to_the_input() -> None:
    out, _ = translate_stream((fixture("anthropic_openai/tool_stream.sse"),), include_usage=False)
    arguments: dict[int, str] = {}
    for value in decode(out)[:-1]:
        for call in value["choices"][0]["delta"].get("tool_calls", []):
            arguments[call["index"]] = (
                arguments.get(call["index"], "") + call["function"]["arguments"]
            )
    assert [json.loads(arguments[k]) for k in sorted(arguments)] == [SAO_PAULO, ZURICH]


def test_stream_usage_merges_and_never_adds() -> None:
    stream = (
        b'data: {"type":"message_start","message":{"id":"m","model":"c","usage":'
        b'{"input_tokens":5,"cache_read_input_tokens":7,"output_tokens":1}}}\n\n'
        b'data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":'
        b'{"input_tokens":null,"output_tokens":40}}\n\n'
        b'data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":'
        b'{"output_tokens":64}}\n\n'
        b'data: {"type":"message_stop"}\n\n'
    )
    values = decode(translate_stream((stream,), include_usage=True)[0])
    assert values[1]["choices"][0]["finish_reason"] == "length"
    assert values[-2]["usage"] == _usage(12, 64, 7)
    assert values[-1] == "[DONE]"


def test_stream_error_event() -> None:
    stream = fixture("anthropic/message_stream_overloaded.sse")
    whole, translator = translate_stream((stream,), include_usage=True)
    error = {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}
    msg_id = "msg_01QbT3vWfZp8sKc6RjNn4XyE"
    assert decode(whole) == [
        chunk({"role": "assistant", "content": ""}, id=msg_id),
        chunk({"content": "The contract"}, id=msg_id),
        {"error": error},
        "[DONE]",
    ]
    assert translator.failure is None
    for pieces in splits(stream):
        assert translate_stream(pieces, include_usage=True)[0] == whole
    # Nothing more after the error but [DONE], whatever still arrives.
    late = fixture("anthropic/message_stream.sse")
    assert translate_stream((stream, late), include_usage=True)[0] == whole


def test_stream_cut_before_message_stop_still_ends_with_done() -> None:
    stream = fixture("anthropic_openai/tool_stream.sse")
    cut = stream[: stream.index(b"event: message_stop")]
    out, translator = translate_stream((cut,), include_usage=True)
    assert decode(out) == [*TOOL_STREAM_CHUNKS, "[DONE]"]  # no usage chunk invented
    assert translator.failure is None
    # Cut inside an event, its blank line missing: the last complete event is flushed.
    cut = stream[: stream.index(b"event: message_delta") + 140]
    assert decode(translate_stream((cut,), include_usage=True)[0]) == [
        *TOOL_STREAM_CHUNKS[:-1],
        "[DONE]",
    ]


def test_done_exactly_once() -> None:
    translator = StreamTranslator(created=CREATED, include_usage=False)
    out = translator.feed(fixture("anthropic_openai/tool_stream.sse"))
    assert out.endswith(b"data: [DONE]\n\n")
    assert translator.feed(b'data: {"type":"message_start","message":{}}\n\n') == b""
    assert translator.close() == b""
    assert translator.close() == b""
    assert out.count(b"[DONE]") == 1
    empty = StreamTranslator(created=CREATED, include_usage=True)
    assert empty.close() == b"data: [DONE]\n\n"
    assert empty.close() == b""


def test_oversize_event() -> None:
    stream = fixture("anthropic_openai/tool_stream.sse")
    big = b"x" * 5000
    stream = stream.replace(b"I\xe2\x80\x99ll look up S\xc3\xa3o Paulo", big)
    whole, translator = translate_stream((stream,), include_usage=True, max_event_size=1024)
    failure = (
        "one event of the response exceeded 1024 bytes (providers.max_event_size); usage not read"
    )
    assert translator.failure == failure
    message = f"the Anthropic stream could not be translated to OpenAI chunks: {failure}"
    error = {"message": message, "type": "server_error", "param": None, "code": None}
    assert decode(whole) == [TOOL_STREAM_CHUNKS[0], {"error": error}, "[DONE]"]
    for pieces in splits(stream):
        out, translator = translate_stream(pieces, include_usage=True, max_event_size=1024)
        assert out == whole
        assert translator.failure == failure


def test_odd_events_are_skipped_never_raised() -> None:
    stream = (
        b": keep-alive\n\ndata: not json\n\nevent: ping\ndata: {}\n\n"
        b'data: {"type":"content_block_start","index":[],"content_block":{"type":"tool_use"}}\n\n'
        b'data: {"type":"content_block_delta","index":{},"delta":{"type":"input_json_delta"}}\n\n'
        b'data: {"type":"content_block_delta","index":9,"delta":{"partial_json":"{}"}}\n\n'
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"ok"}}'
    )
    nameless = {"index": 0, "id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    assert decode(translate_stream((stream,), include_usage=True)[0]) == [
        chunk({"tool_calls": [nameless]}, id="") | {"model": ""},
        chunk({"content": "ok"}, id="") | {"model": ""},
        "[DONE]",
    ]
