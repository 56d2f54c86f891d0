"""PostgreSQL: the loop, the pool, the schema, one error translation, and the queries by table.

This is the only package that knows asyncio exists. `open_database` opens the trio-asyncio
loop that asyncpg runs on, connects (waiting for a server that is still starting, if asked),
and yields a `Database`. Every query crosses over with `aio_as_trio`, so trio cancellation
cancels the running statement, and goes through `translated`: an unreachable server becomes
`DatabaseUnavailable`; for statements that store rows, a row the server refuses for its
content becomes `RowsRefused`. Anything a person can act on is a `MajordomoError` with advice.

The queries live with their table: `db.keys` (api_keys), `db.credentials` (proxy_keys and
the held provider credentials), `db.users` (users and admin_audit), `db.metadata`
(llm_requests_metadata_keys), `db.requests` (llm_requests) and `db.reports` (reads over it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from typing import Any, TypeVar

import asyncpg
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from majordomo.config import PostgresSettings
from majordomo.db.credentials import CredentialQueries, Mapping, ProxyKey
from majordomo.db.keys import ApiKey, KeyQueries
from majordomo.db.limits import LimitQueries
from majordomo.db.metadata import MetadataKey, MetadataQueries
from majordomo.db.reports import ReportQueries
from majordomo.db.requests import RequestQueries, storable_text
from majordomo.db.users import User, UserQueries
from majordomo.errors import DatabaseUnavailable, MajordomoError, RowsRefused

__all__ = [
    "SCHEMA_VERSION",
    "ApiKey",
    "Database",
    "Mapping",
    "MetadataKey",
    "ProxyKey",
    "User",
    "describe",
    "open_database",
    "schema_sql",
    "storable_text",
]

log = logging.getLogger("majordomo.db")

T = TypeVar("T")

# The version recorded by the last statement of schema.sql.
SCHEMA_VERSION = 7
# Any two gateways migrating at once serialise on this advisory lock ("mdm" in ASCII).
_MIGRATE_LOCK_ID = 0x6D646D
# How often a notification connection checks that it is still alive, in seconds.
_LISTEN_HEALTH_INTERVAL = 15.0

# What asyncpg raises when the server is gone or the network is cut.
UNREACHABLE = (
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


class Database:
    """A pool of connections, the typed calls every query makes, and the queries by table."""

    def __init__(self, pool: asyncpg.Pool, settings: PostgresSettings) -> None:
        self._pool = pool
        self.settings = settings
        self.keys = KeyQueries(self)
        self.credentials = CredentialQueries(self)
        self.users = UserQueries(self)
        self.metadata = MetadataQueries(self)
        self.requests = RequestQueries(self)
        self.reports = ReportQueries(self)
        self.limits = LimitQueries(self)

    @contextmanager
    def translated(self, *, stores_rows: bool = False) -> Iterator[None]:
        """The one translation of driver errors (see the module docstring)."""
        try:
            yield
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
            if not stores_rows:
                raise
            # Two writers updated the same counters; the statement rolled back whole.
            raise DatabaseUnavailable(f"write conflict, will retry: {exc}") from exc
        except UNREACHABLE as exc:  # before PostgresError: asyncpg's lost connections are ones
            raise DatabaseUnavailable(
                f"cannot reach {describe(self.settings)}: {exc or type(exc).__name__}"
            ) from exc
        except asyncpg.PostgresError as exc:
            if not stores_rows:
                raise  # a query or a value the caller got wrong, not the network
            raise RowsRefused(str(exc)) from exc

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        with self.translated():
            rows: list[asyncpg.Record] = await aio_as_trio(self._pool.fetch)(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        with self.translated():
            row: asyncpg.Record | None = await aio_as_trio(self._pool.fetchrow)(query, *args)
            return row

    async def fetchval(self, query: str, *args: Any, stores_rows: bool = False) -> Any:
        with self.translated(stores_rows=stores_rows):
            return await aio_as_trio(self._pool.fetchval)(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        with self.translated():
            status: str = await aio_as_trio(self._pool.execute)(query, *args)
            return status

    async def with_connection(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run asyncio code `work(conn)` on one pooled connection (a transaction, say)."""

        async def run() -> T:
            async with self._pool.acquire() as conn:
                return await work(conn)

        with self.translated():
            result: T = await aio_as_trio(run)()
            return result

    async def listen(
        self, channel: str, on_message: Callable[[str | None], None], *, retry_delay: float = 1.0
    ) -> None:
        """Call `on_message(payload)` for every notification on `channel`, until cancelled.

        Holds one connection outside the pool. After every (re)connection it calls
        `on_message(None)`: notifications sent while it was away are lost, so whatever they
        keep fresh must be checked again.
        """
        while True:
            try:
                await aio_as_trio(self._listen_once)(channel, on_message)
            except UNREACHABLE as exc:
                log.warning(
                    "notifications on %s interrupted, reconnecting in %gs: %s",
                    channel,
                    retry_delay,
                    exc or type(exc).__name__,
                )
            await trio.sleep(retry_delay)

    async def _listen_once(self, channel: str, on_message: Callable[[str | None], None]) -> None:
        conn = await asyncpg.connect(**_connect_kwargs(self.settings, self.settings.database))
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(
                channel, lambda _conn, _pid, _channel, payload: on_message(payload)
            )
            on_message(None)
            while not lost.is_set():
                # A silent network can hide a dead connection: ask now and then.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(lost.wait(), _LISTEN_HEALTH_INTERVAL)
                    continue
                await conn.fetchval("SELECT 1", timeout=_LISTEN_HEALTH_INTERVAL)
            raise ConnectionResetError("the notification connection was closed")
        finally:
            with contextlib.suppress(*UNREACHABLE):
                await conn.close(timeout=1)

    async def ping(self) -> None:
        """Raise `DatabaseUnavailable` unless the server answers a trivial query."""
        await self.fetchval("SELECT 1")

    # -- schema ---------------------------------------------------------------------------

    async def migrate(self) -> int:
        """Apply schema.sql under an advisory lock; return the recorded schema version."""

        async def apply(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK_ID)
                await conn.execute(schema_sql())
                version: int = await conn.fetchval("SELECT max(version) FROM majordomo_schema")
                return version

        version = await self.with_connection(apply)
        if version > SCHEMA_VERSION:
            raise MajordomoError(
                f"{describe(self.settings)} has schema version {version}, newer than this "
                f"gateway's {SCHEMA_VERSION}; upgrade majordomo before running it against it"
            )
        return version

    async def schema_version(self) -> int | None:
        exists = await self.fetchval("SELECT to_regclass('majordomo_schema') IS NOT NULL")
        if not exists:
            return None
        version = await self.fetchval("SELECT max(version) FROM majordomo_schema")
        return int(version) if version is not None else None


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


