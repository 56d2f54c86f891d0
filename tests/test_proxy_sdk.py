"""The official SDKs through the gateway: same answers as direct, exact numbers in the log.

Each SDK changes only its base URL (and adds X-Majordomo-Key); the fake upstream answers in
the provider's real wire format with per-request token counts (`Call.usage`), and the row the
gateway writes must carry exactly those counts, streamed or not.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anthropic
import openai
import pytest
import trio
from google import genai
from google.genai import types as genai_types

from majordomo.records import Usage
from tests.fakeupstream import Call, FakeUpstream
from tests.harness import Gateway, running_gateway
from tests.pghelpers import PgAdmin

T = TypeVar("T")

MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]
METADATA = {"X-Majordomo-User-Id": "user_123", "X-Majordomo-Feature": "chat"}


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """The SDKs run in worker threads (google-genai's async client wants asyncio)."""
    return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url) as gw:
        yield gw


def gateway_headers(gw: Gateway) -> dict[str, str]:
    return {"X-Majordomo-Key": gw.key, **METADATA}


def openai_client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key="sk-test",
        max_retries=0,
        default_headers=gateway_headers(gw),
    )


def anthropic_client(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url, api_key="sk-ant-test", max_retries=0, default_headers=gateway_headers(gw)
    )


def gemini_client(gw: Gateway, api_version: str = "v1beta") -> genai.Client:
    options = genai_types.HttpOptions(
        base_url=gw.url, api_version=api_version, headers=gateway_headers(gw)
    )
    return genai.Client(api_key="AIza-test", http_options=options)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def only_call(fake: FakeUpstream) -> Call:
    assert len(fake.calls) == 1, fake.calls
    call = fake.calls[0]
    assert call.finished
    return call


def assert_row(
    row: Any,
    gw: Gateway,
    *,
    provider: str,
    model: str,
    usage: Usage,
    path: str,
    streamed: bool,
    credential: str,
) -> None:
    assert row["status_code"] == 200
    assert row["provider"] == provider
    assert row["model"] == model
    assert row["request_path"] == path
    assert row["request_method"] == "POST"
    assert row["majordomo_api_key_id"] == gw.key_id
    assert row["streamed"] is streamed
    assert (
        row["input_tokens"],
        row["output_tokens"],
        row["cached_tokens"],
        row["cache_creation_tokens"],
        row["reasoning_tokens"],
    ) == (
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        usage.cache_creation_tokens,
        usage.reasoning_tokens,
    )
    assert row["provider_api_key_hash"] == sha(credential)
    assert row["error_message"] is None
    assert json.loads(row["raw_metadata"]) == {"user-id": "user_123", "feature": "chat"}
    assert row["response_time_ms"] >= 0
    assert row["time_to_first_byte_ms"] is not None
    assert row["responded_at"] >= row["requested_at"]


# ---------------------------------------------------------------------------------- OpenAI


async def test_openai_chat(gateway: Gateway, fake: FakeUpstream) -> None:
    def run() -> Any:
        with openai_client(gateway) as client:
            return client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES
            )

    raw = await in_thread(run)
    completion = raw.parse()
    call = only_call(fake)
    assert completion.choices[0].message.content == call.text
    assert call.usage is not None
    assert completion.usage.prompt_tokens == call.usage.input_tokens
    row = await gateway.row(raw.headers["x-request-id"])
    assert_row(
        row,
        gateway,
        provider="openai",
        model="gpt-4o-mini",
        usage=call.usage,
        path="/v1/chat/completions",
        streamed=False,
        credential="sk-test",
    )
    assert float(raw.headers["x-majordomo-overhead-ms"]) >= 0


