"""What the proxy does at its edges: routing, hygiene, limits, failures, disconnects, keys."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, cast

import httpx
import pytest
import trio

from tests.fakeupstream import FakeUpstream
from tests.harness import Gateway, create_key, running_gateway
from tests.netcut import PgRelay
from tests.pghelpers import PgAdmin
from tests.poll import wait_until

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def gateway(pg: PgAdmin, fake: FakeUpstream) -> AsyncIterator[Gateway]:
    async with running_gateway(pg, fake.base_url) as gw:
        yield gw


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=gateway.url,
        headers={"X-Majordomo-Key": gateway.key, "Authorization": "Bearer sk-test"},
        timeout=30,
    ) as c:
        yield c


def error_of(response: httpx.Response) -> str:
    """The message of an error body in any of the three shapes."""
    body = response.json()
    return str(body["error"]["message"])


# ----------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("path", "provider"),
    [
        ("/v1/chat/completions", "openai"),
        ("/v1/messages", "anthropic"),
        ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini"),
    ],
)
async def test_unknown_key_is_refused_in_the_providers_format(
    client: httpx.AsyncClient, fake: FakeUpstream, path: str, provider: str
) -> None:
    response = await client.post(path, json=CHAT, headers={"X-Majordomo-Key": "mdm_sk_" + "A" * 43})
    assert response.status_code == 401
    body = response.json()
    if provider == "anthropic":
        assert body["type"] == "error"
    if provider == "gemini":
        assert body["error"]["status"] == "UNAUTHENTICATED"
    assert body["error"]["message"].startswith("unknown Majordomo key; create one with")
    assert fake.calls == []  # never reached the provider


async def test_unknown_path_is_404_naming_it(client: httpx.AsyncClient, fake: FakeUpstream) -> None:
    response = await client.get("/v2/whatever")
    assert response.status_code == 404
    assert error_of(response).startswith("no provider serves /v2/whatever")
    assert fake.calls == []


async def test_provider_header_overrides_and_rejects_unknown_names(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Gateway
) -> None:
    bad = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"X-Majordomo-Provider": "mistral"}
    )
    assert bad.status_code == 400
    assert error_of(bad) == (
        "X-Majordomo-Provider 'mistral' is not a provider; use one of openai, anthropic, gemini, azure, bedrock, gemini-openai, anthropic-openai"
    )
    forced = await client.post(
        "/v1/messages",
        json={"model": "claude-x", "max_tokens": 5, "messages": CHAT["messages"]},
        headers={"X-Majordomo-Provider": "anthropic"},
    )
    assert forced.status_code == 200
    (row,) = await gateway.rows(1)
    assert row["provider"] == "anthropic"


# ----------------------------------------------------------------------------- hygiene


async def test_upstream_sees_the_request_byte_for_byte_minus_gateway_headers(
    client: httpx.AsyncClient, fake: FakeUpstream
) -> None:
    body = b'{"model": "gpt-4o-mini",  "messages": [{"role":"user","content":"hi \\u00e9"}]}'
    response = await client.post(
        "/v1/chat/completions?api-version=2024-01-01&x=%2F",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Majordomo-User-Id": "u1",
            "X-Majordomo-Provider-Alias": "team-a",
            "OpenAI-Organization": "org-1",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "drop me",
            "Accept-Encoding": "gzip, br",
        },
    )
    assert response.status_code == 200
    (call,) = fake.calls
    assert call.body == body
    assert (call.path, call.query) == ("/v1/chat/completions", "api-version=2024-01-01&x=%2F")
    names = [name for name, _ in call.headers]
    assert not [n for n in names if n.startswith("x-majordomo-")]
    assert "x-hop" not in names
    assert call.header("authorization") == "Bearer sk-test"
    assert call.header("openai-organization") == "org-1"
    assert call.header("accept-encoding") == "identity"
    assert call.header("host") == fake.base_url.removeprefix("http://")
    assert call.header("content-length") == str(len(body))
    assert call.header("user-agent") == response.request.headers["user-agent"]  # not httpx's own


async def test_response_headers_carry_request_id_and_overhead(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    plain = await client.post("/v1/chat/completions", json=CHAT)
    streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    rows = await gateway.rows(2)
    assert [plain.headers["x-request-id"], streamed.headers["x-request-id"]] == [
        str(r["id"]) for r in rows
    ]
    for response in (plain, streamed):
        assert 0 <= float(response.headers["x-majordomo-overhead-ms"]) < 10_000
    # A body passed through unchanged keeps its length; the provider's own request id moves.
    assert plain.headers["content-length"] == str(len(plain.content))
    assert streamed.headers["x-upstream-request-id"] == "req_fake"


async def test_base_url_may_carry_a_path_prefix(pg: PgAdmin, fake: FakeUpstream) -> None:
    async with running_gateway(pg, fake.base_url + "/proxy/openai") as gw, httpx.AsyncClient() as c:
        await c.post(
            gw.url + "/v1/chat/completions", json=CHAT, headers={"X-Majordomo-Key": gw.key}
        )
    assert fake.calls[0].path == "/proxy/openai/v1/chat/completions"


async def test_a_compressed_upstream_answer_is_relayed_and_still_counted(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Gateway
) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Fake-Gzip": "1"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["choices"][0]["message"]["content"] == fake.calls[0].text
    (row,) = await gateway.rows(1)
    assert fake.calls[0].usage is not None
    assert row["input_tokens"] == fake.calls[0].usage.input_tokens


# ----------------------------------------------------------------------------- limits


async def test_oversized_body_is_413_before_forwarding(pg: PgAdmin, fake: FakeUpstream) -> None:
    async with (
        running_gateway(pg, fake.base_url, settings={"server": {"max_request_body": "1KiB"}}) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c,
    ):
        response = await c.post("/v1/chat/completions", content=b"x" * 2048)
        assert response.status_code == 413
        assert "over this gateway's limit of 1024 bytes (server.max_request_body)" in error_of(
            response
        )

        async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted as it comes
            for _ in range(4):
                yield b"y" * 512

        response = await c.post("/v1/chat/completions", content=chunked())
        assert response.status_code == 413
    assert fake.calls == []


async def test_malformed_json_is_forwarded_and_recorded_as_unknown_model(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Gateway
) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400  # the provider's answer
    assert fake.calls[0].body == b"{not json"
    (row,) = await gateway.rows(1)
    assert (row["model"], row["status_code"]) == ("unknown", 400)


# ----------------------------------------------------------------------------- streaming


def raw_chunks(response: httpx.Response) -> AsyncGenerator[bytes]:
    """The body as it arrives; httpx's iterator is a generator, typed as a plain iterator."""
    return cast("AsyncGenerator[bytes]", response.aiter_raw())


