"""PostgreSQL: the pool, the schema, and every query.

This is the only module that knows asyncio exists. asyncpg runs on the trio-asyncio loop that
the caller opened (`trio_asyncio.open_loop()`); each public coroutine here is a trio coroutine
that crosses over with `aio_as_trio`, so trio cancellation cancels the running query.
Driver errors are translated at this boundary: an unreachable server becomes
`DatabaseUnavailable`, anything the caller can act on becomes a `MajordomoError` with advice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import asyncpg
import trio
from trio_asyncio import aio_as_trio

from majordomo.auth import KeyStatus
from majordomo.config import PostgresSettings
from majordomo.errors import DatabaseUnavailable, MajordomoError
from majordomo.records import RequestRecord

log = logging.getLogger("majordomo.db")

# The version recorded by the last statement of schema.sql.
SCHEMA_VERSION = 1
# Any two gateways migrating at once serialise on this advisory lock ("mdm" in ASCII).
_MIGRATE_LOCK_ID = 0x6D646D
# Keys changed (revoked, renamed) are announced here so every gateway drops its cached entry.
KEYS_CHANNEL = "majordomo_keys"

# How often the notification connection checks that it is still alive, in seconds.
_LISTEN_HEALTH_INTERVAL = 15.0

# What asyncpg raises when the server is gone or the network is cut.
_UNREACHABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
)


def schema_sql() -> str:
    """The schema shipped inside the package (works from any working directory)."""
    return resources.files("majordomo").joinpath("schema.sql").read_text(encoding="utf-8")


def describe(settings: PostgresSettings) -> str:
    """Where the database is, for messages (never the password)."""
    where = settings.host if settings.host.startswith("/") else f"{settings.host}:{settings.port}"
    return f"database '{settings.database}' at {where}"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: uuid.UUID
    name: str
    description: str | None
    is_active: bool
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    request_count: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "is_active": self.is_active,
            "created_at": _iso(self.created_at),
            "revoked_at": _iso(self.revoked_at),
            "last_used_at": _iso(self.last_used_at),
            "request_count": self.request_count,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_KEY_COLUMNS = (
    "id, name, description, is_active, created_at, revoked_at, last_used_at, request_count"
)


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(**dict(row.items()))


class Database:
    """A pool of connections and the queries the gateway makes."""

    def __init__(self, pool: asyncpg.Pool, settings: PostgresSettings) -> None:
        self._pool = pool
        self._settings = settings

    async def _call(self, method: str, query: str, *args: Any) -> Any:
        try:
            return await aio_as_trio(getattr(self._pool, method))(query, *args)
        except _UNREACHABLE as exc:
            raise DatabaseUnavailable(
                f"cannot reach {describe(self._settings)}: {exc or type(exc).__name__}"
            ) from exc

    async def ping(self) -> None:
        """Raise `DatabaseUnavailable` unless the server answers a trivial query."""
        await self._call("fetchval", "SELECT 1")

    # -- schema ---------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply schema.sql under an advisory lock; return the recorded schema version."""
        try:
            return int(await aio_as_trio(self._migrate)())
        except _UNREACHABLE as exc:
            raise DatabaseUnavailable(f"cannot reach {describe(self._settings)}: {exc}") from exc

    async def _migrate(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK_ID)
            await conn.execute(schema_sql())
            version: int = await conn.fetchval("SELECT max(version) FROM majordomo_schema")
        if version > SCHEMA_VERSION:
            raise MajordomoError(
                f"{describe(self._settings)} has schema version {version}, newer than this "
                f"gateway's {SCHEMA_VERSION}; upgrade majordomo before running it against it"
            )
        return version

    async def schema_version(self) -> int | None:
        exists = await self._call("fetchval", "SELECT to_regclass('majordomo_schema') IS NOT NULL")
        if not exists:
            return None
        version = await self._call("fetchval", "SELECT max(version) FROM majordomo_schema")
        return int(version) if version is not None else None

    # -- keys -----------------------------------------------------------------------------

    async def create_key(self, key_hash: str, name: str, description: str | None) -> ApiKey:
        row = await self._call(
            "fetchrow",
            f"INSERT INTO api_keys (key_hash, name, description) VALUES ($1, $2, $3) "
            f"RETURNING {_KEY_COLUMNS}",
            key_hash,
            name,
            description,
        )
        return _api_key(row)

    async def list_keys(self) -> list[ApiKey]:
        rows = await self._call(
            "fetch", f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        )
        return [_api_key(row) for row in rows]

    async def get_key(self, key_id: uuid.UUID) -> ApiKey:
        row = await self._call(
            "fetchrow", f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id
        )
        if row is None:
            raise _unknown_key(key_id)
        return _api_key(row)

    async def update_key(
        self, key_id: uuid.UUID, *, name: str | None, description: str | None
    ) -> ApiKey:
        row = await self._call(
            "fetchrow",
            f"""
            WITH updated AS (
                UPDATE api_keys
                   SET name = coalesce($2, name), description = coalesce($3, description)
                 WHERE id = $1
             RETURNING {_KEY_COLUMNS}, key_hash
            )
            SELECT {_KEY_COLUMNS}, pg_notify('{KEYS_CHANNEL}', key_hash) AS _ FROM updated
            """,
            key_id,
            name,
            description,
        )
        if row is None:
            raise _unknown_key(key_id)
        return _api_key_without(row, "_")

    async def revoke_key(self, key_id: uuid.UUID) -> ApiKey:
        """Deactivate a key for good and tell every gateway to forget it at once."""
        row = await self._call(
            "fetchrow",
            f"""
            WITH target AS (SELECT id, is_active FROM api_keys WHERE id = $1),
            revoked AS (
                UPDATE api_keys SET is_active = false, revoked_at = now()
                 WHERE id = $1 AND is_active
             RETURNING {_KEY_COLUMNS}, key_hash
            )
            SELECT (SELECT is_active FROM target) AS was_active,
                   (SELECT pg_notify('{KEYS_CHANNEL}', key_hash) FROM revoked) AS _
            """,
            key_id,
        )
        if row["was_active"] is None:
            raise _unknown_key(key_id)
        key = await self.get_key(key_id)
        if not row["was_active"]:
            revoked = _iso(key.revoked_at) or "earlier"
            raise MajordomoError(
                f"key {key_id} is already revoked (since {revoked}); nothing to do"
            )
        return key

    async def find_key(self, key_hash: str) -> KeyStatus | None:
        """The id and state of the key with this hash, or None (the auth cache's lookup)."""
        row = await self._call(
            "fetchrow", "SELECT id, is_active FROM api_keys WHERE key_hash = $1", key_hash
        )
        return KeyStatus(row["id"], row["is_active"]) if row is not None else None

    async def listen_for_key_changes(
        self, on_change: Callable[[str | None], None], *, retry_delay: float = 1.0
    ) -> None:
        """Call `on_change(key_hash)` for every key revoked or changed, until cancelled.

        Holds one connection outside the pool, LISTENing on `KEYS_CHANNEL`. After every
        (re)connection it calls `on_change(None)`: notifications sent while it was away are
        lost, so everything cached must be checked again.
        """
        while True:
            try:
                await aio_as_trio(self._listen_once)(on_change)
            except _UNREACHABLE as exc:
                log.warning(
                    "key change notifications interrupted, reconnecting in %gs: %s",
                    retry_delay,
                    exc or type(exc).__name__,
                )
            await trio.sleep(retry_delay)

    async def _listen_once(self, on_change: Callable[[str | None], None]) -> None:
        conn = await asyncpg.connect(**_connect_kwargs(self._settings, self._settings.database))
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(
                KEYS_CHANNEL, lambda _conn, _pid, _channel, payload: on_change(payload)
            )
            on_change(None)
            while not lost.is_set():
                # A silent network can hide a dead connection: ask now and then.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(lost.wait(), _LISTEN_HEALTH_INTERVAL)
                    continue
                await conn.fetchval("SELECT 1", timeout=_LISTEN_HEALTH_INTERVAL)
            raise ConnectionResetError("the notification connection was closed")
        finally:
            with contextlib.suppress(*_UNREACHABLE):
                await conn.close(timeout=1)

    # -- usage records --------------------------------------------------------------------

    async def insert_records(self, records: Sequence[RequestRecord]) -> None:
        """Insert finished requests; ids already present are skipped, so replays are safe."""
        await self._call(
            "executemany",
            """
            INSERT INTO llm_requests (
                id, majordomo_api_key_id, provider_api_key_hash, provider_api_key_alias,
                provider, model, request_path, request_method, requested_at, responded_at,
                response_time_ms, time_to_first_byte_ms, streamed, input_tokens, output_tokens,
                cached_tokens, cache_creation_tokens, reasoning_tokens, status_code,
                error_message, raw_metadata
            ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                      $17, $18, $19, $20, $21::jsonb)
            ON CONFLICT (id) DO NOTHING
            """,
            [_record_row(r) for r in records],
        )


