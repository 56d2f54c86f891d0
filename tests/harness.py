"""An in-process gateway wired to a fake upstream and a fresh database, for end-to-end tests."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from majordomo.auth import generate_key, hash_key
from majordomo.config import PostgresSettings, load_settings
from majordomo.server import GatewayState, run_gateway
from tests.pghelpers import PgAdmin


@dataclass
class Gateway:
    url: str
    state: GatewayState
    key: str
    key_id: uuid.UUID
    pg: PgAdmin

    async def rows(self, count: int, deadline: float = 10) -> list[Any]:
        """Poll until `count` usage rows exist (the writer is asynchronous); return them."""
        with trio.fail_after(deadline):
            while True:
                rows = await self.pg.afetch("SELECT * FROM llm_requests ORDER BY requested_at")
                if len(rows) >= count:
                    assert len(rows) == count, f"expected {count} rows, found {len(rows)}"
                    return rows
                await trio.sleep(0.02)

    async def row(self, request_id: str | uuid.UUID) -> Any:
        with trio.fail_after(10):
            while True:
                rows = await self.pg.afetch(
                    "SELECT * FROM llm_requests WHERE id = $1", uuid.UUID(str(request_id))
                )
                if rows:
                    return rows[0]
                await trio.sleep(0.02)


def create_key(pg: PgAdmin, name: str = "test", active: bool = True) -> tuple[str, uuid.UUID]:
    key = generate_key()
    key_id = pg.fetchval(
        "INSERT INTO api_keys (key_hash, name, is_active) VALUES ($1, $2, $3) RETURNING id",
        hash_key(key),
        name,
        active,
    )
    return key, key_id


@asynccontextmanager
async def running_gateway(
    pg: PgAdmin,
    upstream_url: str,
    *,
    settings: dict[str, Any] | None = None,
    postgres: PostgresSettings | None = None,
    spool_dir: str | None = None,
) -> AsyncIterator[Gateway]:
    """Serve the gateway on a free loopback port until the block ends, then shut it down."""
    spool_dir = spool_dir or tempfile.mkdtemp(prefix="mdm-spool-")
    values: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "logging": {"spool_dir": spool_dir},
        "pricing": {"remote_url": ""},  # tests never reach the internet: bundled prices
        "providers": {
            "openai": {"base_url": upstream_url},
            "anthropic": {"base_url": upstream_url},
            "gemini": {"base_url": upstream_url},
        },
    }
    for section, overrides in (settings or {}).items():
        values.setdefault(section, {}).update(overrides)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        state: GatewayState = await nursery.start(
            lambda task_status: run_gateway(
                load_settings(values),
                postgres or pg.settings,
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        key, key_id = await trio.to_thread.run_sync(create_key, pg)
        try:
            yield Gateway(state.bound_urls[0], state, key, key_id, pg)
        finally:
            stop.set()
