"""The supervisor in-process: readiness follows the database, shutdown drains the log."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from majordomo.app import create_app
from majordomo.config import Settings
from majordomo.server import GatewayState, run_gateway
from tests.fakeupstream import FakeUpstream
from tests.harness import gateway_settings, running_gateway, serving
from tests.netcut import PgRelay
from tests.pghelpers import PgAdmin
from tests.poll import wait_until
from tests.samples import a_record


def settings_in(tmp_path: Path) -> Settings:
    return gateway_settings(str(tmp_path), overrides={"logging": {"drain_timeout": "60s"}})


async def poll(url: str, status: int, client: httpx.AsyncClient) -> httpx.Response:
    """GET `url` until it answers `status` (the readiness probe is eventually consistent)."""
    response: httpx.Response | None = None

    async def answered() -> bool:
        nonlocal response
        response = await client.get(url)
        return response.status_code == status

    # The probe's database check times out after a few seconds; a few of those at most.
    await wait_until(answered, deadline=20, what=f"{url} answering {status}", every=0.05)
    assert response is not None
    return response


async def test_health_and_readiness_follow_the_database(pg: PgAdmin, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        async with (
            serving(settings_in(tmp_path), relay.settings) as state,
            httpx.AsyncClient(base_url=state.bound_urls[0]) as client,
        ):
            health = await client.get("/health")
            assert (health.status_code, health.text) == (200, "ok")
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ok"})

            relay.cut()
            down = await poll("/readyz", 503, client)
            assert down.json()["status"] == "error"
            assert "cannot reach database" in down.json()["error"]
            assert (await client.get("/health")).status_code == 200  # liveness

            relay.restore()
            assert (await poll("/readyz", 200, client)).json() == {"status": "ok"}
        nursery.cancel_scope.cancel()  # the relay


async def test_records_queued_at_shutdown_survive_a_database_outage_and_a_restart(
    pg: PgAdmin, tmp_path: Path
) -> None:
    """Shutdown with the database away: the queue goes to the spool, the next start writes it."""
    count = 300
    settings = settings_in(tmp_path)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        async with serving(settings, relay.settings, stop=stop) as state:
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
        spooled = tmp_path / "pending.jsonl"
        assert len(spooled.read_bytes().splitlines()) == count
        nursery.cancel_scope.cancel()

    # The next start, with the database back, replays the spool before anything else.
    async with serving(settings, pg.settings):
        pass
    rows = await pg.afetch("SELECT input_tokens FROM llm_requests")
    assert sorted(r["input_tokens"] for r in rows) == list(range(count))
    assert not [p for p in await trio.Path(tmp_path).iterdir() if p.suffix == ".jsonl"]


async def test_background_tasks_are_cancelled_after_the_writer_drains(
    pg: PgAdmin, tmp_path: Path
) -> None:
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

    async with serving(settings_in(tmp_path), pg.settings, background_tasks=[helper]):
        pass
    assert events == ["helper stopped after the log channel closed"]


async def test_start_up_waits_for_a_database_that_comes_up_late(
    pg: PgAdmin, tmp_path: Path
) -> None:
    stop, started = trio.Event(), trio.Event()
    settings = settings_in(tmp_path)
    async with trio.open_nursery() as nursery:
        relay: PgRelay = await nursery.start(PgRelay(pg.settings).serve)
        relay.cut()
        async with trio.open_nursery() as gateways:

            async def start_gateway() -> None:
                await gateways.start(
                    partial(run_gateway, settings, relay.settings, shutdown_trigger=stop.wait)
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
