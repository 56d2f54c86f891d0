"""The fake upstream against the real SDKs and the project's own parsers.

The official `openai`, `anthropic` and `google-genai` clients talk straight to the fake (no
gateway): if they parse its answers, the fake speaks the real wire formats. The raw bodies are
also fed to `majordomo.providers` parsers, whose usage must equal what the fake says it
reported (`Call.usage`), which checks the fake and the parsers against each other.

The SDKs run synchronously in worker threads: google-genai's async client needs an asyncio
loop, and `openai.AsyncStream` leaves async generators unexhausted after `[DONE]`, which trio
reports as a ResourceWarning (an error under `filterwarnings = error`).
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, TypeVar, cast

import anthropic
import httpx
import openai
import pytest
import trio
import trio.testing
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from majordomo.providers import get_provider
from majordomo.records import Usage
from tests.fakeupstream import DEFAULT_CHUNKS, Call, FakeUpstream

T = TypeVar("T")

MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]
GEMINI_MODEL = "gemini-2.5-flash"


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


def openai_client(fake: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=0)


def anthropic_client(fake: FakeUpstream) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.base_url, api_key="sk-ant-test", max_retries=0)


def gemini_client(fake: FakeUpstream, api_version: str = "v1beta") -> genai.Client:
    options = genai_types.HttpOptions(base_url=fake.base_url, api_version=api_version)
    return genai.Client(api_key="AIza-test", http_options=options)


def raw_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The body as received; an async generator, to be closed with `aclosing`."""
    return cast("AsyncGenerator[bytes, None]", response.aiter_raw())


def only_call(fake: FakeUpstream) -> Call:
    assert len(fake.calls) == 1, fake.calls
    call = fake.calls[0]
    assert call.finished
    assert call.usage is None or call.usage != Usage()
    return call


def assert_nonzero(usage: Usage | None, *fields: str) -> Usage:
    assert usage is not None
    for name in fields:
        assert getattr(usage, name) > 0, (name, usage)
    return usage


# ---------------------------------------------------------------------------------- OpenAI


async def test_openai_chat(fake: FakeUpstream) -> None:
    def run() -> Any:
        with openai_client(fake) as client:
            return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    completion = await in_thread(run)
    call = only_call(fake)
    assert (call.method, call.path, call.query) == ("POST", "/v1/chat/completions", "")
    assert call.header("authorization") == "Bearer sk-test"
    assert completion.model == call.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == call.text
    assert call.text.startswith("Fake answer ")
    usage = assert_nonzero(
        call.usage, "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens"
    )
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == usage.input_tokens
    assert completion.usage.completion_tokens == usage.output_tokens
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == usage.cached_tokens
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == usage.reasoning_tokens


async def test_openai_async_client_works_under_trio(fake: FakeUpstream) -> None:
    async with openai.AsyncOpenAI(
        base_url=fake.base_url + "/v1", api_key="sk-test", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content == only_call(fake).text


@pytest.mark.parametrize("include_usage", [False, True])
async def test_openai_chat_stream(fake: FakeUpstream, include_usage: bool) -> None:
    def run() -> list[Any]:
        with openai_client(fake) as client:
            options: Any = {"include_usage": True} if include_usage else openai.omit
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=options
            )
            return list(stream)

    chunks = await in_thread(run)
    call = only_call(fake)
    content = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(filter(None, content)) == call.text
    assert len([piece for piece in content if piece]) == DEFAULT_CHUNKS
    assert {c.model for c in chunks} == {"gpt-4o-mini"}
    if not include_usage:
        assert call.usage is None
        assert all(c.usage is None for c in chunks)
        return
    *others, last = chunks
    assert last.choices == []
    assert all(c.usage is None for c in others)
    usage = assert_nonzero(call.usage, "input_tokens", "cached_tokens", "reasoning_tokens")
    assert last.usage is not None
    assert last.usage.prompt_tokens == usage.input_tokens
    assert last.usage.completion_tokens == usage.output_tokens


async def test_openai_chat_stream_reports_the_same_usage_as_plain(fake: FakeUpstream) -> None:
    def run() -> None:
        with openai_client(fake) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            list(
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )

    await in_thread(run)
    plain, streamed = fake.calls
    assert plain.usage == streamed.usage
    assert plain.text == streamed.text