def _record_row(r: RequestRecord) -> tuple[Any, ...]:
    u = r.usage
    return (
        r.id,
        r.api_key_id,
        r.provider_api_key_hash,
        r.provider_api_key_alias,
        r.provider,
        r.model,
        r.request_path,
        r.request_method,
        r.requested_at,
        r.responded_at,
        r.response_time_ms,
        r.time_to_first_byte_ms,
        r.streamed,
        u.input_tokens,
        u.output_tokens,
        u.cached_tokens,
        u.cache_creation_tokens,
        u.reasoning_tokens,
        r.status_code,
        r.error_message,
        json.dumps(r.raw_metadata),
    )


def _api_key_without(row: asyncpg.Record, *drop: str) -> ApiKey:
    return ApiKey(**{k: v for k, v in row.items() if k not in drop})


def _unknown_key(key_id: uuid.UUID) -> MajordomoError:
    return MajordomoError(f"no key with id {key_id}; 'majordomo keys list' shows the ids")


# -- opening ------------------------------------------------------------------------------


def _connect_kwargs(settings: PostgresSettings, database: str) -> dict[str, Any]:
    # Parameters are passed one by one, never as a formatted DSN: a password may hold any of
    # `@ / ? : #` and must reach the server exactly as configured.
    return {
        "host": settings.host or "localhost",
        "port": settings.port,
        "user": settings.user,
        "password": settings.password,
        "database": database,
        "ssl": settings.sslmode,
        "timeout": settings.connect_timeout,
    }


