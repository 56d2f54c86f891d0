"""`majordomo serve` as people run it: a child process, stopped by a signal."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.cli import majordomo
from tests.gateway import start_gateway
from tests.pghelpers import PgAdmin


async def test_serve_with_nothing_configured_uses_an_embedded_database(tmp_path: Path) -> None:
    """The README's run command: no config at all, then keys commands beside it."""
    async with trio.open_nursery() as nursery:
        gateway = await start_gateway(nursery, env={}, cwd=tmp_path)
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            health = await client.get("/health")
            assert (health.status_code, health.text) == (200, "ok")
            ready = await client.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ok"})

        created = await trio.to_thread.run_sync(
            lambda: majordomo(
                "keys", "create", "--name", "beside serve", "--json", env={}, cwd=tmp_path
            )
        )
        assert created.code == 0, created.err
        listed = await trio.to_thread.run_sync(
            lambda: majordomo("keys", "list", "--json", env={}, cwd=tmp_path)
        )
        assert [k["id"] for k in listed.json()] == [created.json()["id"]]

        assert await gateway.terminate() == 0
    messages = gateway.messages()
    embedded = [m for m in messages if m.startswith("using embedded PostgreSQL in ")]
    assert embedded == [
        f"using embedded PostgreSQL in {tmp_path / '.majordomo' / 'pgdata'} "
        "(no storage.postgres.host configured)"
    ]
    assert (tmp_path / ".majordomo" / "pgdata" / "PG_VERSION").exists()
    # Start-up is serialised by a lock beside the data directory, owned by whoever runs it
    # (not a /tmp file shared by every user, which root would leave unwritable to others).
    assert (tmp_path / ".majordomo" / ".pgserver.lock").exists()
    assert messages[-1] == "stopped"
    assert not [e for e in gateway.log if e.get("level") in ("error", "raw")], gateway.log


async def test_sigterm_stops_in_order_and_exits_zero(pg: PgAdmin, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        gateway = await start_gateway(nursery, env=pg.env, cwd=tmp_path)
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            assert (await client.get("/readyz")).status_code == 200
        assert await gateway.terminate() == 0
    messages = gateway.messages()
    assert not any(m.startswith("using embedded") for m in messages)  # a host is configured
    order = [
        "received SIGTERM, shutting down",
        "server stopped; writing queued usage records",
        "log writer stopped; every record written",
        "stopped",
    ]
    positions = [messages.index(m) for m in order]
    assert positions == sorted(positions), messages


async def test_serve_refuses_to_start_on_a_bad_setting(tmp_path: Path) -> None:
    result = await trio.to_thread.run_sync(
        lambda: majordomo("serve", env={"MAJORDOMO_LOGGING_BODY_STORAGE": "disk"}, cwd=tmp_path)
    )
    assert result.code == 1
    assert result.err.strip() == (
        "majordomo: MAJORDOMO_LOGGING_BODY_STORAGE: 'disk' is not allowed for "
        "logging.body_storage; expected one of none, postgres, s3"
    )
