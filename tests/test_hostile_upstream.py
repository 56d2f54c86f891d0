"""Upstreams that misbehave: bounded memory, bytes relayed untouched, and the row says why
usage is missing."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path

import httpx
import trio

from tests.gateway import start_gateway
from tests.harness import create_key, running_gateway
from tests.hostile import Answer, HostileUpstream, chunked, gzip_bomb
from tests.pghelpers import PgAdmin

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
MIB = 1024 * 1024


def no_line_ends(size: int) -> Iterable[bytes]:
    yield b"data: "
    for _ in range(size // (64 * 1024)):
        yield b"x" * (64 * 1024)


def sse_head(extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n" + extra + b"\r\n"
    )


@functools.cache
def bomb(expanded: int) -> bytes:
    return gzip_bomb(expanded)


async def hostile(nursery: trio.Nursery, answer: Answer) -> HostileUpstream:
    upstream: HostileUpstream = await nursery.start(HostileUpstream(answer).serve)
    return upstream


async def test_a_stream_without_line_ends_is_relayed_whole_and_noted_on_the_row(
    pg: PgAdmin, nursery: trio.Nursery
) -> None:
    sent = b"".join(no_line_ends(8 * MIB))
    upstream = await hostile(nursery, lambda _: (sse_head(), chunked(no_line_ends(8 * MIB))))
    settings = {"providers": {"max_event_size": "1MiB"}}
    async with (
        running_gateway(pg, upstream.base_url, settings=settings) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c,
    ):
        # A chat stream: the gateway would hold events back to hide the injected usage chunk.
        async with c.stream("POST", "/v1/chat/completions", json=CHAT) as response:
            received = b"".join([chunk async for chunk in response.aiter_raw()])
        (row,) = await gw.rows(1)
    assert received == sent
    assert row["status_code"] == 200
    assert row["usage_error"] == (
        "one event of the response exceeded 1048576 bytes (providers.max_event_size); "
        "usage not read"
    )


async def test_a_gzip_bomb_is_relayed_compressed_and_decompressed_no_further_than_the_limit(
    pg: PgAdmin, nursery: trio.Nursery
) -> None:
    body = bomb(128 * MIB)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    upstream = await hostile(nursery, lambda _: (head, [body]))
    settings = {"providers": {"max_decompressed_size": "4MiB"}}
    async with (
        running_gateway(pg, upstream.base_url, settings=settings) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c,
    ):
        async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": False}) as r:
            received = b"".join([chunk async for chunk in r.aiter_raw()])
        (row,) = await gw.rows(1)
    assert received == body
    assert row["usage_error"] == (
        "the response decompresses to more than 4194304 bytes "
        "(providers.max_decompressed_size); usage not read"
    )


async def test_a_body_that_does_not_decompress_is_noted_not_silently_unread(
    pg: PgAdmin, nursery: trio.Nursery
) -> None:
    body = b"\x1f\x8b\x08\x00 certainly not deflate data"
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    )
    upstream = await hostile(nursery, lambda _: (head, [body]))
    async with (
        running_gateway(pg, upstream.base_url) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c,
    ):
        async with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": False}) as r:
            assert b"".join([chunk async for chunk in r.aiter_raw()]) == body
        (row,) = await gw.rows(1)
    assert re.fullmatch(
        r"the gzip response does not decode \(.+\); usage not read", row["usage_error"]
    )


async def test_a_plain_body_over_the_limit_is_relayed_and_noted(
    pg: PgAdmin, nursery: trio.Nursery
) -> None:
    body = b'{"usage": {"prompt_tokens": 1}, "pad": "' + b"y" * (2 * MIB) + b'"}'
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(
        body
    )
    upstream = await hostile(nursery, lambda _: (head, [body]))
    settings = {"providers": {"max_event_size": "1MiB"}}
    async with (
        running_gateway(pg, upstream.base_url, settings=settings) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c,
    ):
        response = await c.post("/v1/chat/completions", json={**CHAT, "stream": False})
        (row,) = await gw.rows(1)
    assert response.content == body
    assert row["usage_error"] == (
        "the response body exceeded 1048576 bytes (providers.max_event_size); usage not read"
    )


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return kib / 1024


async def test_hostile_streams_do_not_grow_the_gateways_memory(
    pg: PgAdmin, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Measured in a real `majordomo serve` process with its default limits."""
    bomb_body = bomb(512 * MIB)

    def answer(request: bytes) -> tuple[bytes, Iterable[bytes]]:
        if b"x-hostile: bomb" in request.lower():
            # A streamed gzip bomb: each chunk expands a thousandfold.
            pieces = [bomb_body[i : i + 65536] for i in range(0, len(bomb_body), 65536)]
            return sse_head(b"content-encoding: gzip\r\n"), chunked(pieces)
        if b"x-hostile: lines" in request.lower():
            return sse_head(), chunked(no_line_ends(200 * MIB))
        ok = b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[]}\n\n'
        return sse_head(), chunked([ok, b"data: [DONE]\n\n"])

    upstream = await hostile(nursery, answer)
    env = {**pg.env, "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": upstream.base_url}
    gateway = await start_gateway(nursery, env=env, cwd=tmp_path)
    key, _ = await trio.to_thread.run_sync(create_key, pg)
    pid = gateway.process.pid
    async with httpx.AsyncClient(
        base_url=gateway.url, headers={"X-Majordomo-Key": key}, timeout=120
    ) as c:
        for _ in range(3):  # warm: imports, pools, first rows written
            await c.post("/v1/chat/completions", json=CHAT)
        before = peak_rss_mib(pid)
        for kind in ("lines", "bomb"):
            async with c.stream(
                "POST", "/v1/chat/completions", json=CHAT, headers={"X-Hostile": kind}
            ) as response:
                relayed = 0
                async for chunk in response.aiter_raw():
                    relayed += len(chunk)
            assert relayed > 0
        after = peak_rss_mib(pid)
    assert await gateway.terminate() == 0
    # Before the bounds: +170 MB for the stream without line ends, +500 MB for the bomb.
    # Now: one max_event_size (16 MiB) held at most, plus allocator slack.
    assert after - before < 64, (before, after)
