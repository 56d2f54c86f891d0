"""Amazon Bedrock end to end: boto3's `bedrock-runtime` client, `endpoint_url` at the gateway.

The caller's SigV4 signature covers the gateway's host, so it cannot go on: the gateway signs
each request again with the AWS keys it holds for the caller's Majordomo key (checked here the
way AWS checks them, `tests/sigv4.py`), or sends a held Bedrock API key as a bearer token.
"""

from __future__ import annotations

import functools
import json
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions
import httpx
import pytest
import trio

from majordomo.config import load_settings
from majordomo.db.credentials import API_KEY
from majordomo.errors import ConfigError
from tests.credentials import hold
from tests.docblocks import parse_blocks
from tests.fakeupstream import FakeUpstream
from tests.harness import Gateway, running_gateway
from tests.pghelpers import PgAdmin
from tests.sigv4 import signature_error

T = TypeVar("T")
DOC_BLOCKS = parse_blocks((Path(__file__).parent.parent / "docs" / "providers.md").read_text())
CLAUDE = "anthropic.claude-3-5-haiku-20241022-v1:0"
NOVA = "amazon.nova-lite-v1:0"
ACCESS_KEY_ID = "AKIAFAKEHELD0EXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAKEHELDKEY"
MESSAGES: Any = [{"role": "user", "content": [{"text": "What is the capital of France?"}]}]


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(function, *args))


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url) as gw:
        await hold(pg, API_KEY, gw.key_id, "bedrock", f"{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}")
        yield gw


OPENED: list[Any] = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    """Close every boto3 client a test opened: a collected one leaves its sockets unclosed."""
    yield
    while OPENED:
        OPENED.pop().close()


def bedrock(
    gateway: Gateway, *, access_key_id: str | None = None, headers: dict[str, str] | None = None
) -> Any:
    """boto3's client with the Majordomo key as its access key id (the secret is unused)."""
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=gateway.url,
        region_name="us-east-1",
        aws_access_key_id=access_key_id or gateway.key,
        aws_secret_access_key="not-used-by-the-gateway",
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )
    if headers:

        def add(request: Any, **_: Any) -> None:
            for name, value in headers.items():
                request.headers[name] = value

        client.meta.events.register("before-sign.bedrock-runtime.*", add)
    OPENED.append(client)
    return client


def assert_signed_by_held_keys(fake: FakeUpstream, region: str = "us-east-1") -> None:
    for call in fake.calls:
        problem = signature_error(
            call,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
            region=region,
        )
        assert problem is None, problem
        assert "mdm_sk_" not in json.dumps(call.headers)


async def assert_row_matches(gateway: Gateway, fake: FakeUpstream, model: str) -> None:
    (call,) = fake.calls
    assert call.usage is not None
    (row,) = await gateway.rows(1)
    assert (row["provider"], row["model"], row["status_code"]) == ("bedrock", model, 200)
    assert row["input_tokens"] == call.usage.input_tokens
    assert row["output_tokens"] == call.usage.output_tokens
    assert row["cached_tokens"] == call.usage.cached_tokens
    assert row["cache_creation_tokens"] == call.usage.cache_creation_tokens
    assert row["model_alias_found"] is True
    assert row["total_cost"] > 0


async def test_converse_is_signed_with_the_held_keys(gateway: Gateway, fake: FakeUpstream) -> None:
    def run() -> Any:
        return bedrock(gateway).converse(
            modelId=CLAUDE, messages=MESSAGES, inferenceConfig={"maxTokens": 64}
        )

    answer = await in_thread(run)
    (call,) = fake.calls
    assert call.raw_path == "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse"
    assert answer["output"]["message"]["content"][0]["text"] == call.text
    assert answer["stopReason"] == "end_turn"
    assert_signed_by_held_keys(fake)
    await assert_row_matches(gateway, fake, CLAUDE)


async def test_converse_stream_reads_usage_from_the_event_stream(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    def run() -> tuple[str, Any]:
        reply = bedrock(gateway).converse_stream(modelId=NOVA, messages=MESSAGES)
        text: list[str] = []
        usage = None
        for event in reply["stream"]:
            if "contentBlockDelta" in event:
                text.append(event["contentBlockDelta"]["delta"]["text"])
            if "metadata" in event:
                usage = event["metadata"]["usage"]
        return "".join(text), usage

    text, usage = await in_thread(run)
    (call,) = fake.calls
    assert text == call.text
    assert usage is not None
    assert usage["outputTokens"] == fake.calls[0].usage.output_tokens  # type: ignore[union-attr]
    assert_signed_by_held_keys(fake)
    await assert_row_matches(gateway, fake, NOVA)
    (row,) = await gateway.rows(1)
    assert row["streamed"] is True


@pytest.mark.parametrize("stream", [False, True])
async def test_invoke_model_of_an_anthropic_model(
    gateway: Gateway, fake: FakeUpstream, stream: bool
) -> None:
    body = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        }
    )

    def run() -> str:
        client = bedrock(gateway)
        if not stream:
            reply = client.invoke_model(modelId=CLAUDE, body=body)
            message = json.loads(reply["body"].read())
            return "".join(block["text"] for block in message["content"])
        reply = client.invoke_model_with_response_stream(modelId=CLAUDE, body=body)
        text = []
        for event in reply["body"]:
            native = json.loads(event["chunk"]["bytes"])
            if native["type"] == "content_block_delta":
                text.append(native["delta"]["text"])
        return "".join(text)

    assert await in_thread(run) == fake.calls[0].text
    assert_signed_by_held_keys(fake)
    await assert_row_matches(gateway, fake, CLAUDE)