@pytest.mark.parametrize("include_usage", [False, True])
async def test_openai_chat_stream(
    gateway: Gateway, fake: FakeUpstream, pg: PgAdmin, include_usage: bool
) -> None:
    def run() -> list[Any]:
        with openai_client(gateway) as client:
            options: Any = {"include_usage": True} if include_usage else openai.omit
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options=options
            )
            return list(stream)

    chunks = await in_thread(run)
    call = only_call(fake)
    # The gateway asked upstream for usage either way...
    assert b'"include_usage":true' in call.body.replace(b" ", b"")
    assert call.usage is not None
    content = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(filter(None, content)) == call.text
    # ...but the client sees exactly what it asked for.
    if include_usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage.prompt_tokens == call.usage.input_tokens
    else:
        assert all(c.usage is None for c in chunks)
        assert all(c.choices for c in chunks)
    (row,) = await gateway.rows(1)
    assert_row(
        row,
        gateway,
        provider="openai",
        model="gpt-4o-mini",
        usage=call.usage,
        path="/v1/chat/completions",
        streamed=True,
        credential="sk-test",
    )


async def test_openai_chat_stream_and_plain_log_the_same_numbers(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    def run() -> None:
        with openai_client(gateway) as client:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))

    await in_thread(run)
    plain, streamed = await gateway.rows(2)
    columns = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "model")
    assert [plain[c] for c in columns] == [streamed[c] for c in columns]
    assert (plain["streamed"], streamed["streamed"]) == (False, True)


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_responses(gateway: Gateway, fake: FakeUpstream, stream: bool) -> None:
    def run() -> str:
        with openai_client(gateway) as client:
            if not stream:
                return client.responses.create(model="gpt-4.1", input="Hello").output_text
            text = ""
            for event in client.responses.create(model="gpt-4.1", input="Hello", stream=True):
                if event.type == "response.output_text.delta":
                    text += event.delta
            return text

    text = await in_thread(run)
    call = only_call(fake)
    assert text == call.text
    assert call.usage is not None
    (row,) = await gateway.rows(1)
    assert_row(
        row,
        gateway,
        provider="openai",
        model="gpt-4.1",
        usage=call.usage,
        path="/v1/responses",
        streamed=stream,
        credential="sk-test",
    )


async def test_openai_embeddings_and_models(gateway: Gateway, fake: FakeUpstream) -> None:
    def run() -> tuple[int, list[str]]:
        with openai_client(gateway) as client:
            embeddings = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
            return len(embeddings.data), [m.id for m in client.models.list()]

    count, models = await in_thread(run)
    assert count == 2
    assert models
    embedding_call, _models_call = fake.calls
    assert embedding_call.usage is not None
    rows = await gateway.rows(2)
    assert rows[0]["input_tokens"] == embedding_call.usage.input_tokens
    assert rows[0]["output_tokens"] == 0
    assert (rows[1]["request_path"], rows[1]["request_method"]) == ("/v1/models", "GET")
    assert rows[1]["model"] == "unknown"


# ------------------------------------------------------------------------------- Anthropic


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_messages(gateway: Gateway, fake: FakeUpstream, stream: bool) -> None:
    def run() -> str:
        with anthropic_client(gateway) as client:
            if not stream:
                message = client.messages.create(
                    model="claude-sonnet-4-6", max_tokens=256, messages=MESSAGES
                )
                return "".join(b.text for b in message.content if b.type == "text")
            with client.messages.stream(
                model="claude-sonnet-4-6", max_tokens=256, messages=MESSAGES
            ) as events:
                return "".join(events.text_stream)

    text = await in_thread(run)
    call = only_call(fake)
    assert text == call.text
    assert call.usage is not None
    assert call.usage.cache_creation_tokens > 0
    assert call.usage.cached_tokens > 0
    (row,) = await gateway.rows(1)
    assert_row(
        row,
        gateway,
        provider="anthropic",
        model="claude-sonnet-4-6",
        usage=call.usage,
        path="/v1/messages",
        streamed=stream,
        credential="sk-ant-test",
    )


async def test_anthropic_count_tokens(gateway: Gateway, fake: FakeUpstream) -> None:
    def run() -> int:
        with anthropic_client(gateway) as client:
            return client.messages.count_tokens(
                model="claude-sonnet-4-6", messages=MESSAGES
            ).input_tokens

    tokens = await in_thread(run)
    (row,) = await gateway.rows(1)
    assert row["request_path"] == "/v1/messages/count_tokens"
    assert row["input_tokens"] == tokens > 0
    assert row["model"] == "claude-sonnet-4-6"