async def _create_database(settings: PostgresSettings) -> None:
    conn = await asyncpg.connect(**_connect_kwargs(settings, "postgres"))
    try:
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", settings.database
        )
        if not exists:
            ident = '"' + settings.database.replace('"', '""') + '"'
            # Another process may create it meanwhile; that is as good.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f"CREATE DATABASE {ident}")
    finally:
        await conn.close()


@asynccontextmanager
async def open_database(
    settings: PostgresSettings, *, min_size: int = 1, create_database: bool = False
) -> AsyncIterator[Database]:
    """Open a pool (inside a running `trio_asyncio.open_loop()`), close it on exit.

    `create_database` creates `settings.database` first when it is missing (the embedded
    server starts with only `postgres`); an external server's database is the operator's.
    """
    where = describe(settings)
    try:
        if create_database:
            await aio_as_trio(_create_database)(settings)
        pool = await aio_as_trio(asyncpg.create_pool)(
            **_connect_kwargs(settings, settings.database),
            min_size=min(min_size, settings.max_conns),
            max_size=settings.max_conns,
        )
    except asyncpg.InvalidCatalogNameError:
        raise MajordomoError(
            f"{where} does not exist; create it (CREATE DATABASE {settings.database}) "
            "or set storage.postgres.database"
        ) from None
    except asyncpg.InvalidPasswordError:
        raise MajordomoError(
            f"PostgreSQL refused user '{settings.user}' for {where}: wrong password; "
            "check storage.postgres.user and storage.postgres.password"
        ) from None
    except _UNREACHABLE as exc:
        raise DatabaseUnavailable(
            f"cannot reach {where}: {exc or type(exc).__name__}; is PostgreSQL running? "
            "check storage.postgres.host and storage.postgres.port"
        ) from None
    try:
        yield Database(pool, settings)
    finally:
        await aio_as_trio(pool.close)()
