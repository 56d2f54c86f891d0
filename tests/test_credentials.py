"""Held provider credentials end to end: the official SDKs with a proxy key or their
Majordomo key as the api_key; the upstream sees only the real credential, in its place."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import openai
import pytest
import trio
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.cli import majordomo
from tests.credentials import API_KEY, PROXY_KEY, create_proxy_key, hold
from tests.fakeupstream import Call, FakeUpstream
from tests.harness import TEST_ENCRYPTION_KEY, Gateway, create_key, running_gateway
from tests.pghelpers import PgAdmin
from tests.poll import wait_until

T = TypeVar("T")

OPENAI_SECRET = "sk-proj-held-openai-credential-0001"
ANTHROPIC_SECRET = "sk-ant-api03-held-anthropic-credential-0002"
GEMINI_SECRET = "AIzaSyHeld-gemini-credential-0003"
SECRETS = {"openai": OPENAI_SECRET, "anthropic": ANTHROPIC_SECRET, "gemini": GEMINI_SECRET}
MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]


async def in_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url) as gw:
        yield gw


def only_call(fake: FakeUpstream) -> Call:
    assert len(fake.calls) == 1, fake.calls
    return fake.calls[0]


def assert_only_the_real_credential_went_up(call: Call, provider: str) -> None:
    """The native header holds the real credential; no other credential, no mdm_ key."""
    native = {"openai": "authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}
    expected = ("Bearer " if provider == "openai" else "") + SECRETS[provider]
    assert call.header(native[provider]) == expected
    for other in {"authorization", "x-api-key", "x-goog-api-key", "api-key"} - {native[provider]}:
        assert call.header(other) is None, other
    everything = " ".join(f"{k}: {v}" for k, v in call.headers) + call.query + call.raw_path
    assert "mdm_" not in everything


# -- the three SDKs, each credential style, streamed and not --------------------------------


def chat_openai(client: openai.OpenAI, stream: bool) -> str:
    if not stream:
        return (
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            .choices[0]
            .message.content
            or ""
        )
    chunks = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def chat_anthropic(client: anthropic.Anthropic, stream: bool) -> str:
    if not stream:
        message = client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)
        return "".join(b.text for b in message.content if b.type == "text")
    with client.messages.stream(
        model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES
    ) as events:
        return "".join(events.text_stream)


def chat_gemini(client: genai.Client, stream: bool) -> str:
    if not stream:
        return client.models.generate_content(model="gemini-2.5-flash", contents="Hi").text or ""
    return "".join(
        c.text or ""
        for c in client.models.generate_content_stream(model="gemini-2.5-flash", contents="Hi")
    )


def call_sdk(provider: str, gw: Gateway, api_key: str, stream: bool, *, header: bool) -> str:
    """One chat call with `api_key` as the SDK's key; `header`: X-Majordomo-Key sent too."""
    headers = {"X-Majordomo-Key": gw.key} if header else {}
    if provider == "openai":
        with openai.OpenAI(
            base_url=gw.url + "/v1", api_key=api_key, max_retries=0, default_headers=headers
        ) as client:
            return chat_openai(client, stream)
    if provider == "anthropic":
        with anthropic.Anthropic(
            base_url=gw.url, api_key=api_key, max_retries=0, default_headers=headers
        ) as client:
            return chat_anthropic(client, stream)
    options = genai_types.HttpOptions(base_url=gw.url, headers=headers)
    with genai.Client(api_key=api_key, http_options=options) as gemini:
        return chat_gemini(gemini, stream)