async def test_openai_chat_stream_helper(fake: FakeUpstream) -> None:
    def run() -> Any:
        with (
            openai_client(fake) as client,
            client.chat.completions.stream(
                model="gpt-4o-mini", messages=MESSAGES, stream_options={"include_usage": True}
            ) as stream,
        ):
            return stream.get_final_completion()

    completion = await in_thread(run)
    call = only_call(fake)
    assert completion.choices[0].message.content == call.text
    assert completion.usage is not None
    assert call.usage is not None
    assert completion.usage.prompt_tokens == call.usage.input_tokens


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_legacy_completions(fake: FakeUpstream, stream: bool) -> None:
    def run() -> tuple[str, Any]:
        with openai_client(fake) as client:
            if not stream:
                completion = client.completions.create(
                    model="gpt-3.5-turbo-instruct", prompt="Say this is a test"
                )
                return completion.choices[0].text, completion.usage
            chunks = list(
                client.completions.create(
                    model="gpt-3.5-turbo-instruct",
                    prompt="Say this is a test",
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            return "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage

    text, usage = await in_thread(run)
    call = only_call(fake)
    assert text == call.text
    assert call.usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        call.usage.input_tokens,
        call.usage.output_tokens,
    )


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
async def test_openai_embeddings(fake: FakeUpstream, encoding_format: Any) -> None:
    def run() -> Any:
        with openai_client(fake) as client:
            return client.embeddings.create(
                model="text-embedding-3-small",
                input=["first", "second"],
                encoding_format=encoding_format,
            )

    result = await in_thread(run)
    call = only_call(fake)
    assert result.model == call.model == "text-embedding-3-small"
    assert [item.index for item in result.data] == [0, 1]
    vector = result.data[0].embedding
    if encoding_format == "base64":  # the SDK hands base64 over undecoded
        assert isinstance(vector, str)
        vector = list(struct.unpack("<8f", base64.b64decode(vector)))
    assert len(vector) == 8
    assert all(-0.5 <= value <= 0.5 for value in vector)
    assert call.usage == Usage(input_tokens=result.usage.prompt_tokens)


async def test_openai_responses(fake: FakeUpstream) -> None:
    def run() -> Any:
        with openai_client(fake) as client:
            return client.responses.create(
                model="gpt-5-mini", instructions="Answer briefly.", input="Eiffel tower?"
            )

    response = await in_thread(run)
    call = only_call(fake)
    assert call.path == "/v1/responses"
    assert response.output_text == call.text
    assert response.model == "gpt-5-mini"
    assert response.status == "completed"
    usage = assert_nonzero(call.usage, "cached_tokens", "reasoning_tokens")
    assert response.usage is not None
    assert response.usage.input_tokens == usage.input_tokens
    assert response.usage.output_tokens == usage.output_tokens
    assert response.usage.input_tokens_details.cached_tokens == usage.cached_tokens
    assert response.usage.output_tokens_details.reasoning_tokens == usage.reasoning_tokens


async def test_openai_responses_stream(fake: FakeUpstream) -> None:
    def run() -> list[Any]:
        with openai_client(fake) as client:
            return list(client.responses.create(model="gpt-5-mini", input="Hi", stream=True))

    events = await in_thread(run)
    call = only_call(fake)
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # the reasoning item
        "response.output_item.done",
        "response.output_item.added",  # the message
        "response.content_part.added",
        *["response.output_text.delta"] * DEFAULT_CHUNKS,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == call.text
    completed = events[-1].response
    assert completed.output_text == call.text
    assert call.usage is not None
    assert completed.usage.input_tokens == call.usage.input_tokens
    assert completed.usage.output_tokens_details.reasoning_tokens == call.usage.reasoning_tokens


async def test_openai_responses_stream_helper_accepts_the_event_sequence(
    fake: FakeUpstream,
) -> None:
    # The helper rebuilds the response from the events and rejects inconsistent sequences.
    def run() -> Any:
        with (
            openai_client(fake) as client,
            client.responses.stream(model="gpt-5-mini", input="Hi") as stream,
        ):
            return stream.get_final_response()

    response = await in_thread(run)
    assert response.output_text == only_call(fake).text


async def test_openai_models(fake: FakeUpstream) -> None:
    def run() -> tuple[list[str], str]:
        with openai_client(fake) as client:
            listed = [model.id for model in client.models.list()]
            return listed, client.models.retrieve("gpt-4o-mini").id

    listed, retrieved = await in_thread(run)
    assert "gpt-4o-mini" in listed
    assert retrieved == "gpt-4o-mini"
    assert [call.usage for call in fake.calls] == [None, None]
    assert [call.path for call in fake.calls] == ["/v1/models", "/v1/models/gpt-4o-mini"]


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
async def test_openai_errors(
    fake: FakeUpstream, status: int, exception: type[openai.APIStatusError]
) -> None:
    def run() -> None:
        with openai_client(fake) as client:
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                extra_headers={"X-Fake-Status": str(status), "X-Fake-Message": "slow down"},
            )

    with pytest.raises(exception, match="slow down") as caught:
        await in_thread(run)
    assert caught.value.status_code == status
    call = only_call(fake)
    assert (call.status, call.usage) == (status, None)