async def test_first_chunk_arrives_before_the_upstream_has_finished(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Gateway
) -> None:
    async with (
        client.stream(
            "POST",
            "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"X-Fake-Hold": "1"},
        ) as response,
        aclosing(raw_chunks(response)) as chunks,
    ):
        with trio.fail_after(10):
            first = await chunks.__anext__()
        assert first.startswith(b"data: ")
        assert not fake.calls[0].finished  # the upstream is still holding the rest
        fake.release.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest.endswith(b"data: [DONE]\n\n")
    assert b'"usage":{' not in first + rest  # the injected usage chunk stays hidden
    (row,) = await gateway.rows(1)
    assert row["status_code"] == 200
    assert row["time_to_first_byte_ms"] <= row["response_time_ms"]


async def test_client_disconnect_mid_stream_is_recorded_and_stops_the_upstream(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Gateway
) -> None:
    async with (
        client.stream(
            "POST",
            "/v1/messages",
            json={
                "model": "claude-x",
                "max_tokens": 9,
                "messages": CHAT["messages"],
                "stream": True,
            },
            headers={"X-Fake-Hold": "1"},
        ) as response,
        aclosing(raw_chunks(response)) as chunks,
    ):
        async for _chunk in chunks:
            break  # got the first event; now hang up while the upstream holds the rest
    (row,) = await gateway.rows(1)
    assert row["status_code"] == 499
    assert row["error_message"] == "client disconnected before the response was complete"
    assert row["streamed"] is True
    assert row["input_tokens"] > 0  # message_start's usage was seen before the hang-up
    with trio.fail_after(10):
        await fake.calls[0].ended.wait()
    assert fake.calls[0].disconnected  # the gateway closed the upstream request too