async def _open_pool(settings: PostgresSettings, min_size: int, create_database: bool) -> Any:
    where = describe(settings)
    try:
        if create_database:
            await aio_as_trio(_create_database)(settings)
        return await aio_as_trio(asyncpg.create_pool)(
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
    except UNREACHABLE as exc:
        raise DatabaseUnavailable(
            f"cannot reach {where}: {exc or type(exc).__name__}; is PostgreSQL running? "
            "check storage.postgres.host and storage.postgres.port"
        ) from None


@asynccontextmanager
async def _asyncio_loop() -> AsyncIterator[None]:
    """The trio-asyncio loop: this task's, if it has one already (two databases open in one
    task share it: a pool lives on the loop it was made on), else a new one."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop():
        yield


@asynccontextmanager
async def open_database(
    settings: PostgresSettings,
    *,
    min_size: int = 1,
    create_database: bool = False,
    wait: float = 0.0,
) -> AsyncIterator[Database]:
    """Open the asyncio loop and a pool, yield the `Database`, close both on exit.

    `create_database` creates `settings.database` first when it is missing (the embedded
    server starts with only `postgres`); an external server's database is the operator's.
    With `wait`, an unreachable server is retried for that many seconds (orchestrators often
    start the gateway beside its database: waiting a little beats a crash loop).
    """
    async with _asyncio_loop():
        deadline = trio.current_time() + wait
        delay = 0.25
        while True:
            try:
                pool = await _open_pool(settings, min_size, create_database)
                break
            except DatabaseUnavailable as exc:
                if trio.current_time() + delay > deadline:
                    raise
                log.warning("waiting for the database (%s); retrying in %.2gs", exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)
        try:
            yield Database(pool, settings)
        finally:
            await aio_as_trio(pool.close)()