# ------------------------------------------------------------------------------- Anthropic


async def test_anthropic_message(fake: FakeUpstream) -> None:
    def run() -> Any:
        with anthropic_client(fake) as client:
            return client.messages.create(
                model="claude-sonnet-4-6", max_tokens=256, messages=MESSAGES
            )

    message = await in_thread(run)
    call = only_call(fake)
    assert call.path == "/v1/messages"
    # anthropic 2.x authenticates with a bearer token, no longer with x-api-key.
    assert call.header("authorization") == "Bearer sk-ant-test"
    assert call.header("anthropic-version") is not None
    assert message.model == call.model == "claude-sonnet-4-6"
    assert message.content[0].text == call.text
    usage = assert_nonzero(call.usage, "cached_tokens", "cache_creation_tokens", "output_tokens")
    assert usage.reasoning_tokens == 0
    assert message.usage.input_tokens > 0
    assert (
        message.usage.input_tokens
        + message.usage.cache_read_input_tokens
        + message.usage.cache_creation_input_tokens
    ) == usage.input_tokens
    assert message.usage.cache_read_input_tokens == usage.cached_tokens
    assert message.usage.cache_creation_input_tokens == usage.cache_creation_tokens
    assert message.usage.output_tokens == usage.output_tokens


async def test_anthropic_stream(fake: FakeUpstream) -> None:
    def run() -> tuple[list[str], Any]:
        with (
            anthropic_client(fake) as client,
            client.messages.stream(
                model="claude-sonnet-4-6", max_tokens=256, messages=MESSAGES
            ) as stream,
        ):
            texts = list(stream.text_stream)
            return texts, stream.get_final_message()

    texts, message = await in_thread(run)
    call = only_call(fake)
    assert len(texts) == DEFAULT_CHUNKS
    assert "".join(texts) == message.content[0].text == call.text
    assert call.usage is not None
    assert message.usage.output_tokens == call.usage.output_tokens
    assert message.usage.cache_read_input_tokens == call.usage.cached_tokens


async def test_anthropic_raw_stream_events(fake: FakeUpstream) -> None:
    def run() -> list[Any]:
        with anthropic_client(fake) as client:
            return list(
                client.messages.create(
                    model="claude-sonnet-4-6", max_tokens=256, messages=MESSAGES, stream=True
                )
            )

    events = await in_thread(run)
    kinds = [event.type for event in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * DEFAULT_CHUNKS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK swallows `ping`
    assert only_call(fake).usage is not None


async def test_anthropic_thinking_stream_and_plain_agree(fake: FakeUpstream) -> None:
    request: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": MESSAGES,
    }

    def run() -> tuple[Any, Any]:
        with anthropic_client(fake) as client:
            plain = client.messages.create(**request)
            with client.messages.stream(**request) as stream:
                streamed = stream.get_final_message()
            return plain, streamed

    plain, streamed = await in_thread(run)
    assert [block.type for block in plain.content] == ["thinking", "text"]
    assert [block.type for block in streamed.content] == ["thinking", "text"]
    assert plain.content[0].thinking == streamed.content[0].thinking
    assert plain.content[1].text == streamed.content[1].text == fake.calls[0].text
    assert plain.usage.output_tokens == streamed.usage.output_tokens
    assert fake.calls[0].usage == fake.calls[1].usage


