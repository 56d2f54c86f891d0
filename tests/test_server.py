"""The supervisor in-process: readiness follows the database, shutdown drains the log."""

from __future__ import annotations

import logging
import tempfile
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from majordomo.app import create_app
from majordomo.config import Settings, load_settings
from majordomo.server import GatewayState, run_gateway
from tests.fakeupstream import FakeUpstream
from tests.harness import running_gateway
from tests.netcut import PgRelay
from tests.pghelpers import PgAdmin
from tests.samples import a_record


def gateway_settings() -> Settings:
    return load_settings(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "logging": {"drain_timeout": "60s", "spool_dir": tempfile.mkdtemp(prefix="mdm-")},
            "pricing": {"remote_url": ""},  # no internet in tests
        }
    )


async def poll(
    url: str, status: int, client: httpx.AsyncClient, deadline: float = 20
) -> httpx.Response:
    """GET `url` until it answers `status` (the readiness probe is eventually consistent)."""
    with trio.fail_after(deadline):
        while True:
            response = await client.get(url)
            if response.status_code == status:
                return response
            await trio.sleep(0.05)


async def test_health_and_readiness_follow_the_database(pg: PgAdmin) -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        async with trio.open_nursery() as gateway:
            state: GatewayState = await gateway.start(
                lambda task_status: run_gateway(
                    gateway_settings(),
                    relay.settings,
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            base = state.bound_urls[0]
            async with httpx.AsyncClient() as client:
                health = await client.get(f"{base}/health")
                assert (health.status_code, health.text) == (200, "ok")
                ready = await client.get(f"{base}/readyz")
                assert (ready.status_code, ready.json()) == (200, {"status": "ok"})

                relay.cut()
                down = await poll(f"{base}/readyz", 503, client)
                assert down.json()["status"] == "error"
                assert "cannot reach database" in down.json()["error"]
                assert (await client.get(f"{base}/health")).status_code == 200  # liveness

                relay.restore()
                assert (await poll(f"{base}/readyz", 200, client)).json() == {"status": "ok"}
            stop.set()
        nursery.cancel_scope.cancel()  # the relay


async def test_records_queued_at_shutdown_survive_a_database_outage_and_a_restart(
    pg: PgAdmin,
) -> None:
    """Shutdown with the database away: the queue goes to the spool, the next start writes it."""
    count = 300
    settings = gateway_settings()
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        async with trio.open_nursery() as gateway:
            state: GatewayState = await gateway.start(
                lambda task_status: run_gateway(
                    settings, relay.settings, shutdown_trigger=stop.wait, task_status=task_status
                )
            )
            relay.cut()  # the writer cannot write: every record stays queued
            for n in range(count):
                state.records.send_nowait(a_record(n))
            stop.set()
            await trio.testing.wait_all_tasks_blocked()  # the supervisor has seen the trigger
            assert state.shutting_down
            # Shutdown has begun: readiness says so.
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(state)), base_url="http://gateway"
            ) as client:
                ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (
                503,
                {"status": "error", "error": "shutting down"},
            )
        # The gateway has exited: nothing reached the database, everything is on disk.
        assert await pg.afetchval("SELECT count(*) FROM llm_requests") == 0
        spooled = Path(settings.logging.spool_dir) / "pending.jsonl"
        assert len(spooled.read_bytes().splitlines()) == count
        nursery.cancel_scope.cancel()

    # The next start, with the database back, replays the spool before anything else.
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_gateway(
                settings, pg.settings, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        stop.set()
    rows = await pg.afetch("SELECT input_tokens FROM llm_requests")
    assert sorted(r["input_tokens"] for r in rows) == list(range(count))
    spool_dir = trio.Path(settings.logging.spool_dir)
    assert not [p for p in await spool_dir.iterdir() if p.suffix == ".jsonl"]


async def test_background_tasks_are_cancelled_after_the_writer_drains(pg: PgAdmin) -> None:
    events: list[str] = []

    async def helper(
        state: GatewayState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            try:
                state.records.send_nowait(a_record(0))
                events.append("helper stopped while the log channel was open")
            except trio.ClosedResourceError:
                events.append("helper stopped after the log channel closed")

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_gateway(
                gateway_settings(),
                pg.settings,
                shutdown_trigger=stop.wait,
                background_tasks=[helper],
                task_status=task_status,
            )
        )
        stop.set()
    assert events == ["helper stopped after the log channel closed"]


async def test_start_up_waits_for_a_database_that_comes_up_late(pg: PgAdmin) -> None:
    stop, started = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        relay.cut()
        async with trio.open_nursery() as gateways:

            async def start_gateway() -> None:
                await gateways.start(
                    partial(
                        run_gateway, gateway_settings(), relay.settings, shutdown_trigger=stop.wait
                    )
                )
                started.set()

            gateways.start_soon(start_gateway)
            with trio.move_on_after(1):
                await started.wait()
            assert not started.is_set()  # still waiting for the database, not crashed
            relay.restore()
            with trio.fail_after(20):
                await started.wait()
            stop.set()
        nursery.cancel_scope.cancel()  # the relay


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_access_log_can_be_turned_off(
    pg: PgAdmin, fake: FakeUpstream, caplog: pytest.LogCaptureFixture, enabled: bool
) -> None:
    caplog.set_level(logging.INFO, logger="majordomo.access")
    settings = {"logging": {"access_log": enabled}}
    async with (
        running_gateway(pg, fake.base_url, settings=settings) as gw,
        httpx.AsyncClient(base_url=gw.url, headers={"X-Majordomo-Key": gw.key}) as c,
    ):
        await c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []})
        await c.post("/v1/chat/completions", json={}, headers={"X-Majordomo-Key": ""})
        await gw.rows(1)
    lines = [r for r in caplog.records if r.name == "majordomo.access"]
    assert len(lines) == (2 if enabled else 0)
