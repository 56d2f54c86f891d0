"""The in-process gateway for end-to-end tests: one settings builder, one way to serve.

`serving` runs the supervisor until its block ends (then shuts it down and waits for the
drain); `running_gateway` adds a fake upstream's URL for every provider, a fresh key and a
spool directory that is removed afterwards unless the test passes its own."""

from __future__ import annotations

import secrets
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from majordomo.auth import generate_key, hash_key
from majordomo.config import PostgresSettings, Settings, load_settings
from majordomo.providers import PROVIDER_NAMES
from majordomo.server import BACKGROUND_TASKS, BackgroundTask, GatewayState, run_gateway
from tests.pghelpers import PgAdmin
from tests.poll import wait_until

# The key the in-process gateways seal with; the CLI in tests is given the same one.
TEST_ENCRYPTION_KEY = secrets.token_hex(32)
TEST_JWT_SECRET = secrets.token_hex(32)


def gateway_settings(
    spool_dir: str, upstream_url: str | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Settings for a gateway on a free loopback port, bundled prices, every provider at
    `upstream_url` when given; `overrides` are merged section by section."""
    values: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "logging": {"spool_dir": spool_dir},
        "pricing": {"remote_url": ""},  # tests never reach the internet: bundled prices
        # Held credentials on, as they are with the embedded database, without a key file.
        "secrets": {"encryption_key": TEST_ENCRYPTION_KEY},
        "jwt": {"secret": TEST_JWT_SECRET},
    }
    if upstream_url is not None:
        values["providers"] = {name: {"base_url": upstream_url} for name in PROVIDER_NAMES}
    for section, settings in (overrides or {}).items():
        values.setdefault(section, {}).update(settings)
    return load_settings(values)


@asynccontextmanager
async def serving(
    settings: Settings,
    postgres: PostgresSettings,
    background_tasks: Sequence[BackgroundTask] = BACKGROUND_TASKS,
    stop: trio.Event | None = None,
) -> AsyncIterator[GatewayState]:
    """Serve until the block ends (or `stop` is set); leaving the block triggers shutdown
    and waits for it to finish."""
    stop = trio.Event() if stop is None else stop
    async with trio.open_nursery() as nursery:
        state: GatewayState = await nursery.start(
            lambda task_status: run_gateway(
                settings,
                postgres,
                shutdown_trigger=stop.wait,
                background_tasks=background_tasks,
                task_status=task_status,
            )
        )
        try:
            yield state
        finally:
            stop.set()


@dataclass
class Gateway:
    url: str
    state: GatewayState
    key: str
    key_id: uuid.UUID
    pg: PgAdmin

    async def rows(self, count: int, deadline: float = 10) -> list[Any]:
        """Wait until `count` usage rows exist (the writer is asynchronous); return them."""
        rows: list[Any] = []

        async def written() -> bool:
            nonlocal rows
            rows = await self.pg.afetch("SELECT * FROM llm_requests ORDER BY requested_at")
            return len(rows) >= count

        await wait_until(written, deadline=deadline, what=f"{count} usage rows")
        assert len(rows) == count, f"expected {count} rows, found {len(rows)}"
        return rows

    async def row(self, request_id: str | uuid.UUID) -> Any:
        """Wait for the usage row of one request; return it."""
        rows: list[Any] = []

        async def written() -> bool:
            nonlocal rows
            query = "SELECT * FROM llm_requests WHERE id = $1"
            rows = await self.pg.afetch(query, uuid.UUID(str(request_id)))
            return bool(rows)

        await wait_until(written, deadline=10, what=f"the row of request {request_id}")
        return rows[0]


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
    async with AsyncExitStack() as stack:
        if spool_dir is None:
            spool_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mdm-spool-"))
        config = gateway_settings(spool_dir, upstream_url, settings)
        state = await stack.enter_async_context(serving(config, postgres or pg.settings))
        key, key_id = await trio.to_thread.run_sync(create_key, pg)
        yield Gateway(state.bound_urls[0], state, key, key_id, pg)
