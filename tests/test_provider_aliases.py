"""Providers beyond the three modules: the Go gateway's `gemini-openai` (Gemini's
OpenAI-compatible API through the unchanged openai SDK, billed as Gemini), and
OpenAI-compatible providers added by configuration (`providers.extra`)."""

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

from majordomo.config import load_settings
from majordomo.errors import ConfigError
from majordomo.providers import ALIASES
from tests.fakeupstream import FakeUpstream
from tests.harness import Gateway, running_gateway
from tests.pghelpers import PgAdmin

T = TypeVar("T")
MESSAGES: Any = [{"role": "user", "content": "What is the capital of France?"}]


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(function, *args))


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url) as gw:
        yield gw


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_openai_goes_to_geminis_openai_api_and_is_billed_as_gemini(
    gateway: Gateway, fake: FakeUpstream, stream: bool
) -> None:
    def run() -> str:
        with openai.OpenAI(
            base_url=gateway.url + "/v1",
            api_key="AIza-gemini-key",
            max_retries=0,
            default_headers={
                "X-Majordomo-Key": gateway.key,
                "X-Majordomo-Provider": "gemini-openai",
            },
        ) as client:
            if not stream:
                reply = client.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES)
                return reply.choices[0].message.content or ""
            chunks = client.chat.completions.create(
                model="gemini-2.5-flash", messages=MESSAGES, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    text = await in_thread(run)
    (call,) = fake.calls
    assert call.path == "/v1beta/openai/chat/completions"
    assert call.header("authorization") == "Bearer AIza-gemini-key"
    assert text == call.text
    (row,) = await gateway.rows(1)
    assert (row["provider"], row["model"], row["status_code"]) == (
        "gemini",
        "gemini-2.5-flash",
        200,
    )
    assert row["request_path"] == "/v1/chat/completions"
    assert call.usage is not None
    assert row["input_tokens"] == call.usage.input_tokens
    assert row["output_tokens"] == call.usage.output_tokens
    assert row["model_alias_found"] is True
    assert row["total_cost"] > 0


def test_an_alias_keeps_paths_already_under_its_api() -> None:
    alias = ALIASES["gemini-openai"]
    assert alias.upstream_path(b"/v1/chat/completions") == b"/v1beta/openai/chat/completions"
    assert alias.upstream_path(b"/v1beta/openai/embeddings") == b"/v1beta/openai/embeddings"
    assert alias.upstream_path(b"/other") == b"/other"


# -- OpenAI-compatible providers by configuration ----------------------------------------------


@pytest.mark.parametrize("select", ["header", "prefix"])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_openai_compatible_provider_added_by_config(
    pg: PgAdmin, fake: FakeUpstream, select: str, stream: bool
) -> None:
    extra = {
        "groq": {"base_url": fake.base_url + "/openai", "api_key": "gsk-gateway-default"},
        "myvllm": {"base_url": fake.base_url, "pricing_provider": "openai"},
    }
    async with running_gateway(pg, fake.base_url, settings={"providers": {"extra": extra}}) as gw:
        name = "myvllm"
        base = gw.url + ("/v1" if select == "header" else f"/{name}/v1")
        headers = {"X-Majordomo-Key": gw.key}
        if select == "header":
            headers["X-Majordomo-Provider"] = name

        def run() -> str:
            with openai.OpenAI(
                base_url=base, api_key="sk-vllm", max_retries=0, default_headers=headers
            ) as client:
                if not stream:
                    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
                    return reply.choices[0].message.content or ""
                chunks = client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, stream=True
                )
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        text = await in_thread(run)
        (call,) = fake.calls
        assert call.path == "/v1/chat/completions"  # the prefix is ours, not the upstream's
        assert call.header("authorization") == "Bearer sk-vllm"
        assert text == call.text
        (row,) = await gw.rows(1)
    assert row["provider"] == "myvllm"
    assert call.usage is not None
    assert (row["input_tokens"], row["output_tokens"]) == (
        call.usage.input_tokens,
        call.usage.output_tokens,
    )
    assert row["model_alias_found"] is True  # priced as openai (pricing_provider)
    assert row["total_cost"] > 0


async def test_an_unpriced_extra_provider_costs_zero_and_its_default_key_is_used(
    pg: PgAdmin, fake: FakeUpstream
) -> None:
    extra = {"acme": {"base_url": fake.base_url, "api_key": "acme-gateway-key-0001"}}
    async with (
        running_gateway(pg, fake.base_url, settings={"providers": {"extra": extra}}) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        # The Majordomo key as the API key: the provider's configured key goes up.
        response = await client.post(
            "/acme/v1/chat/completions",
            headers={"Authorization": f"Bearer {gw.key}"},
            json={"model": "acme-large", "messages": MESSAGES},
        )
        assert response.status_code == 200, response.text
        assert fake.calls[0].header("authorization") == "Bearer acme-gateway-key-0001"
        (row,) = await gw.rows(1)
    assert (row["provider"], row["model_alias_found"], row["total_cost"]) == ("acme", False, 0)
    assert row["request_path"] == "/acme/v1/chat/completions"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"openai": {"base_url": "http://x"}}, "is a built-in provider"),
        ({"Bad Name": {"base_url": "http://x"}}, "expected provider names"),
        ({"groq": {}}, "expected groq: {base_url"),
        ({"groq": {"base_url": "ftp://x"}}, "expected an http:// or https:// URL"),
        ({"groq": {"base_url": "http://x", "apikey": "k"}}, "unknown field 'apikey'"),
    ],
)
def test_bad_extra_providers_stop_start_up_in_one_line(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"providers": {"extra": extra}})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_extra_providers_from_the_environment_as_json() -> None:
    settings = load_settings(
        {}, {"MAJORDOMO_PROVIDERS_EXTRA": '{"groq": {"base_url": "https://api.groq.com/openai"}}'}
    )
    assert settings.providers.extra["groq"].base_url == "https://api.groq.com/openai"


