"""Test-side access to PostgreSQL: create/drop databases and read what the gateway wrote.

The gateway's own `db.Database` is what is under test, so checks go through a separate,
plain asyncpg connection run on a private asyncio loop in a worker thread: trio tests call the
`a*` methods, sync code the plain ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import trio

from majordomo.config import PostgresSettings
from majordomo.embedded import start_embedded


def settings_from_dsn(dsn: str) -> PostgresSettings:
    parts = urlsplit(dsn)
    return PostgresSettings(
        host=unquote(parts.hostname or "localhost"),
        port=parts.port or 5432,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        database="postgres",
        sslmode="disable",
    )


def embedded_server_settings(data_dir: Path) -> PostgresSettings:
    return dataclasses.replace(
        start_embedded(data_dir, PostgresSettings()), database="postgres", max_conns=5
    )


def env_for(settings: PostgresSettings) -> dict[str, str]:
    """Environment variables that point a `majordomo` process at `settings`."""
    return {
        "MAJORDOMO_STORAGE_POSTGRES_HOST": settings.host,
        "MAJORDOMO_STORAGE_POSTGRES_PORT": str(settings.port),
        "MAJORDOMO_STORAGE_POSTGRES_USER": settings.user,
        "MAJORDOMO_STORAGE_POSTGRES_PASSWORD": settings.password,
        "MAJORDOMO_STORAGE_POSTGRES_DATABASE": settings.database,
        "MAJORDOMO_STORAGE_POSTGRES_SSLMODE": settings.sslmode,
    }


class PgAdmin:
    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings

    def for_database(self, name: str) -> PgAdmin:
        return PgAdmin(dataclasses.replace(self.settings, database=name))

    @property
    def env(self) -> dict[str, str]:
        return env_for(self.settings)

    async def connect(self) -> asyncpg.Connection:
        """A connection of our own, on the caller's asyncio loop."""
        s = self.settings
        return await asyncpg.connect(
            host=s.host,
            port=s.port,
            user=s.user,
            password=s.password,
            database=s.database,
            ssl=s.sslmode,
        )

    async def _run(self, method: str, query: str, *args: Any) -> Any:
        conn = await self.connect()
        try:
            return await getattr(conn, method)(query, *args)
        finally:
            await conn.close()

    def run(self, method: str, query: str, *args: Any) -> Any:
        return asyncio.run(self._run(method, query, *args))

    def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return list(self.run("fetch", query, *args))

    def fetchval(self, query: str, *args: Any) -> Any:
        return self.run("fetchval", query, *args)

    def execute(self, query: str, *args: Any) -> Any:
        return self.run("execute", query, *args)

    async def afetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await trio.to_thread.run_sync(self.fetch, query, *args)

    async def afetchval(self, query: str, *args: Any) -> Any:
        return await trio.to_thread.run_sync(self.fetchval, query, *args)

    def create_database(self, name: str) -> None:
        self.execute(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
