"""Requests built to misuse the gateway: other hosts, other paths, other providers' keys.

Each test sends what an attacker (or a confused client) would, over a raw socket where no SDK
can produce it, and checks that the upstream host is always the configured one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio
from google import genai

from tests.fakeupstream import FakeUpstream
from tests.harness import Gateway, running_gateway
from tests.pghelpers import PgAdmin
from tests.rawhttp import Tripwire, exchange

BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture
async def tripwire(nursery: trio.Nursery) -> Tripwire:
    """A listener standing for an internal host the gateway must never reach."""
    wire: Tripwire = await nursery.start(Tripwire().serve)
    return wire


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url) as gw:
        yield gw


def raw_request(gw: Gateway, target: str, *, method: str = "POST", headers: str = "") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: gateway\r\nX-Majordomo-Key: {gw.key}\r\n"
        f"Authorization: Bearer sk-caller\r\nContent-Type: application/json\r\n{headers}"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


PROVIDER = "X-Majordomo-Provider: openai\r\n"

# Targets that could name another authority or leave the base URL's path: refused with 400.
REFUSED = [
    ("%2Fv1%2F@127.0.0.1:{port}/v1/chat/completions", "", "is not a path"),
    ("@127.0.0.1:{port}/v1/chat/completions", PROVIDER, "is not a path"),
    ("127.0.0.1:{port}/v1/chat/completions", PROVIDER, "is not a path"),
    ("http://127.0.0.1:{port}/v1/chat/completions", "", "is not a path"),
    ("http://127.0.0.1:{port}/v1/chat/completions", PROVIDER, "is not a path"),
    ("//127.0.0.1:{port}/v1/chat/completions", PROVIDER, "is not a path"),
    ("/v1\\@127.0.0.1:{port}/chat/completions", "", "contains a backslash"),
    ("/v1/%5C%5C127.0.0.1:{port}/chat/completions", "", "contains a backslash"),
    ("/v1/../../admin", PROVIDER, "contains a dot-segment"),
    ("/v1/%2e%2e/%2E%2E/admin", PROVIDER, "contains a dot-segment"),
    ("/v1/..%2F..%2Fadmin", PROVIDER, "contains a dot-segment"),
    ("/v1/./chat/completions", "", "contains a dot-segment"),
    ("*", PROVIDER, "is not a path"),
]


@pytest.mark.parametrize(("target", "headers", "message"), REFUSED)
async def test_targets_that_could_change_the_host_or_leave_the_prefix_are_400(
    gateway: Gateway,
    fake: FakeUpstream,
    tripwire: Tripwire,
    target: str,
    headers: str,
    message: str,
) -> None:
    response = await exchange(
        gateway.url, raw_request(gateway, target.format(port=tripwire.port), headers=headers)
    )
    assert response.status == 400, response
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"  # OpenAI's shape: its SDK raises BadRequest
    assert fake.calls == []
    assert tripwire.connections == []


async def test_connect_is_refused(gateway: Gateway, fake: FakeUpstream, tripwire: Tripwire) -> None:
    request = (
        f"CONNECT 127.0.0.1:{tripwire.port} HTTP/1.1\r\nHost: 127.0.0.1:{tripwire.port}\r\n"
        f"X-Majordomo-Key: {gateway.key}\r\n{PROVIDER}\r\n"
    ).encode()
    response = await exchange(gateway.url, request)
    assert response.status == 400
    assert response.json()["error"]["message"].startswith("CONNECT is not supported")
    assert (fake.calls, tripwire.connections) == ([], [])


async def test_a_refusal_uses_the_chosen_providers_error_shape(
    gateway: Gateway, tripwire: Tripwire
) -> None:
    target = f"http://127.0.0.1:{tripwire.port}/v1/messages"
    response = await exchange(
        gateway.url, raw_request(gateway, target, headers="X-Majordomo-Provider: anthropic\r\n")
    )
    assert response.status == 400
    assert response.json()["type"] == "error"  # Anthropic's shape
    assert tripwire.connections == []


# Ordinary path characters once the host is fixed: forwarded to the configured host verbatim.
FORWARDED = [
    ("/v1/@127.0.0.1:{port}/v1/chat/completions", PROVIDER),
    ("/v1/%40127.0.0.1:{port}/chat/completions", ""),
    ("/v1/%2F%2F127.0.0.1:{port}/chat/completions", ""),
    ("/v1/chat/completions?next=http://127.0.0.1:{port}/&x=%2F", ""),
]


@pytest.mark.parametrize(("target", "headers"), FORWARDED)
async def test_at_signs_and_encoded_slashes_reach_the_configured_host_as_sent(
    gateway: Gateway, fake: FakeUpstream, tripwire: Tripwire, target: str, headers: str
) -> None:
    target = target.format(port=tripwire.port)
    response = await exchange(gateway.url, raw_request(gateway, target, headers=headers))
    assert response.status in (200, 404)  # whatever the provider answers for that path
    (call,) = fake.calls
    path, _, query = target.partition("?")
    assert (call.raw_path, call.query) == (path, query)
    assert call.header("authorization") == "Bearer sk-caller"  # never a Basic from a userinfo
    assert tripwire.connections == []
    (row,) = await gateway.rows(1)
    assert row["status_code"] == response.status


async def test_a_base_url_path_prefix_is_never_left(pg: PgAdmin, fake: FakeUpstream) -> None:
    async with running_gateway(pg, fake.base_url + "/tenant/a") as gw:
        for target in ("/v1/../../admin", "/v1/%2e%2e/%2e%2e/admin"):
            response = await exchange(gw.url, raw_request(gw, target, headers=PROVIDER))
            assert response.status == 400
        await exchange(gw.url, raw_request(gw, "/v1/chat/completions"))
    assert [c.raw_path for c in fake.calls] == ["/tenant/a/v1/chat/completions"]


def test_a_base_url_with_credentials_query_or_fragment_is_refused() -> None:
    from majordomo.config import load_settings
    from majordomo.errors import ConfigError

    for bad in (
        "https://user:pw@api.openai.com",
        "https://api.openai.com?x=1",
        "https://api.openai.com#frag",
        "https://api.openai.com:notaport",
    ):
        with pytest.raises(ConfigError, match=r"providers\.openai\.base_url"):
            load_settings({"providers": {"openai": {"base_url": bad}}})


# ------------------------------------------------------------- credentials stay with their provider


@pytest.fixture
async def three(
    pg: PgAdmin, nursery: trio.Nursery
) -> AsyncIterator[tuple[Gateway, dict[str, FakeUpstream]]]:
    """A gateway whose three providers are three separate fakes, to see who got what."""
    fakes = {name: await nursery.start(FakeUpstream().serve) for name in ("oa", "an", "ge")}
    settings = {
        "providers": {
            "openai": {"base_url": fakes["oa"].base_url},
            "anthropic": {"base_url": fakes["an"].base_url},
            "gemini": {"base_url": fakes["ge"].base_url},
        }
    }
    async with running_gateway(pg, fakes["oa"].base_url, settings=settings) as gw:
        yield gw, fakes


async def test_anthropic_sdk_model_listing_goes_to_anthropic(
    three: tuple[Gateway, dict[str, FakeUpstream]],
) -> None:
    gw, fakes = three
    with anthropic.Anthropic(
        base_url=gw.url, api_key="sk-ant-caller", default_headers={"X-Majordomo-Key": gw.key}
    ) as client:
        page = await trio.to_thread.run_sync(client.models.list)
    assert [m.id for m in page.data] == ["claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001"]
    (call,) = fakes["an"].calls
    assert call.path == "/v1/models"
    assert fakes["oa"].calls == fakes["ge"].calls == []
    (row,) = await gw.rows(1)
    assert row["provider"] == "anthropic"


async def test_gemini_sdk_model_calls_go_to_gemini(
    three: tuple[Gateway, dict[str, FakeUpstream]],
) -> None:
    gw, fakes = three
    with genai.Client(  # sync, in a thread: its async client wants asyncio
        api_key="gemini-caller-key",
        http_options={
            "base_url": gw.url,
            "api_version": "v1",
            "headers": {"X-Majordomo-Key": gw.key},
        },
    ) as client:
        model = await trio.to_thread.run_sync(lambda: client.models.get(model="gemini-2.5-flash"))
        await trio.to_thread.run_sync(lambda: list(client.models.list()))
    assert model.name == "models/gemini-2.5-flash"
    assert fakes["ge"].calls[0].path.endswith("/models/gemini-2.5-flash")
    assert all(c.header("x-goog-api-key") == "gemini-caller-key" for c in fakes["ge"].calls)
    assert fakes["oa"].calls == fakes["an"].calls == []
    rows = await gw.rows(len(fakes["ge"].calls))
    assert {r["provider"] for r in rows} == {"gemini"}


@pytest.mark.parametrize(
    ("headers", "query", "provider"),
    [
        ({"x-api-key": "sk-ant-caller"}, "", "an"),
        ({"anthropic-version": "2023-06-01", "Authorization": "Bearer sk-ant"}, "", "an"),
        ({"x-goog-api-key": "g-key"}, "", "ge"),
        ({}, "key=g-key", "ge"),
        ({"Authorization": "Bearer sk-openai"}, "", "oa"),
    ],
)
async def test_a_generic_v1_path_goes_where_its_credential_belongs(
    three: tuple[Gateway, dict[str, FakeUpstream]],
    headers: dict[str, str],
    query: str,
    provider: str,
) -> None:
    gw, fakes = three
    async with httpx.AsyncClient(base_url=gw.url) as c:
        await c.get(
            "/v1/models" + (f"?{query}" if query else ""),
            headers={"X-Majordomo-Key": gw.key, **headers},
        )
    assert {name: len(f.calls) for name, f in fakes.items()} == {
        name: int(name == provider) for name in fakes
    }


async def test_a_gemini_method_path_is_gemini_whatever_its_prefix(
    three: tuple[Gateway, dict[str, FakeUpstream]],
) -> None:
    gw, fakes = three
    async with httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c:
        await c.post(
            "/v2/models/gemini-2.5-flash:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"Authorization": "Bearer looks-like-openai"},
        )
    assert len(fakes["ge"].calls) == 1
    assert fakes["oa"].calls == fakes["an"].calls == []


# ------------------------------------------------------------- base_url mistakes


async def test_base_url_mistakes_get_a_404_naming_the_right_base_url(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    headers = {"X-Majordomo-Key": gateway.key}
    messages: Any = [{"role": "user", "content": "hi"}]
    no_v1 = openai.OpenAI(base_url=gateway.url, api_key="sk-x", default_headers=headers)
    lacks = r"lacks /v1.*base_url=http://<gateway>:7680/v1"
    with no_v1, pytest.raises(openai.NotFoundError, match=lacks):
        await trio.to_thread.run_sync(
            lambda: no_v1.chat.completions.create(model="gpt-4o-mini", messages=messages)
        )
    doubled = anthropic.Anthropic(
        base_url=gateway.url + "/v1", api_key="sk-ant", default_headers=headers
    )
    repeats = r"/v1/v1/messages repeats its API version"
    with doubled, pytest.raises(anthropic.NotFoundError, match=repeats):
        await trio.to_thread.run_sync(
            lambda: doubled.messages.create(model="claude-x", max_tokens=5, messages=messages)
        )
    gemini = genai.Client(
        api_key="g",
        http_options={"base_url": gateway.url + "/v1beta", "api_version": "v1", "headers": headers},
    )
    repeats = r"repeats its API version.*no /v1beta"
    with gemini, pytest.raises(genai.errors.ClientError, match=repeats):
        await trio.to_thread.run_sync(
            lambda: gemini.models.generate_content(model="gemini-2.5-flash", contents="hi")
        )
    assert fake.calls == []


# ------------------------------------------------------------- Gemini's OpenAI-compatible API


async def test_gemini_openai_compatible_streams_log_their_usage(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    client = openai.OpenAI(
        base_url=gateway.url + "/v1beta/openai",
        api_key="gemini-key",
        default_headers={"X-Majordomo-Key": gateway.key},
    )

    def stream() -> list[Any]:
        return list(
            client.chat.completions.create(
                model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )

    with client:
        chunks = await trio.to_thread.run_sync(stream)
    assert all(chunk.usage is None for chunk in chunks)  # the client did not ask for it
    (call,) = fake.calls
    assert call.path == "/v1beta/openai/chat/completions"
    assert call.usage is not None
    (row,) = await gateway.rows(1)
    assert (row["provider"], row["input_tokens"], row["output_tokens"]) == (
        "gemini",
        call.usage.input_tokens,
        call.usage.output_tokens,
    )