# ---------------------------------------------------------------------------------- Gemini


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_generate_content(
    gateway: Gateway, fake: FakeUpstream, stream: bool, api_version: str
) -> None:
    def run() -> str:
        with gemini_client(gateway, api_version) as client:
            if not stream:
                return (
                    client.models.generate_content(
                        model="gemini-2.5-flash", contents="Capital of France?"
                    ).text
                    or ""
                )
            return "".join(
                chunk.text or ""
                for chunk in client.models.generate_content_stream(
                    model="gemini-2.5-flash", contents="Capital of France?"
                )
            )

    text = await in_thread(run)
    call = only_call(fake)
    assert text == call.text
    assert call.usage is not None
    assert call.usage.reasoning_tokens > 0
    (row,) = await gateway.rows(1)
    method = "streamGenerateContent" if stream else "generateContent"
    assert_row(
        row,
        gateway,
        provider="gemini",
        model="gemini-2.5-flash",
        usage=call.usage,
        path=f"/{api_version}/models/gemini-2.5-flash:{method}",
        streamed=stream,
        credential="AIza-test",
    )


async def test_gemini_count_tokens_and_embed(gateway: Gateway, fake: FakeUpstream) -> None:
    def run() -> int:
        with gemini_client(gateway) as client:
            client.models.embed_content(model="text-embedding-004", contents="hello")
            counted = client.models.count_tokens(model="gemini-2.5-flash", contents="hello")
            return counted.total_tokens or 0

    total = await in_thread(run)
    embed, count = await gateway.rows(2)
    assert embed["request_path"] == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert embed["status_code"] == 200
    assert count["input_tokens"] == total > 0
    assert count["model"] == "gemini-2.5-flash"


async def test_gemini_json_array_stream_with_key_in_query(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    """Without alt=sse Gemini streams a JSON array; the API key may travel as ?key=."""
    import httpx

    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.post(
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?key=AIza-query",
            headers={"X-Majordomo-Key": gateway.key},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
    assert response.status_code == 200
    assert response.text.startswith("[")
    call = only_call(fake)
    assert call.query == "key=AIza-query"
    assert call.usage is not None
    (row,) = await gateway.rows(1)
    assert row["input_tokens"] == call.usage.input_tokens
    assert row["output_tokens"] == call.usage.output_tokens
    assert row["provider_api_key_hash"] == sha("AIza-query")
    assert row["model"] == "gemini-2.5-pro"


# -------------------------------------------------------------------- errors in each format


async def test_each_sdk_raises_its_own_error_for_a_missing_key(gateway: Gateway) -> None:
    def run() -> list[tuple[type[Exception], str]]:
        seen: list[tuple[type[Exception], str]] = []
        with openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk-test", max_retries=0) as bare:
            try:
                bare.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            except openai.AuthenticationError as exc:
                seen.append((type(exc), exc.message))
        with anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant", max_retries=0) as claude:
            try:
                claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
            except anthropic.AuthenticationError as exc:
                seen.append((type(exc), exc.message))
        options = genai_types.HttpOptions(base_url=gateway.url, api_version="v1beta")
        with genai.Client(api_key="AIza", http_options=options) as gemini:
            try:
                gemini.models.generate_content(model="gemini-2.5-flash", contents="x")
            except genai.errors.ClientError as exc:
                seen.append((type(exc), exc.message or ""))
        return seen

    seen = await in_thread(run)
    assert [kind for kind, _ in seen] == [
        openai.AuthenticationError,
        anthropic.AuthenticationError,
        genai.errors.ClientError,
    ]
    for _, message in seen:
        assert "missing X-Majordomo-Key header" in message


async def test_provider_errors_pass_through_untouched_and_are_logged(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    def run() -> str:
        with openai_client(gateway) as base:
            client = base.with_options(
                default_headers={**gateway_headers(gateway), "X-Fake-Status": "429"}
            )
            try:
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            except openai.RateLimitError as exc:
                return exc.message
        raise AssertionError("expected a RateLimitError")

    message = await in_thread(run)
    (row,) = await gateway.rows(1)
    assert row["status_code"] == 429
    assert row["error_message"]
    assert row["error_message"] in message
    assert row["input_tokens"] == 0