async def test_anthropic_count_tokens(fake: FakeUpstream) -> None:
    def run() -> Any:
        with anthropic_client(fake) as client:
            return client.messages.count_tokens(model="claude-sonnet-4-6", messages=MESSAGES)

    counted = await in_thread(run)
    call = only_call(fake)
    assert call.path == "/v1/messages/count_tokens"
    assert call.usage == Usage(input_tokens=counted.input_tokens)


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, anthropic.BadRequestError),
        (401, anthropic.AuthenticationError),
        (429, anthropic.RateLimitError),
        (529, anthropic.OverloadedError),
    ],
)
async def test_anthropic_errors(
    fake: FakeUpstream, status: int, exception: type[anthropic.APIStatusError]
) -> None:
    def run() -> None:
        with anthropic_client(fake) as client:
            client.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=10,
                messages=MESSAGES,
                extra_headers={"X-Fake-Status": str(status)},
            )

    with pytest.raises(exception, match=f"fake upstream error {status}") as caught:
        await in_thread(run)
    assert caught.value.status_code == status
    assert caught.value.request_id is not None
    assert only_call(fake).usage is None


# ---------------------------------------------------------------------------------- Gemini


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
async def test_gemini_generate_content(fake: FakeUpstream, api_version: str) -> None:
    def run() -> Any:
        with gemini_client(fake, api_version) as client:
            return client.models.generate_content(model=GEMINI_MODEL, contents="Hello")

    response = await in_thread(run)
    call = only_call(fake)
    assert call.path == f"/{api_version}/models/{GEMINI_MODEL}:generateContent"
    assert call.header("x-goog-api-key") == "AIza-test"
    assert response.text == call.text
    assert response.model_version == call.model == GEMINI_MODEL
    usage = assert_nonzero(call.usage, "cached_tokens", "reasoning_tokens")
    metadata = response.usage_metadata
    assert metadata is not None
    assert metadata.prompt_token_count == usage.input_tokens
    assert metadata.cached_content_token_count == usage.cached_tokens
    assert metadata.thoughts_token_count == usage.reasoning_tokens
    assert metadata.candidates_token_count == usage.output_tokens - usage.reasoning_tokens


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
async def test_gemini_stream(fake: FakeUpstream, api_version: str) -> None:
    def run() -> list[Any]:
        with gemini_client(fake, api_version) as client:
            return list(client.models.generate_content_stream(model=GEMINI_MODEL, contents="Hi"))

    chunks = await in_thread(run)
    call = only_call(fake)
    assert call.path == f"/{api_version}/models/{GEMINI_MODEL}:streamGenerateContent"
    assert call.query == "alt=sse"
    assert len(chunks) == DEFAULT_CHUNKS
    assert "".join(chunk.text for chunk in chunks) == call.text
    assert call.usage is not None
    final = chunks[-1].usage_metadata
    assert final is not None
    assert final.candidates_token_count + final.thoughts_token_count == call.usage.output_tokens
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP


async def test_gemini_stream_without_sse_is_a_json_array(fake: FakeUpstream) -> None:
    url = f"{fake.base_url}/v1beta/models/{GEMINI_MODEL}:streamGenerateContent"
    body = {"contents": [{"parts": [{"text": "Hi"}]}]}
    async with httpx.AsyncClient() as client:
        streamed = await client.post(url, json=body, headers={"x-goog-api-key": "k"})
        plain = await client.post(
            url.replace("streamGenerateContent", "generateContent"), json=body
        )
    elements = json.loads(streamed.content)
    assert streamed.headers["content-type"] == "application/json; charset=UTF-8"
    assert streamed.content.startswith(b"[{\n")
    assert b"\n}\n,\r\n{\n" in streamed.content
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in elements)
    assert text == fake.calls[0].text == fake.calls[1].text
    assert elements[-1]["usageMetadata"] == json.loads(plain.content)["usageMetadata"]
    assert fake.calls[0].usage == fake.calls[1].usage