PROVIDERS = ["openai", "anthropic", "gemini"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_proxy_key_as_the_api_key_sends_the_held_credential(
    gateway: Gateway, fake: FakeUpstream, pg: PgAdmin, provider: str, stream: bool
) -> None:
    proxy_key, proxy_key_id = await create_proxy_key(pg, gateway.key_id)
    await hold(pg, PROXY_KEY, proxy_key_id, provider, SECRETS[provider])
    text = await in_thread(call_sdk, provider, gateway, proxy_key, stream, header=True)
    call = only_call(fake)
    assert text == call.text
    assert_only_the_real_credential_went_up(call, provider)
    (row,) = await gateway.rows(1)
    assert row["status_code"] == 200
    assert row["proxy_key_id"] == proxy_key_id
    assert row["majordomo_api_key_id"] == gateway.key_id
    assert row["provider_api_key_hash"] == sha(SECRETS[provider])  # what went up, no scheme
    assert row["input_tokens"] == call.usage.input_tokens if call.usage else True
    counted = await pg.afetch("SELECT request_count, last_used_at FROM proxy_keys")
    assert counted[0]["request_count"] == 1
    assert counted[0]["last_used_at"] == row["requested_at"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("provider", PROVIDERS)
async def test_the_majordomo_key_as_the_api_key_needs_no_header(
    gateway: Gateway, fake: FakeUpstream, pg: PgAdmin, provider: str, stream: bool
) -> None:
    await hold(pg, API_KEY, gateway.key_id, provider, SECRETS[provider])
    text = await in_thread(call_sdk, provider, gateway, gateway.key, stream, header=False)
    call = only_call(fake)
    assert text == call.text
    assert_only_the_real_credential_went_up(call, provider)
    (row,) = await gateway.rows(1)
    assert (row["status_code"], row["proxy_key_id"]) == (200, None)
    assert row["majordomo_api_key_id"] == gateway.key_id
    assert row["provider_api_key_hash"] == sha(SECRETS[provider])


async def test_without_a_held_credential_the_gateway_default_is_sent(
    pg: PgAdmin, fake: FakeUpstream
) -> None:
    settings = {"providers": {"openai": {"base_url": fake.base_url, "api_key": OPENAI_SECRET}}}
    async with running_gateway(pg, fake.base_url, settings=settings) as gw:
        await in_thread(call_sdk, "openai", gw, gw.key, False, header=False)
        assert_only_the_real_credential_went_up(only_call(fake), "openai")
        (row,) = await gw.rows(1)
        assert row["provider_api_key_hash"] == sha(OPENAI_SECRET)


async def test_with_the_header_and_a_provider_key_the_call_passes_through(
    gateway: Gateway, fake: FakeUpstream, pg: PgAdmin
) -> None:
    await hold(pg, API_KEY, gateway.key_id, "openai", OPENAI_SECRET)  # not used: the caller's
    await in_thread(call_sdk, "openai", gateway, "sk-callers-own-key-0004", False, header=True)
    assert only_call(fake).header("authorization") == "Bearer sk-callers-own-key-0004"
    (row,) = await gateway.rows(1)
    assert row["provider_api_key_hash"] == sha("sk-callers-own-key-0004")


async def test_a_proxy_key_in_gemini_key_query_parameter_is_swapped_in_the_native_header(
    gateway: Gateway, fake: FakeUpstream, pg: PgAdmin
) -> None:
    proxy_key, proxy_key_id = await create_proxy_key(pg, gateway.key_id)
    await hold(pg, PROXY_KEY, proxy_key_id, "gemini", GEMINI_SECRET)
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            params={"alt": "json", "key": proxy_key},
            headers={"X-Majordomo-Key": gateway.key},
            json={"contents": [{"parts": [{"text": "Hi"}]}]},
        )
    assert response.status_code == 200, response.text
    call = only_call(fake)
    assert_only_the_real_credential_went_up(call, "gemini")
    assert call.query == "alt=json"


# -- every refusal: 401 in the SDK's shape, nothing forwarded --------------------------------


async def refused(provider: str, gw: Gateway, api_key: str, *, header: bool = True) -> str:
    errors = {
        "openai": openai.AuthenticationError,
        "anthropic": anthropic.AuthenticationError,
        "gemini": genai_errors.ClientError,
    }
    with pytest.raises(errors[provider]) as caught:
        await in_thread(call_sdk, provider, gw, api_key, False, header=header)
    error: Any = caught.value
    if provider == "gemini":
        assert error.code == 401
        return str(error.message)
    assert error.status_code == 401
    # openai's SDK keeps the `error` object as the body; anthropic's the whole envelope.
    body = error.body if provider == "openai" else error.body["error"]
    return str(body["message"])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_each_refusal_names_its_cause_and_forwards_nothing(
    gateway: Gateway, fake: FakeUpstream, pg: PgAdmin, provider: str
) -> None:
    unknown = "mdm_pk_" + "A" * 43
    assert (await refused(provider, gateway, unknown)).startswith("unknown proxy key")

    revoked, _ = await create_proxy_key(pg, gateway.key_id, active=False)
    assert "has been revoked" in await refused(provider, gateway, revoked)

    other_key, other_id = await trio.to_thread.run_sync(create_key, pg, "other")
    theirs, theirs_id = await create_proxy_key(pg, other_id)
    await hold(pg, PROXY_KEY, theirs_id, provider, SECRETS[provider])
    assert "belongs to another Majordomo key" in await refused(provider, gateway, theirs)

    empty, _empty_id = await create_proxy_key(pg, gateway.key_id)
    message = await refused(provider, gateway, empty)
    assert f"holds no {provider} credential" in message
    assert f"proxy-keys set-provider ID --provider {provider}" in message

    message = await refused(provider, gateway, gateway.key, header=False)
    assert f"no {provider} credential is held for it" in message
    assert f"keys set-provider ID --provider {provider}" in message

    message = await refused(provider, gateway, empty, header=False)
    assert message.startswith("a proxy key (mdm_pk_...) was sent without its Majordomo key")

    message = await refused(provider, gateway, other_key)  # header: our key; slot: another
    assert "different Majordomo key" in message
    assert fake.calls == []
    assert await pg.afetchval("SELECT count(*) FROM llm_requests") == 0


async def test_with_credentials_off_a_proxy_key_is_refused_never_forwarded(
    pg: PgAdmin, fake: FakeUpstream
) -> None:
    # An external database and no encryption key: what the Go gateway silently forwarded.
    settings = {"secrets": {"encryption_key": ""}, "storage": {"postgres": {"host": "db"}}}
    async with running_gateway(pg, fake.base_url, settings=settings) as gw:
        message = await refused("openai", gw, "mdm_pk_" + "B" * 43)
        assert "held provider credentials are off on this gateway" in message
        assert "MAJORDOMO_SECRETS_ENCRYPTION_KEY" in message
        message = await refused("anthropic", gw, gw.key, header=False)
        assert "held provider credentials are off" in message
    assert fake.calls == []


@pytest.mark.parametrize(
    ("where", "request_args"),
    [
        ("the x-custom header", {"headers": {"X-Custom": "mdm_sk_" + "C" * 43}}),
        ("the query string", {"params": {"q": "mdm_pk_" + "D" * 43}}),
        ("the query string", {"query": "?q=mdm%5Fsk%5F" + "E" * 43}),  # percent-encoded
        ("the path", {"query": "/mdm_pk_" + "F" * 43}),
    ],
)
async def test_our_keys_anywhere_else_are_refused_before_they_leave(
    gateway: Gateway, fake: FakeUpstream, where: str, request_args: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        headers = {"X-Majordomo-Key": gateway.key, **request_args.pop("headers", {})}
        response = await client.post(
            "/v1/chat/completions" + request_args.pop("query", ""),
            headers=headers,
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            **request_args,
        )
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith(f"a Majordomo key or proxy key is in {where}")
    assert "mdm_sk_C" not in message
    assert "mdm_pk_D" not in message
    assert fake.calls == []


# -- immediate everywhere ------------------------------------------------------------------


async def test_a_revoked_proxy_key_or_changed_credential_is_seen_by_every_gateway_at_once(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    async with (
        running_gateway(pg, fake.base_url) as a,
        running_gateway(pg, fake.base_url) as b,
    ):
        proxy_key, proxy_key_id = await create_proxy_key(pg, a.key_id)
        await hold(pg, PROXY_KEY, proxy_key_id, "openai", OPENAI_SECRET)
        headers = {"X-Majordomo-Key": a.key, "Authorization": f"Bearer {proxy_key}"}
        body = {"model": "gpt-4o-mini", "messages": MESSAGES}
        async with httpx.AsyncClient() as client:
            for gw in (a, b):  # both gateways have the credential cached now
                ok = await client.post(gw.url + "/v1/chat/completions", headers=headers, json=body)
                assert ok.status_code == 200
            # A changed credential is used at once (the cache would hold the old one 5 min),
            # set by the CLI, another process, as an operator would.
            cli_env = {**pg.env, "MAJORDOMO_SECRETS_ENCRYPTION_KEY": TEST_ENCRYPTION_KEY}
            changed = await trio.to_thread.run_sync(
                lambda: majordomo(
                    "proxy-keys",
                    "set-provider",
                    str(proxy_key_id),
                    "--provider",
                    "openai",
                    "--api-key",
                    "sk-rotated-credential-0005",
                    env=cli_env,
                    cwd=tmp_path,
                )
            )
            assert changed.code == 0, changed.err

            async def uses_the_new_one(gw: Gateway) -> bool:
                before = len(fake.calls)
                await client.post(gw.url + "/v1/chat/completions", headers=headers, json=body)
                return (
                    fake.calls[before].header("authorization")
                    == "Bearer sk-rotated-credential-0005"
                )

            for gw in (a, b):
                await wait_until(
                    functools.partial(uses_the_new_one, gw), deadline=1, what="the new credential"
                )

            revoked = await trio.to_thread.run_sync(
                lambda: majordomo(
                    "proxy-keys", "revoke", str(proxy_key_id), env=cli_env, cwd=tmp_path
                )
            )
            assert revoked.code == 0, revoked.err

            async def refuses(gw: Gateway) -> bool:
                response = await client.post(
                    gw.url + "/v1/chat/completions", headers=headers, json=body
                )
                return response.status_code == 401

            for gw in (a, b):
                await wait_until(functools.partial(refuses, gw), deadline=1, what="refusal")


# -- nothing secret is kept ----------------------------------------------------------------


async def test_no_key_or_held_credential_is_in_rows_bodies_spool_or_log(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = {"logging": {"body_storage": "postgres"}}
    async with running_gateway(pg, fake.base_url, settings=settings, spool_dir=str(tmp_path)) as gw:
        proxy_key, proxy_key_id = await create_proxy_key(pg, gw.key_id)
        await hold(pg, PROXY_KEY, proxy_key_id, "openai", OPENAI_SECRET)
        await hold(pg, API_KEY, gw.key_id, "anthropic", ANTHROPIC_SECRET)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            through_proxy = {"X-Majordomo-Key": gw.key, "Authorization": f"Bearer {proxy_key}"}
            chat = {"model": "gpt-4o-mini", "messages": MESSAGES}
            assert (
                await client.post("/v1/chat/completions", headers=through_proxy, json=chat)
            ).status_code == 200
            echoed = await client.post(  # a provider that repeats the credential it got
                "/v1/chat/completions",
                headers={
                    **through_proxy,
                    "X-Fake-Status": "401",
                    "X-Fake-Message": f"Incorrect API key provided: {OPENAI_SECRET}",
                },
                json=chat,
            )
            assert echoed.status_code == 401
            as_key = {"x-api-key": gw.key, "anthropic-version": "2023-06-01"}
            message = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": MESSAGES}
            assert (
                await client.post("/v1/messages", headers=as_key, json=message)
            ).status_code == 200
            refused = await client.post(  # no gemini credential held: a refusal, logged
                "/v1beta/models/gemini-2.5-flash:generateContent",
                headers={"x-goog-api-key": proxy_key, "X-Majordomo-Key": gw.key},
                json={"contents": [{"parts": [{"text": "hi"}]}]},
            )
            assert refused.status_code == 401
        rows = await gw.rows(3)
    secrets = [gw.key, proxy_key, OPENAI_SECRET, ANTHROPIC_SECRET]
    tables = await pg.afetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    for table in (t["tablename"] for t in tables):
        dump = " ".join(
            r["j"] for r in await pg.afetch(f'SELECT row_to_json(t)::text AS j FROM "{table}" t')
        )
        assert [s for s in secrets if s in dump] == [], table
    assert any(r["request_body"] for r in rows)  # bodies were kept, scrubbed
    (error,) = [r for r in rows if r["status_code"] == 401]
    assert error["error_message"] == "Incorrect API key provided: [REDACTED]"
    spooled = " ".join([await p.read_text() for p in await trio.Path(tmp_path).iterdir()])
    assert [s for s in secrets if s in spooled] == []
    logged = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert "refused" in logged
    assert [s for s in secrets if s in logged] == []
