"""`anthropic-openai` end to end: the unchanged openai SDK calls Claude through the gateway.

The fake upstream speaks Anthropic's Messages API; each test checks what the client got, what
the upstream received (Anthropic's request, Anthropic's credential header) and the row (usage
as Anthropic counted it, cache reads and writes included, priced as Anthropic).
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import trio

from majordomo.db.credentials import API_KEY
from tests.credentials import hold
from tests.docblocks import parse_blocks
from tests.fakeupstream import FakeUpstream
from tests.harness import Gateway, running_gateway
from tests.pghelpers import PgAdmin

T = TypeVar("T")
DOC_BLOCKS = parse_blocks((Path(__file__).parent.parent / "docs" / "providers.md").read_text())
MODEL = "claude-sonnet-4-5-20250929"
MESSAGES: Any = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "What is the capital of France?"},
]
ANTHROPIC_KEY = "sk-ant-api03-callers-own"


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(function, *args))


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url) as gw:
        yield gw


def client(gateway: Gateway, api_key: str = ANTHROPIC_KEY) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gateway.url + "/v1",
        api_key=api_key,
        max_retries=0,
        default_headers={
            "X-Majordomo-Key": gateway.key,
            "X-Majordomo-Provider": "anthropic-openai",
        },
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_an_openai_chat_request_is_answered_by_anthropic_messages(
    gateway: Gateway, fake: FakeUpstream, stream: bool
) -> None:
    usage: list[Any] = []

    def run() -> str:
        with client(gateway) as c:
            if not stream:
                reply = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64)
                assert reply.choices[0].finish_reason == "stop"
                usage.append(reply.usage)
                return reply.choices[0].message.content or ""
            chunks = list(
                c.chat.completions.create(
                    model=MODEL,
                    messages=MESSAGES,
                    max_tokens=64,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            usage.append(chunks[-1].usage)
            assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    text = await in_thread(run)
    (call,) = fake.calls
    assert call.path == "/v1/messages"
    assert call.header("x-api-key") == ANTHROPIC_KEY
    assert call.header("authorization") is None
    assert call.header("anthropic-version") == "2023-06-01"
    sent = json.loads(call.body)
    assert sent["system"] == "Answer in one word."
    assert sent["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert sent["max_tokens"] == 64
    assert sent.get("stream", False) is stream
    assert text == call.text
    assert call.usage is not None
    # The client sees Anthropic's counts in OpenAI's terms: the whole prompt, cache reads.
    (seen,) = usage
    assert seen.prompt_tokens == call.usage.input_tokens
    assert seen.completion_tokens == call.usage.output_tokens
    assert seen.prompt_tokens_details.cached_tokens == call.usage.cached_tokens
    (row,) = await gateway.rows(1)
    assert (row["provider"], row["model"], row["status_code"]) == ("anthropic", MODEL, 200)
    assert row["request_path"] == "/v1/chat/completions"
    assert row["input_tokens"] == call.usage.input_tokens
    assert row["output_tokens"] == call.usage.output_tokens
    assert row["cached_tokens"] == call.usage.cached_tokens
    assert row["cache_creation_tokens"] == call.usage.cache_creation_tokens
    assert row["model_alias_found"] is True
    assert row["total_cost"] > 0


async def test_a_stream_without_include_usage_has_no_usage_chunk(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    def run() -> list[Any]:
        with client(gateway) as c:
            return list(c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True))

    chunks = await in_thread(run)
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    (row,) = await gateway.rows(1)
    assert fake.calls[0].usage is not None
    assert row["output_tokens"] == fake.calls[0].usage.output_tokens  # logged all the same


async def test_a_held_anthropic_key_goes_in_anthropics_header(
    gateway: Gateway, fake: FakeUpstream, pg: PgAdmin
) -> None:
    await hold(pg, API_KEY, gateway.key_id, "anthropic", "sk-ant-api03-held-by-gateway")

    def run() -> str:
        with openai.OpenAI(
            base_url=gateway.url + "/v1",
            api_key=gateway.key,  # the Majordomo key where the SDK puts its key
            max_retries=0,
            default_headers={"X-Majordomo-Provider": "anthropic-openai"},
        ) as c:
            reply = c.chat.completions.create(model=MODEL, messages=MESSAGES)
            return reply.choices[0].message.content or ""

    assert await in_thread(run) == fake.calls[0].text
    assert fake.calls[0].header("x-api-key") == "sk-ant-api03-held-by-gateway"
    assert fake.calls[0].header("authorization") is None
    assert json.loads(fake.calls[0].body)["max_tokens"] == 4096  # the default when unset


async def test_a_field_anthropic_has_no_equivalent_for_is_a_400_naming_it(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    def run() -> None:
        with client(gateway) as c:
            c.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)

    with pytest.raises(openai.BadRequestError) as raised:
        await in_thread(run)
    assert "n=2" in raised.value.message
    assert fake.calls == []


async def test_anthropics_errors_reach_the_client_in_openais_shape(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    def run() -> None:
        with openai.OpenAI(
            base_url=gateway.url + "/v1",
            api_key=ANTHROPIC_KEY,
            max_retries=0,
            default_headers={
                "X-Majordomo-Key": gateway.key,
                "X-Majordomo-Provider": "anthropic-openai",
                "X-Fake-Status": "429",
                "X-Fake-Message": "Number of request tokens has exceeded your per-minute limit",
            },
        ) as c:
            c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)

    with pytest.raises(openai.RateLimitError) as raised:
        await in_thread(run)
    assert "per-minute limit" in raised.value.message
    (row,) = await gateway.rows(1)
    assert row["status_code"] == 429
    assert "per-minute limit" in row["error_message"]


async def test_other_paths_are_not_translated(gateway: Gateway, fake: FakeUpstream) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.post(
            "/v1/embeddings",
            json={"model": MODEL, "input": "hi"},
            headers={
                "X-Majordomo-Key": gateway.key,
                "X-Majordomo-Provider": "anthropic-openai",
                "Authorization": f"Bearer {ANTHROPIC_KEY}",
            },
        )
    assert response.status_code == 404
    assert "POST /v1/chat/completions only" in response.json()["error"]["message"]
    assert fake.calls == []


TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "lookup_capital",
            "description": "The capital of a country.",
            "parameters": {
                "type": "object",
                "properties": {"country": {"type": "string"}},
                "required": ["country"],
            },
        },
    }
]


@pytest.mark.parametrize("stream", [False, True])
async def test_tools_and_tool_calls_both_ways(
    gateway: Gateway, fake: FakeUpstream, stream: bool
) -> None:
    def ask() -> tuple[str, str, str]:
        """The tool call the answer makes: (id, name, arguments)."""
        with client(gateway) as c:
            if not stream:
                reply = c.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS)
                assert reply.choices[0].finish_reason == "tool_calls"
                (called,) = reply.choices[0].message.tool_calls or []
                assert called.type == "function"
                return called.id, called.function.name, called.function.arguments
            ident = name = ""
            arguments = []
            finish = None
            for chunk in c.chat.completions.create(
                model=MODEL, messages=MESSAGES, tools=TOOLS, stream=True
            ):
                choice = chunk.choices[0]
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or []:
                    assert delta.index == 0
                    ident = delta.id or ident
                    if delta.function is not None:
                        name = delta.function.name or name
                        arguments.append(delta.function.arguments or "")
            assert finish == "tool_calls"
            return ident, name, "".join(arguments)

    ident, name, arguments = await in_thread(ask)
    sent = json.loads(fake.calls[0].body)
    assert sent["tools"] == [
        {
            "name": "lookup_capital",
            "description": "The capital of a country.",
            "input_schema": TOOLS[0]["function"]["parameters"],
        }
    ]
    assert name == "lookup_capital"
    assert ident.startswith("toolu_")
    answered = json.loads(arguments)
    assert answered["tag"]
    assert len(answered["words"]) == 2

    def reply_with_result() -> str:
        history = [
            *MESSAGES,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": ident,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": ident, "content": "Paris"},
        ]
        with client(gateway) as c:
            reply = c.chat.completions.create(model=MODEL, messages=history)
            return reply.choices[0].message.content or ""

    assert await in_thread(reply_with_result) == fake.calls[1].text
    followed = json.loads(fake.calls[1].body)["messages"]
    assert followed[1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": ident, "name": name, "input": answered}],
    }
    assert followed[2]["role"] == "user"
    assert followed[2]["content"][0]["type"] == "tool_result"
    assert followed[2]["content"][0]["tool_use_id"] == ident
    rows = await gateway.rows(2)
    assert [row["status_code"] for row in rows] == [200, 200]


async def test_the_docs_example_runs(gateway: Gateway, fake: FakeUpstream, pg: PgAdmin) -> None:
    (block,) = [b for b in DOC_BLOCKS if b.title == "anthropic-openai"]
    await hold(pg, API_KEY, gateway.key_id, "anthropic", "sk-ant-api03-held-for-docs")
    namespace: dict[str, Any] = {"GATEWAY": gateway.url, "MAJORDOMO_KEY": gateway.key}
    await in_thread(exec, block.code, namespace)
    namespace["client"].close()  # the example leaves it open, as a script may
    assert namespace["answer"] == fake.calls[0].text
    assert fake.calls[0].header("x-api-key") == "sk-ant-api03-held-for-docs"