def test_the_docs_configuration_example_loads() -> None:
    from pathlib import Path

    import yaml

    from tests.docblocks import parse_blocks

    guide = Path(__file__).resolve().parent.parent / "docs" / "providers.md"
    (block,) = [b for b in parse_blocks(guide.read_text()) if b.title == "extra-providers"]
    extra = load_settings(yaml.safe_load(block.code)).providers.extra
    assert sorted(extra) == ["deepseek", "groq", "vllm"]
    assert extra["vllm"].pricing_provider == "openai"
    assert extra["groq"].base_url == "https://api.groq.com/openai"


async def test_an_extra_provider_takes_held_credentials_set_by_the_cli(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    from tests.cli import majordomo
    from tests.credentials import create_proxy_key
    from tests.harness import TEST_ENCRYPTION_KEY

    extra = {"acme": {"base_url": fake.base_url}}
    async with (
        running_gateway(pg, fake.base_url, settings={"providers": {"extra": extra}}) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        proxy_key, proxy_key_id = await create_proxy_key(pg, gw.key_id)
        env = {
            **pg.env,
            "MAJORDOMO_SECRETS_ENCRYPTION_KEY": TEST_ENCRYPTION_KEY,
            "MAJORDOMO_PROVIDERS_EXTRA": json.dumps(extra),
        }
        held = await trio.to_thread.run_sync(
            lambda: majordomo(
                "proxy-keys",
                "set-provider",
                str(proxy_key_id),
                "--provider",
                "acme",
                "--api-key",
                "acme-held-credential-0002",
                env=env,
                cwd=tmp_path,
            )
        )
        assert held.code == 0, held.err
        response = await client.post(
            "/acme/v1/chat/completions",
            headers={"X-Majordomo-Key": gw.key, "Authorization": f"Bearer {proxy_key}"},
            json={"model": "acme-large", "messages": MESSAGES},
        )
        assert response.status_code == 200, response.text
    assert fake.calls[0].header("authorization") == "Bearer acme-held-credential-0002"


# -- Azure OpenAI ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_azure_openai_through_the_sdks_azure_client(
    pg: PgAdmin, fake: FakeUpstream, stream: bool
) -> None:
    from tests.fakeupstream import AZURE_DEPLOYMENT_MODEL

    settings = {"providers": {"azure": {"base_url": fake.base_url}}}
    async with running_gateway(pg, fake.base_url, settings=settings) as gw:

        def run() -> str:
            with openai.AzureOpenAI(
                azure_endpoint=gw.url,
                api_key="azure-resource-key",
                api_version="2024-10-21",
                max_retries=0,
                default_headers={"X-Majordomo-Key": gw.key},
            ) as client:
                if not stream:
                    reply = client.chat.completions.create(model="prod-chat", messages=MESSAGES)
                    return reply.choices[0].message.content or ""
                chunks = client.chat.completions.create(
                    model="prod-chat", messages=MESSAGES, stream=True
                )
                return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        text = await in_thread(run)
        (call,) = fake.calls
        assert call.path == "/openai/deployments/prod-chat/chat/completions"
        assert call.query == "api-version=2024-10-21"
        assert call.header("api-key") == "azure-resource-key"
        assert text == call.text
        (row,) = await gw.rows(1)
    assert (row["provider"], row["model"]) == ("azure", AZURE_DEPLOYMENT_MODEL)
    assert call.usage is not None
    assert row["input_tokens"] == call.usage.input_tokens
    assert row["model_alias_found"] is True  # priced by the underlying OpenAI model
    assert row["total_cost"] > 0
    assert row["provider_api_key_hash"] is not None


async def test_azure_held_credential_goes_in_api_key_and_unconfigured_azure_is_a_404(
    pg: PgAdmin, fake: FakeUpstream
) -> None:
    from tests.credentials import API_KEY, hold

    chat = {"messages": MESSAGES}
    path = "/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21"
    async with (
        running_gateway(
            pg, fake.base_url, settings={"providers": {"azure": {"base_url": ""}}}
        ) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        missing = await client.post(path, headers={"X-Majordomo-Key": gw.key}, json=chat)
        assert missing.status_code == 404
        assert "providers.azure.base_url" in missing.json()["error"]["message"]
    assert fake.calls == []
    settings = {"providers": {"azure": {"base_url": fake.base_url}}}
    async with (
        running_gateway(pg, fake.base_url, settings=settings) as gw,
        httpx.AsyncClient(base_url=gw.url) as client,
    ):
        await hold(pg, API_KEY, gw.key_id, "azure", "azure-held-key-0003")
        ok = await client.post(path, headers={"api-key": gw.key}, json=chat)
        assert ok.status_code == 200, ok.text
    assert fake.calls[0].header("api-key") == "azure-held-key-0003"
    assert fake.calls[0].header("authorization") is None