async def test_gemini_count_tokens_and_embeddings(fake: FakeUpstream) -> None:
    def run() -> tuple[Any, Any]:
        with gemini_client(fake) as client:
            counted = client.models.count_tokens(model=GEMINI_MODEL, contents="Hello")
            embedded = client.models.embed_content(
                model="gemini-embedding-001", contents=["one", "two"]
            )
            return counted, embedded

    counted, embedded = await in_thread(run)
    count_call, embed_call = fake.calls
    assert count_call.path == f"/v1beta/models/{GEMINI_MODEL}:countTokens"
    assert count_call.usage == Usage(
        input_tokens=counted.total_tokens, cached_tokens=counted.cached_content_token_count
    )
    # google-genai embeds through batchEmbedContents, even for a single content.
    assert embed_call.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert embed_call.usage is None
    assert embedded.embeddings is not None
    assert len(embedded.embeddings) == 2
    assert len(embedded.embeddings[0].values or []) == 8


async def test_gemini_embed_content_endpoint(fake: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        response = await client.post(
            "/v1beta/models/gemini-embedding-001:embedContent",
            json={"content": {"parts": [{"text": "Hello"}]}},
        )
    assert len(response.json()["embedding"]["values"]) == 8
    assert only_call(fake).model == "gemini-embedding-001"


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "INVALID_ARGUMENT"), (429, "RESOURCE_EXHAUSTED")]
)
async def test_gemini_client_errors(fake: FakeUpstream, status: int, kind: str) -> None:
    def run() -> None:
        with gemini_client(fake) as client:
            config = genai_types.GenerateContentConfig(
                http_options=genai_types.HttpOptions(headers={"X-Fake-Status": str(status)})
            )
            client.models.generate_content(model=GEMINI_MODEL, contents="Hi", config=config)

    with pytest.raises(genai_errors.ClientError, match="fake upstream error") as caught:
        await in_thread(run)
    assert (caught.value.code, caught.value.status) == (status, kind)
    assert only_call(fake).usage is None


async def test_gemini_server_error(fake: FakeUpstream) -> None:
    def run() -> None:
        config = genai_types.GenerateContentConfig(
            http_options=genai_types.HttpOptions(headers={"X-Fake-Status": "503"})
        )
        with gemini_client(fake) as client:
            list(
                client.models.generate_content_stream(
                    model=GEMINI_MODEL, contents="Hi", config=config
                )
            )

    with pytest.raises(genai_errors.ServerError, match="UNAVAILABLE"):
        await in_thread(run)


# ------------------------------------------------------------- raw bodies vs our own parsers

OPENAI_CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}
ANTHROPIC_MESSAGE = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": MESSAGES}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Capital of France?"}]}]}

# (provider, path, streaming query, request body, stream flag in the body?)
PARSER_CASES: list[tuple[str, str, str, dict[str, Any], bool]] = [
    ("openai", "/v1/chat/completions", "", OPENAI_CHAT, True),
    (
        "openai",
        "/v1/completions",
        "",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "Say this is a test"},
        True,
    ),
    ("openai", "/v1/responses", "", {"model": "gpt-5-mini", "input": "Hi"}, True),
    ("anthropic", "/v1/messages", "", ANTHROPIC_MESSAGE, True),
    (
        "anthropic",
        "/v1/messages",
        "",
        {**ANTHROPIC_MESSAGE, "thinking": {"type": "enabled", "budget_tokens": 1024}},
        True,
    ),
    ("gemini", f"/v1beta/models/{GEMINI_MODEL}:generateContent", "alt=sse", GEMINI_BODY, False),
    ("gemini", f"/v1/models/{GEMINI_MODEL}:generateContent", "", GEMINI_BODY, False),
]


