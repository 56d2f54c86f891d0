"""Every forwarded request leaves one row: odd text, conflicting framing, a stuck database,
and a kill -9 (whose loss is bounded in time)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import httpx
import trio

from majordomo.config import PostgresSettings
from tests.fakeupstream import FakeUpstream
from tests.gateway import start_gateway
from tests.harness import create_key, running_gateway
from tests.hostile import HostileUpstream, chunked
from tests.pghelpers import PgAdmin
from tests.poll import wait_until
from tests.rawhttp import exchange

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def post(target: str, key: str, *, extra: str = "", body: bytes = CHAT) -> bytes:
    return (
        f"POST {target} HTTP/1.1\r\nHost: gw\r\nX-Majordomo-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


# ----------------------------------------------------------------------------- odd text


async def test_a_nul_in_the_path_still_leaves_a_row(pg: PgAdmin, fake: FakeUpstream) -> None:
    async with running_gateway(pg, fake.base_url) as gw:
        response = await exchange(gw.url, post("/v1/chat%00/completions", gw.key))
        (row,) = await gw.rows(1)
    assert response.status == 404  # the provider's answer for that path
    assert row["status_code"] == 404
    assert row["request_path"] == "/v1/chat\ufffd/completions"


async def test_nul_and_lone_surrogates_echoed_by_the_provider_still_leave_a_row(
    pg: PgAdmin, nursery: trio.Nursery
) -> None:
    body = (
        b'{"id":"x","object":"chat.completion","model":"gpt\\u0000-4o\\ud800",'
        b'"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}'
    )
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"

    def answer(_: bytes) -> tuple[bytes, Iterable[bytes]]:
        return head % len(body), [body]

    upstream: HostileUpstream = await nursery.start(HostileUpstream(answer).serve)
    async with running_gateway(pg, upstream.base_url) as gw:
        request = post("/v1/chat/completions", gw.key, extra="X-Majordomo-Note: a\\u0000b\r\n")
        response = await exchange(gw.url, request)
        (row,) = await gw.rows(1)
    assert response.status == 200
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("gpt\ufffd-4o\ufffd", 7, 3)


# ----------------------------------------------------------------------------- framing


async def test_an_upstream_framing_by_length_and_chunks_is_relayed_correctly(
    pg: PgAdmin, nursery: trio.Nursery
) -> None:
    body = b'{"id":"x","model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":2}}'
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )

    def answer(_: bytes) -> tuple[bytes, Iterable[bytes]]:
        return head, chunked([body[:20], body[20:]])

    upstream: HostileUpstream = await nursery.start(HostileUpstream(answer).serve)
    async with (
        running_gateway(pg, upstream.base_url) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c,
    ):
        response = await c.post("/v1/chat/completions", content=CHAT)
        (row,) = await gw.rows(1)
    assert response.content == body  # not cut at the 5 bytes the bogus length claimed
    assert response.headers.get("content-length") in (None, str(len(body)))
    assert (row["status_code"], row["input_tokens"]) == (200, 2)


async def test_a_request_framed_both_ways_gets_its_connection_closed(
    pg: PgAdmin, fake: FakeUpstream
) -> None:
    async with running_gateway(pg, fake.base_url) as gw:
        chunked_body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT), CHAT)
        request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Majordomo-Key: {gw.key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 5\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        ).encode() + chunked_body
        response = await exchange(gw.url, request, close_wait=10)
    assert response.status == 200
    assert response.header("connection") == "close"
    assert response.closed
    assert fake.calls[0].body == CHAT  # the chunks were the body, not the 5 bytes


# ----------------------------------------------------------------------------- a stuck database


def hold_key_row_lock(
    settings: PostgresSettings, key_id: uuid.UUID, locked: threading.Event, release: threading.Event
) -> None:
    """In a thread: lock the key's api_keys row (the writer's counter update then waits)."""

    async def main() -> None:
        conn = await PgAdmin(settings).connect()
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", key_id)
                locked.set()
                await asyncio.get_running_loop().run_in_executor(None, release.wait)
        finally:
            await conn.close()

    asyncio.run(main())


async def test_a_write_stuck_behind_a_lock_goes_to_the_spool_in_time(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    settings = {"logging": {"write_timeout": "0.5s"}}
    locked, release = threading.Event(), threading.Event()
    async with (
        running_gateway(pg, fake.base_url, settings=settings, spool_dir=str(tmp_path)) as gw,
        trio.open_nursery() as nursery,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c,
    ):
        nursery.start_soon(
            trio.to_thread.run_sync, hold_key_row_lock, pg.settings, gw.key_id, locked, release
        )
        await trio.to_thread.run_sync(locked.wait)
        try:
            for _ in range(20):
                assert (await c.post("/v1/chat/completions", content=CHAT)).status_code == 200
            # Spooled once the write deadline passed, while the lock is still held.
            await wait_until(
                lambda: gw.state.metrics.records_spooled >= 20,
                deadline=30,
                what="20 records spooled past logging.write_timeout",
            )
        finally:
            release.set()
        rows = await gw.rows(20, deadline=60)  # written once the lock is gone
    assert len({r["id"] for r in rows}) == 20


async def test_kill_9_loses_only_what_was_answered_in_the_last_flush_and_write_timeout(
    pg: PgAdmin, fake: FakeUpstream, tmp_path: Path
) -> None:
    """Under load, with the writer stuck behind a lock, then kill -9 and a restart: every
    request answered more than one flush interval plus one write timeout before the kill has
    its row (docs/durability.md states this window)."""
    write_timeout = 1.0
    env = {
        **pg.env,
        "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": fake.base_url,
        "MAJORDOMO_LOGGING_WRITE_TIMEOUT": f"{write_timeout}s",
        "MAJORDOMO_LOGGING_SPOOL_DIR": str(tmp_path / "spool"),
    }
    answered: list[tuple[float, str]] = []
    async with trio.open_nursery() as nursery:
        gateway = await start_gateway(nursery, env=env, cwd=tmp_path)
        key, key_id = await trio.to_thread.run_sync(create_key, pg)
        locked, release = threading.Event(), threading.Event()
        nursery.start_soon(
            trio.to_thread.run_sync, hold_key_row_lock, pg.settings, key_id, locked, release
        )
        await trio.to_thread.run_sync(locked.wait)
        stop_at = trio.current_time() + 4

        async def load(client: httpx.AsyncClient) -> None:
            while trio.current_time() < stop_at:
                response = await client.post("/v1/chat/completions", content=CHAT)
                assert response.status_code == 200
                answered.append((time.monotonic(), response.headers["x-request-id"]))

        async with (
            httpx.AsyncClient(base_url=gateway.url, headers={"X-Majordomo-Key": key}) as client,
            trio.open_nursery() as clients,
        ):
            for _ in range(8):
                clients.start_soon(load, client)
        killed_at = time.monotonic()
        os.kill(gateway.process.pid, signal.SIGKILL)
        await gateway.process.wait()
        release.set()
        # The next start replays what the killed one spooled.
        restarted = await start_gateway(nursery, env=env, cwd=tmp_path)
        spool = tmp_path / "spool"
        await wait_until(
            lambda: not [p for p in spool.glob("*.jsonl") if p.name != "quarantine.jsonl"],
            deadline=60,
            what="the spool replayed",
        )
        assert await restarted.terminate() == 0
    ids = {str(r["id"]) for r in await pg.afetch("SELECT id FROM llm_requests")}
    lost = [at for at, request_id in answered if request_id not in ids]
    window = 0.2 + write_timeout  # MAX_DELAY + logging.write_timeout
    assert len(answered) > 100
    assert all(killed_at - at <= window + 0.5 for at in lost), (
        f"lost {len(lost)} of {len(answered)}; oldest answered "
        f"{max(killed_at - at for at in lost):.2f}s before the kill"
    )