async def test_a_held_bedrock_api_key_goes_as_a_bearer_token(
    pg: PgAdmin, fake: FakeUpstream
) -> None:
    async with running_gateway(pg, fake.base_url) as gw:
        await hold(pg, API_KEY, gw.key_id, "bedrock", "ABSKQmVkcm9ja0FQSUtleS1mYWtl")
        await in_thread(lambda: bedrock(gw).converse(modelId=NOVA, messages=MESSAGES))
        (call,) = fake.calls
        assert call.header("authorization") == "Bearer ABSKQmVkcm9ja0FQSUtleS1mYWtl"
        assert call.header("x-amz-date") is None  # a bearer token: nothing signed


async def test_the_majordomo_key_as_a_bearer_token(gateway: Gateway, fake: FakeUpstream) -> None:
    # What boto3 sends with AWS_BEARER_TOKEN_BEDROCK set (over HTTPS only: boto3 refuses to
    # send a bearer token to a plain-HTTP endpoint such as this test's gateway).
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.post(
            f"/model/{urllib.parse.quote(NOVA)}/converse",
            json={"messages": MESSAGES},
            headers={"Authorization": f"Bearer {gateway.key}"},
        )
    assert response.status_code == 200, response.text
    assert response.json()["output"]["message"]["content"][0]["text"] == fake.calls[0].text
    assert_signed_by_held_keys(fake)


async def test_the_callers_own_signature_cannot_be_forwarded(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    client = bedrock(
        gateway,
        access_key_id="AKIACALLERSOWN000000",
        headers={"X-Majordomo-Key": gateway.key},
    )
    # The key holds AWS keys for bedrock: the gateway signs with them.
    await in_thread(lambda: client.converse(modelId=CLAUDE, messages=MESSAGES))
    assert_signed_by_held_keys(fake)
    await gateway.pg.afetch("DELETE FROM api_key_provider_mappings")
    gateway.state.credentials.clear()

    with pytest.raises(botocore.exceptions.ClientError) as raised:
        await in_thread(lambda: client.converse(modelId=CLAUDE, messages=MESSAGES))
    error = raised.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert "cannot be forwarded" in error["Message"]
    assert len(fake.calls) == 1


async def test_bedrock_errors_reach_boto3_as_its_own(gateway: Gateway, fake: FakeUpstream) -> None:
    client = bedrock(gateway, headers={"X-Fake-Status": "429", "X-Fake-Message": "Too many tokens"})
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        await in_thread(lambda: client.converse(modelId=CLAUDE, messages=MESSAGES))
    assert raised.value.response["Error"]["Code"] == "ThrottlingException"
    assert raised.value.response["Error"]["Message"] == "Too many tokens"
    (row,) = await gateway.rows(1)
    assert (row["status_code"], row["error_message"]) == (429, "Too many tokens")


async def test_the_region_setting_is_the_signing_region(pg: PgAdmin, fake: FakeUpstream) -> None:
    settings = {"providers": {"bedrock": {"base_url": fake.base_url, "region": "eu-west-3"}}}
    async with running_gateway(pg, fake.base_url, settings=settings) as gw:
        await hold(pg, API_KEY, gw.key_id, "bedrock", f"{ACCESS_KEY_ID}:{SECRET_ACCESS_KEY}")
        await in_thread(lambda: bedrock(gw).converse(modelId=CLAUDE, messages=MESSAGES))
        assert_signed_by_held_keys(fake, region="eu-west-3")


@pytest.mark.fast
def test_the_endpoint_follows_the_region_unless_base_url_is_set() -> None:
    default = load_settings(None, {})
    assert default.providers.base_urls()["bedrock"] == (
        "https://bedrock-runtime.us-east-1.amazonaws.com"
    )
    paris = load_settings(None, {"MAJORDOMO_PROVIDERS_BEDROCK_REGION": "eu-west-3"})
    assert paris.providers.base_urls()["bedrock"] == (
        "https://bedrock-runtime.eu-west-3.amazonaws.com"
    )
    with pytest.raises(ConfigError, match="AWS region"):
        load_settings(None, {"MAJORDOMO_PROVIDERS_BEDROCK_REGION": "evil.example/"})


async def test_the_docs_example_runs(gateway: Gateway, fake: FakeUpstream) -> None:
    (block,) = [b for b in DOC_BLOCKS if b.title == "bedrock"]
    namespace: dict[str, Any] = {"GATEWAY": gateway.url, "MAJORDOMO_KEY": gateway.key}
    await in_thread(exec, block.code, namespace)
    namespace["client"].close()  # the example leaves it open, as a script may
    assert namespace["answer"] == fake.calls[0].text
    assert_signed_by_held_keys(fake)