async def fetch_stream(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> list[bytes]:
    """POST and collect the response body chunk by chunk, as the network delivered it."""
    async with client.stream("POST", path, json=body, headers=headers) as response:
        assert response.status_code == 200
        return [chunk async for chunk in response.aiter_raw()]


@pytest.mark.parametrize(
    ("provider_name", "path", "query", "body", "stream_flag"),
    PARSER_CASES,
    ids=[f"{c[0]}{c[1].rsplit('/', 1)[-1]}{'-' + c[2] if c[2] else ''}" for c in PARSER_CASES],
)
@pytest.mark.parametrize("chunks", [3, 20])
async def test_stream_and_plain_bodies_through_our_parsers(
    fake: FakeUpstream,
    provider_name: str,
    path: str,
    query: str,
    body: dict[str, Any],
    stream_flag: bool,
    chunks: int,
) -> None:
    provider = get_provider(provider_name)
    headers = {"X-Fake-Chunks": str(chunks)}
    if stream_flag:
        stream_path, stream_body = path, {**body, "stream": True}
        if path in ("/v1/chat/completions", "/v1/completions"):
            stream_body["stream_options"] = {"include_usage": True}
    else:
        stream_path = path.replace(":generateContent", ":streamGenerateContent")
        stream_path += f"?{query}" if query else ""
        stream_body = body
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        plain = await client.post(path, json=body, headers=headers)
        pieces = await fetch_stream(client, stream_path, stream_body, headers)
    plain_call, stream_call = fake.calls

    model, usage = provider.usage_from_body(path, plain.content)
    assert (model, usage) == (plain_call.model, plain_call.usage)

    parser = provider.StreamParser()
    relayed = b"".join([parser.feed(piece) for piece in pieces] + [parser.close()])
    assert relayed == b"".join(pieces)
    assert (parser.model, parser.usage) == (stream_call.model, stream_call.usage)

    assert stream_call.usage == plain_call.usage
    assert stream_call.text == plain_call.text
    assert len(pieces) >= chunks  # one write per chunk at least, none merged by the fake
    assert_nonzero(stream_call.usage, "input_tokens", "output_tokens", "cached_tokens")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_openai_usage_chunk_is_stripped_by_our_parser(fake: FakeUpstream, path: str) -> None:
    body: dict[str, Any] = (
        {**OPENAI_CHAT} if path == "/v1/chat/completions" else {"model": "m", "prompt": "p"}
    )
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        bare = await fetch_stream(client, path, {**body, "stream": True}, {})
        with_usage = await fetch_stream(
            client,
            path,
            {**body, "stream": True, "stream_options": {"include_usage": True}},
            {},
        )
    parser = get_provider("openai").StreamParser(strip_usage_chunk=True)
    relayed = b"".join([parser.feed(piece) for piece in with_usage] + [parser.close()])
    # Same request but for the option: stripping the usage gives back the bare stream.
    assert relayed == b"".join(bare)
    assert parser.usage == fake.calls[1].usage
    assert fake.calls[0].usage is None


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}),
        ("/v1/messages/count_tokens", {"model": "claude-haiku-4-5", "messages": MESSAGES}),
        (f"/v1beta/models/{GEMINI_MODEL}:countTokens", GEMINI_BODY),
        (
            "/v1beta/models/gemini-embedding-001:embedContent",
            {"content": GEMINI_BODY["contents"][0]},
        ),
    ],
)
async def test_other_bodies_through_our_parsers(
    fake: FakeUpstream, path: str, body: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        response = await client.post(path, json=body)
    call = only_call(fake)
    provider = get_provider(
        "gemini" if "models/" in path else "anthropic" if "messages" in path else "openai"
    )
    assert provider.usage_from_body(path, response.content) == (call.model, call.usage)


# ------------------------------------------------------------------------------- controls


async def test_unknown_path_is_an_openai_404(fake: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        response = await client.get("/v2/nothing?x=1")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v2/nothing)"
    call = only_call(fake)
    assert (call.path, call.query, call.usage) == ("/v2/nothing", "x=1", None)


async def test_malformed_json_is_a_400_in_the_provider_format(fake: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        response = await client.post("/v1/messages", content=b"{nope")
    assert response.status_code == 400
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_headers_are_recorded_in_order_and_lower_cased(fake: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        await client.post(
            "/v1/chat/completions",
            json=OPENAI_CHAT,
            headers=[("X-First", "1"), ("X-Second", "2"), ("x-first", "3")],
        )
    call = only_call(fake)
    names = [name for name, _ in call.headers]
    assert names.index("x-first") < names.index("x-second")
    assert [v for n, v in call.headers if n == "x-first"] == ["1", "3"]
    assert fake.header(0, "X-FIRST") == "1"
    assert fake.header(0, "x-missing") is None
    assert json.loads(call.body) == OPENAI_CHAT


async def test_hold_sends_the_first_chunk_then_waits_for_release(fake: FakeUpstream) -> None:
    first_release = fake.release
    async with (
        httpx.AsyncClient(base_url=fake.base_url) as client,
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={**OPENAI_CHAT, "stream": True},
            headers={"X-Fake-Hold": "1"},
        ) as response,
        aclosing(raw_chunks(response)) as chunks,
    ):
        first = await anext(chunks)
        assert first.startswith(b"data: {")
        assert first.endswith(b"\n\n")
        assert first.count(b"data:") == 1
        await trio.testing.wait_all_tasks_blocked()
        assert not fake.calls[0].finished
        fake.release.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest.endswith(b"data: [DONE]\n\n")
    assert fake.calls[0].finished
    assert fake.release is not first_release
    assert not fake.release.is_set()


async def test_release_set_early_lets_a_held_stream_through(fake: FakeUpstream) -> None:
    fake.release.set()
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        response = await client.post(
            "/v1/messages", json={**ANTHROPIC_MESSAGE, "stream": True}, headers={"X-Fake-Hold": "1"}
        )
    assert response.text.endswith('data: {"type":"message_stop"}\n\n')


async def test_client_leaving_a_held_stream_is_recorded(fake: FakeUpstream) -> None:
    # A bare socket: httpx leaves async generators behind when a stream is abandoned.
    body = json.dumps({"model": "m", "input": "x", "stream": True}).encode()
    request = (
        b"POST /v1/responses HTTP/1.1\r\nhost: fake\r\nx-fake-hold: 1\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with await trio.open_tcp_stream("127.0.0.1", fake.port) as stream:
        await stream.send_all(request)
        received = b""
        while b"event: response.created" not in received:
            received += await stream.receive_some()
    assert received.startswith(b"HTTP/1.1 200 ")
    call = fake.calls[0]
    with trio.fail_after(5):
        await call.ended.wait()
    assert call.disconnected
    assert not call.finished


async def test_delay_holds_back_the_response_headers(fake: FakeUpstream) -> None:
    # Only reading is short: connecting on a busy machine may take longer than that.
    timeout = httpx.Timeout(10, read=0.2)
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=timeout) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                "/v1/chat/completions", json=OPENAI_CHAT, headers={"X-Fake-Delay": "30"}
            )
    with trio.fail_after(5):
        await fake.calls[0].ended.wait()
    assert fake.calls[0].disconnected


async def test_stall_pauses_after_the_first_chunk(fake: FakeUpstream) -> None:
    async with (
        httpx.AsyncClient(base_url=fake.base_url) as client,
        client.stream(
            "POST",
            f"/v1beta/models/{GEMINI_MODEL}:streamGenerateContent",
            params={"alt": "sse"},
            json=GEMINI_BODY,
            headers={"X-Fake-Stall": "30"},
        ) as response,
        aclosing(raw_chunks(response)) as chunks,
    ):
        first = await anext(chunks)
        assert first.startswith(b"data: {")
        assert first.endswith(b"\r\n\r\n")
        with trio.move_on_after(0.2) as waiting:
            await anext(chunks)
        assert waiting.cancelled_caught


async def test_gzip_even_when_the_client_refuses_it(fake: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=OPENAI_CHAT,
            headers={"X-Fake-Gzip": "1", "Accept-Encoding": "identity"},
        )
        raw = await client.post(
            "/v1/chat/completions", json=OPENAI_CHAT, headers={"Accept-Encoding": "identity"}
        )
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["choices"][0]["message"]["content"] == fake.calls[0].text
    assert "content-encoding" not in raw.headers
    assert raw.content.startswith(b"{\n")  # pretty-printed JSON, as OpenAI sends it


async def test_chunks_sets_the_number_of_content_chunks(fake: FakeUpstream) -> None:
    def run() -> list[Any]:
        with openai_client(fake) as client:
            return list(
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=MESSAGES,
                    stream=True,
                    extra_headers={"X-Fake-Chunks": "20"},
                )
            )

    chunks = await in_thread(run)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 20


def test_numbers_differ_per_request_and_field() -> None:
    # Plans are pure: no server needed.
    from tests.fakeupstream import _Plan

    short = _Plan.of({"model": "m", "messages": []}, 5)
    longer = _Plan.of({"model": "m", "messages": MESSAGES}, 5)
    assert longer.input_tokens > short.input_tokens
    assert short.tag != longer.tag
    for plan in (short, longer):
        counts = [plan.input_tokens, plan.cached, plan.cache_creation, plan.visible, plan.reasoning]
        assert all(count > 0 for count in counts)
    # The stream flags do not change anything.
    assert (
        _Plan.of({"model": "m", "messages": [], "stream": True, "stream_options": {}}, 5) == short
    )