# ----------------------------------------------------------------------------- failures


async def test_unreachable_upstream_is_502_and_logged(pg: PgAdmin) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    async with (
        running_gateway(pg, f"http://127.0.0.1:{port}") as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c,
    ):
        response = await c.post("/v1/messages", json={"model": "claude-x", "max_tokens": 1})
        assert response.status_code == 502
        assert response.json()["type"] == "error"
        assert error_of(response).startswith("cannot reach anthropic: ")
        (row,) = await gw.rows(1)
    assert (row["status_code"], row["model"]) == (502, "claude-x")
    assert row["error_message"].startswith("cannot reach anthropic")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"X-Fake-Delay": "3"}, "openai did not answer in time"),
        ({"X-Fake-Stall": "3"}, "openai went silent for more than 0.3s mid-response"),
    ],
)
async def test_slow_upstream_is_504_and_logged(
    pg: PgAdmin, fake: FakeUpstream, header: dict[str, str], expected: str
) -> None:
    async with (
        running_gateway(pg, fake.base_url, settings={"providers": {"idle_timeout": "0.3s"}}) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key, **header}) as c,
    ):
        if "X-Fake-Delay" in header:
            response = await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
            assert response.status_code == 504
            assert error_of(response).startswith(expected)
        else:
            # The stream had begun: the client sees it break off rather than end cleanly.
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post("/v1/chat/completions", json={**CHAT, "stream": True})
        (row,) = await gw.rows(1)
    assert row["status_code"] == 504
    assert row["error_message"].startswith(expected)


async def test_request_body_that_never_arrives_is_408(pg: PgAdmin, fake: FakeUpstream) -> None:
    async with running_gateway(
        pg, fake.base_url, settings={"server": {"read_timeout": "0.3s"}}
    ) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                b"X-Majordomo-Key: " + gw.key.encode() + b'\r\n\r\n{"model":'
            )
            with trio.fail_after(10):
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    answer += await stream.receive_some()
        assert answer.startswith(b"HTTP/1.1 408")
        assert b"did not arrive within 0.3s" in answer
    assert fake.calls == []


# ----------------------------------------------------------------------------- keys


async def test_revocation_takes_effect_at_once(
    client: httpx.AsyncClient, gateway: Gateway, pg: PgAdmin
) -> None:
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    # Revoke the way `majordomo keys revoke` does, from another connection.
    await pg.afetch(
        "WITH r AS (UPDATE api_keys SET is_active = false, revoked_at = now() WHERE id = $1 "
        "RETURNING key_hash) SELECT pg_notify('majordomo_keys', key_hash) FROM r",
        gateway.key_id,
    )
    response: httpx.Response | None = None

    async def refused_now() -> bool:  # a NOTIFY is asynchronous
        nonlocal response
        response = await client.post("/v1/chat/completions", json=CHAT)
        return response.status_code != 200

    # Far below the 5-minute cache TTL: the notification, not the expiry, revoked it.
    await wait_until(refused_now, deadline=5, what="the revoked key being refused")
    assert response is not None
    assert response.status_code == 401
    assert error_of(response).startswith("this Majordomo key has been revoked")


