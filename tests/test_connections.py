"""Client connections: closed when asked, when idle, and at shutdown; CORS for browsers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from majordomo.config import load_settings
from tests.fakeupstream import FakeUpstream
from tests.harness import Gateway, running_gateway
from tests.pghelpers import PgAdmin
from tests.rawhttp import exchange, host_port

ORIGIN = "https://app.example.com"


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    settings = {"server": {"keepalive_timeout": "0.5s"}, "cors": {"allowed_origins": [ORIGIN]}}
    async with running_gateway(pg, fake.base_url, settings=settings) as gw:
        yield gw


@pytest.mark.parametrize("path", ["/health", "/readyz", "/metrics", "/v1/models"])
async def test_connection_close_is_honoured_on_every_route(gateway: Gateway, path: str) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode()
    responses = []
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            responses.append(await exchange(gateway.url, request, close_wait=10))

        for _ in range(20):
            nursery.start_soon(one)
    assert len(responses) == 20
    assert all(r.closed for r in responses), [r.status for r in responses]


@pytest.mark.parametrize("path", ["/health", "/v1/models"])
async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(
    gateway: Gateway, path: str
) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
    response = await exchange(gateway.url, request, close_wait=10)  # keepalive_timeout 0.5 s
    assert response.closed


async def test_shutdown_closes_idle_connections_at_once(pg: PgAdmin, fake: FakeUpstream) -> None:
    settings = {"server": {"shutdown_timeout": "60s", "keepalive_timeout": "60s"}}
    with trio.fail_after(20):  # far below the 60 s an idle connection used to hold it
        async with running_gateway(pg, fake.base_url, settings=settings) as gw:
            stream = await trio.open_tcp_stream(*host_port(gw.url))
            await stream.send_all(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nok"):
                answer += await stream.receive_some()
            assert answer.startswith(b"HTTP/1.1 200")
            # The connection now sits idle in keep-alive while the gateway shuts down.
    with trio.fail_after(10):
        assert await stream.receive_some() == b""  # the server closed it
    await stream.aclose()


# ----------------------------------------------------------------------------- CORS


def preflight(origin: str) -> bytes:
    return (
        f"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nOrigin: {origin}\r\n"
        "Access-Control-Request-Method: POST\r\n"
        "Access-Control-Request-Headers: authorization, x-majordomo-key, content-type\r\n\r\n"
    ).encode()


async def test_a_listed_origin_gets_a_preflight_answer(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    response = await exchange(gateway.url, preflight(ORIGIN))
    assert response.status == 204
    assert response.header("access-control-allow-origin") == ORIGIN
    assert "POST" in (response.header("access-control-allow-methods") or "")
    assert response.header("access-control-allow-headers") == (
        "authorization, x-majordomo-key, content-type"
    )
    assert fake.calls == []


async def test_another_origin_gets_no_permission_and_never_a_401(
    gateway: Gateway, pg: PgAdmin, fake: FakeUpstream
) -> None:
    response = await exchange(gateway.url, preflight("https://evil.example"))
    assert response.status == 204
    assert response.header("access-control-allow-origin") is None
    async with running_gateway(pg, fake.base_url) as plain:  # CORS not configured at all
        response = await exchange(plain.url, preflight(ORIGIN))
    assert response.status == 204
    assert response.header("access-control-allow-origin") is None
    assert fake.calls == []


async def test_answers_to_a_listed_origin_carry_cors_headers(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, headers={"Origin": ORIGIN}) as c:
        ok = await c.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": []},
            headers={"X-Majordomo-Key": gateway.key, "X-Fake-Cors": "1"},
        )
        refused = await c.post("/v1/chat/completions", json={})  # no key: 401
        other = await c.get("/health", headers={"Origin": "https://evil.example"})
    for response in (ok, refused):
        assert response.headers.get_list("access-control-allow-origin") == [ORIGIN]
        assert response.headers["access-control-expose-headers"] == "*"
    assert refused.status_code == 401
    assert "access-control-allow-origin" not in other.headers


def test_origins_are_a_list_in_yaml_or_comma_separated_in_the_environment() -> None:
    assert load_settings({"cors": {"allowed_origins": [ORIGIN]}}).cors.allowed_origins == (ORIGIN,)
    env = {"MAJORDOMO_CORS_ALLOWED_ORIGINS": f"{ORIGIN}, http://localhost:3000"}
    assert load_settings({}, env).cors.allowed_origins == (ORIGIN, "http://localhost:3000")
    with pytest.raises(Exception, match="expected origins such as"):
        load_settings({"cors": {"allowed_origins": ["https://app.example.com/path"]}})