async def test_database_down_cached_keys_work_unknown_keys_get_503(
    pg: PgAdmin, fake: FakeUpstream
) -> None:
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        async with running_gateway(pg, fake.base_url, postgres=relay.settings) as gw:
            other_key, _ = await trio.to_thread.run_sync(create_key, pg)
            async with httpx.AsyncClient(base_url=gw.url) as c:
                ok = await c.post(
                    "/v1/chat/completions", json=CHAT, headers={"X-Majordomo-Key": gw.key}
                )
                assert ok.status_code == 200
                relay.cut()
                cached = await c.post(
                    "/v1/chat/completions", json=CHAT, headers={"X-Majordomo-Key": gw.key}
                )
                assert cached.status_code == 200
                unseen = await c.post(
                    "/v1/chat/completions", json=CHAT, headers={"X-Majordomo-Key": other_key}
                )
                assert unseen.status_code == 503
                assert error_of(unseen).startswith("cannot check the Majordomo key right now")
                relay.restore()
                assert (
                    await c.post(
                        "/v1/chat/completions", json=CHAT, headers={"X-Majordomo-Key": other_key}
                    )
                ).status_code == 200
            await gw.rows(3)  # the cached-key request written after the database came back
        nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------------- load


async def test_200_concurrent_mixed_requests_give_200_rows_and_no_5xx(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/messages", {"model": "claude-x", "max_tokens": 5, "messages": CHAT["messages"]}),
        (
            "/v1/messages",
            {"model": "claude-x", "max_tokens": 5, "messages": CHAT["messages"], "stream": True},
        ),
        (
            "/v1beta/models/gemini-2.5-flash:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            {"contents": [{"parts": [{"text": "x"}]}]},
        ),
    ]
    statuses: list[int] = []

    async def one(i: int) -> None:
        path, body = requests[i % len(requests)]
        response = await client.post(path, content=json.dumps(body))
        statuses.append(response.status_code)

    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits) as _, trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(one, i)
    assert statuses == [200] * 200
    rows = await gateway.rows(200)
    assert {r["status_code"] for r in rows} == {200}
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in rows)


# ----------------------------------------------------------------------------- cost


async def test_rows_are_priced_and_stream_and_plain_cost_the_same(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Gateway
) -> None:
    from decimal import Decimal

    from majordomo.pricing import PriceBook
    from majordomo.records import Usage

    await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o-2024-08-06"})
    await client.post(
        "/v1/chat/completions", json={**CHAT, "model": "gpt-4o-2024-08-06", "stream": True}
    )
    await client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model-x"})
    plain, streamed, unknown = await gateway.rows(3)
    assert fake.calls[0].usage is not None
    usage = fake.calls[0].usage
    expected = PriceBook().cost("openai", "gpt-4o-2024-08-06", usage, plain["requested_at"])
    assert expected.found
    assert expected.total_cost > 0
    for row in (plain, streamed):
        assert row["model_alias_found"] is True
        assert row["input_cost"] == expected.input_cost
        assert row["output_cost"] == expected.output_cost
        assert row["total_cost"] == expected.total_cost == row["input_cost"] + row["output_cost"]
    assert (unknown["model_alias_found"], unknown["total_cost"]) == (False, Decimal(0))
    assert Usage(unknown["input_tokens"]) != Usage()  # counted, just not priced


async def test_client_giving_up_before_the_answer_stops_the_upstream_request(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Gateway
) -> None:
    with trio.move_on_after(0.5):  # the client's own timeout, while the provider "thinks"
        await client.post("/v1/chat/completions", json=CHAT, headers={"X-Fake-Delay": "30"})
    (row,) = await gateway.rows(1)
    assert row["status_code"] == 499
    assert row["error_message"] == "client disconnected before the response was complete"
    with trio.fail_after(10):
        await fake.calls[0].ended.wait()
    assert fake.calls[0].disconnected


async def test_an_openai_shaped_call_to_another_provider_is_read_as_openai(
    client: httpx.AsyncClient, fake: FakeUpstream, gateway: Gateway
) -> None:
    """Anthropic's and Gemini's OpenAI-compatible APIs: usage is read in OpenAI's format."""
    response = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"X-Majordomo-Provider": "anthropic"}
    )
    assert response.status_code == 200
    (row,) = await gateway.rows(1)
    assert fake.calls[0].usage is not None
    assert row["provider"] == "anthropic"
    assert row["input_tokens"] == fake.calls[0].usage.input_tokens
    assert row["model"] == "gpt-4o-mini"
