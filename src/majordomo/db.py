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
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from importlib import resources
from typing import Any

import asyncpg
import trio
from trio_asyncio import aio_as_trio

from majordomo import sketch
from majordomo.auth import KeyStatus
from majordomo.config import PostgresSettings
from majordomo.errors import DatabaseUnavailable, MajordomoError, RowsRefused
from majordomo.records import COLUMNS, Column, RequestRecord, RowExtras

log = logging.getLogger("majordomo.db")

# The version recorded by the last statement of schema.sql.
SCHEMA_VERSION = 4
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


@dataclass(frozen=True, slots=True)
class MetadataKey:
    key_name: str
    display_name: str | None
    key_type: str
    is_active: bool
    activated_at: datetime | None
    request_count: int
    last_seen_at: datetime | None
    approx_cardinality: int
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "key_name": self.key_name,
            "display_name": self.display_name,
            "key_type": self.key_type,
            "is_active": self.is_active,
            "activated_at": _iso(self.activated_at),
            "request_count": self.request_count,
            "last_seen_at": _iso(self.last_seen_at),
            "approx_cardinality": self.approx_cardinality,
            "created_at": _iso(self.created_at),
        }


_METADATA_COLUMNS = (
    "key_name, display_name, key_type, is_active, activated_at, request_count, last_seen_at, "
    "approx_cardinality, created_at"
)

# One slice of a backfill: rows in id order after $2, for one API key ($1) or all.
_BACKFILL = """
WITH slice AS (
    SELECT id FROM llm_requests
     WHERE ($1::uuid IS NULL OR majordomo_api_key_id = $1) AND id > $2
     ORDER BY id LIMIT $3
),
updated AS (
    UPDATE llm_requests AS r
       SET indexed_metadata = coalesce((
               SELECT jsonb_object_agg(e.key, e.value)
                 FROM jsonb_each(r.raw_metadata) AS e
                 JOIN llm_requests_metadata_keys AS mk
                   ON mk.majordomo_api_key_id = r.majordomo_api_key_id
                  AND mk.key_name = e.key AND mk.is_active
           ), '{}'::jsonb)
      FROM slice
     WHERE r.id = slice.id
       AND r.indexed_metadata IS DISTINCT FROM coalesce((
               SELECT jsonb_object_agg(e.key, e.value)
                 FROM jsonb_each(r.raw_metadata) AS e
                 JOIN llm_requests_metadata_keys AS mk
                   ON mk.majordomo_api_key_id = r.majordomo_api_key_id
                  AND mk.key_name = e.key AND mk.is_active
           ), '{}'::jsonb)
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) AS changed,
       (SELECT id FROM slice ORDER BY id DESC LIMIT 1) AS last_id
"""


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
        except asyncpg.DataError:
            raise  # a value the driver cannot encode: the caller's problem, not the network's
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

    # -- metadata keys --------------------------------------------------------------------

    async def list_metadata_keys(self, key_id: uuid.UUID) -> list[MetadataKey]:
        await self.get_key(key_id)  # a clear error for an unknown id
        rows = await self._call(
            "fetch",
            f"SELECT {_METADATA_COLUMNS} FROM llm_requests_metadata_keys "
            "WHERE majordomo_api_key_id = $1 ORDER BY key_name",
            key_id,
        )
        return [MetadataKey(**dict(row.items())) for row in rows]

    async def set_metadata_key_active(
        self, key_id: uuid.UUID, name: str, active: bool
    ) -> MetadataKey:
        """Activate (or deactivate) copying one metadata key into `indexed_metadata`.

        A key never seen yet can be activated ahead of its first request.
        """
        await self.get_key(key_id)
        row = await self._call(
            "fetchrow",
            f"""
            INSERT INTO llm_requests_metadata_keys AS mk
                (majordomo_api_key_id, key_name, is_active, activated_at)
            VALUES ($1, $2, $3, CASE WHEN $3 THEN now() END)
            ON CONFLICT (majordomo_api_key_id, key_name) DO UPDATE SET
                is_active = $3,
                activated_at = CASE WHEN $3 THEN coalesce(
                    CASE WHEN mk.is_active THEN mk.activated_at END, now()) END
            RETURNING {_METADATA_COLUMNS}
            """,
            key_id,
            name,
            active,
        )
        return MetadataKey(**dict(row.items()))

    async def backfill_indexed_metadata(
        self, key_id: uuid.UUID | None, *, batch_size: int = 5000
    ) -> int:
        """Recompute `indexed_metadata` of stored rows from the active keys; rows changed."""
        if key_id is not None:
            await self.get_key(key_id)
        changed = 0
        last = uuid.UUID(int=0)
        while True:
            row = await self._call("fetchrow", _BACKFILL, key_id, last, batch_size)
            changed += int(row["changed"])
            if row["last_id"] is None:
                return changed
            last = row["last_id"]

    # -- usage records --------------------------------------------------------------------

    async def insert_records(
        self, records: Sequence[RequestRecord], extras: Sequence[RowExtras] | None = None
    ) -> int:
        """Insert finished requests in one round trip; return how many rows were new.

        Ids already present are skipped, so replaying a batch is safe, and the counters this
        statement moves (`api_keys.request_count`/`last_used_at`, the metadata key registry)
        only count the rows it actually inserted. Active metadata keys of each API key are
        copied into `indexed_metadata` in the same statement.
        """
        if not records:
            return 0
        extras = extras or [RowExtras()] * len(records)
        columns = _columns_of(records, extras)
        key_ids, names, hlls = _metadata_sketches(records)
        try:
            inserted = await self._call("fetchval", _INSERT_BATCH, *columns, key_ids, names, hlls)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
            # Two writers updated the same counters; the statement rolled back whole.
            raise DatabaseUnavailable(f"write conflict, will retry: {exc}") from exc
        except (asyncpg.PostgresError, asyncpg.DataError) as exc:
            raise RowsRefused(str(exc)) from exc
        return int(inserted)

    # -- pricing (owned by the pricing module) ---

    async def rows_to_reprice(
        self,
        since: datetime,
        model: str | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """One page of `llm_requests` rows for `majordomo pricing recalc`, oldest first.

        Rows requested at or after `since` (and of `model`, if given) that come after `after`
        (the previous page's last `(requested_at, id)`) in `(requested_at, id)` order: their
        id, provider, model, requested_at, token counts, costs and model_alias_found.
        """
        # The first page starts after (since, the nil UUID), which no stored row has.
        start = after or (since, uuid.UUID(int=0))
        rows = await self._call(
            "fetch",
            """
            SELECT id, provider, model, requested_at, input_tokens, output_tokens,
                   cached_tokens, cache_creation_tokens, reasoning_tokens,
                   input_cost, output_cost, total_cost, model_alias_found
              FROM llm_requests
             WHERE requested_at >= $1
               AND (requested_at, id) > ($2, $3)
               AND ($4::text IS NULL OR model = $4)
             ORDER BY requested_at, id
             LIMIT $5
            """,
            since,
            start[0],
            start[1],
            model,
            limit,
        )
        return [dict(row.items()) for row in rows]

    async def update_costs(
        self, rows: Sequence[tuple[uuid.UUID, Decimal, Decimal, Decimal, bool]]
    ) -> int:
        """Set `(id, input_cost, output_cost, total_cost, model_alias_found)` of rows at once."""
        if not rows:
            return 0
        ids, inputs, outputs, totals, found = (list(column) for column in zip(*rows, strict=True))
        status = await self._call(
            "execute",
            """
            UPDATE llm_requests AS r
               SET input_cost = u.input_cost, output_cost = u.output_cost,
                   total_cost = u.total_cost, model_alias_found = u.found
              FROM unnest($1::uuid[], $2::numeric[], $3::numeric[], $4::numeric[],
                          $5::boolean[]) AS u (id, input_cost, output_cost, total_cost, found)
             WHERE r.id = u.id
            """,
            ids,
            inputs,
            outputs,
            totals,
            found,
        )
        return int(str(status).rsplit(" ", 1)[-1])

    # -- usage reports (owned by cli/usage.py) ---

    async def usage_report(
        self,
        since: datetime,
        until: datetime,
        *,
        by: str,
        meta_name: str | None = None,
        key_id: uuid.UUID | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Requests, tokens, cost and errors of `llm_requests` in `[since, until)`, grouped.

        `by` is one of `model`, `provider`, `key` (the API key's id as text, with its name in
        `key_name`), `meta` (the value of `raw_metadata ->> meta_name`) or `day` (the UTC date,
        `YYYY-MM-DD`). A group whose value is missing (no key, no such metadata) has `grp` null.

        The first row is the whole window's total (`is_total` true), then up to `limit` groups
        (all when None), most expensive first; every row carries `groups`, the number of groups
        before the limit. One scan of the window, through `llm_requests_requested_at_idx`, or
        `(majordomo_api_key_id, requested_at)` when `key_id` is given. Nothing is interpolated:
        the grouping and the metadata key name are parameters.
        """
        if by not in ("model", "provider", "key", "meta", "day"):
            raise ValueError(f"unknown grouping {by!r}")
        if key_id is not None:
            await self.get_key(key_id)  # a clear error for an unknown id
        rows = await self._call(
            "fetch",
            """
            WITH scoped AS (
                SELECT CASE $4::text
                           WHEN 'model' THEN model
                           WHEN 'provider' THEN provider
                           WHEN 'key' THEN majordomo_api_key_id::text
                           WHEN 'meta' THEN raw_metadata ->> $5::text
                           WHEN 'day' THEN to_char(requested_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')
                       END AS grp,
                       input_tokens, output_tokens, cached_tokens, cache_creation_tokens,
                       reasoning_tokens, total_cost, status_code
                  FROM llm_requests
                 WHERE requested_at >= $1 AND requested_at < $2
                   AND ($3::uuid IS NULL OR majordomo_api_key_id = $3)
            ),
            grouped AS (
                SELECT grp,
                       GROUPING(grp) = 1 AS is_total,
                       count(*) AS requests,
                       coalesce(sum(input_tokens), 0) AS input_tokens,
                       coalesce(sum(output_tokens), 0) AS output_tokens,
                       coalesce(sum(cached_tokens), 0) AS cached_tokens,
                       coalesce(sum(cache_creation_tokens), 0) AS cache_creation_tokens,
                       coalesce(sum(reasoning_tokens), 0) AS reasoning_tokens,
                       coalesce(sum(total_cost), 0) AS total_cost,
                       count(*) FILTER (WHERE status_code >= 400) AS errors
                  FROM scoped
                 GROUP BY GROUPING SETS ((grp), ())
            )
            SELECT g.*, k.name AS key_name, count(*) OVER () - 1 AS groups
              FROM grouped AS g
              LEFT JOIN api_keys AS k
                ON $4::text = 'key' AND NOT g.is_total AND k.id::text = g.grp
             ORDER BY g.is_total DESC, g.total_cost DESC, g.requests DESC, g.grp NULLS LAST
             LIMIT $6::bigint + 1
            """,
            since,
            until,
            key_id,
            by,
            meta_name,
            limit,
        )
        return [dict(row.items()) for row in rows]


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(value: str) -> str:
    """`value` as PostgreSQL `text` and `jsonb` accept it: NUL and lone surrogates (which
    JSON escapes such as `\\u0000` and `\\ud800` produce) become U+FFFD.

    A row refused for one character of a model name or a path would lose the usage record of
    a request that was answered; a replaced character loses nothing that matters.
    """
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _SURROGATE.sub("\ufffd", value)
    return value


def _text(value: str | None) -> str | None:
    return None if value is None else storable_text(value)


def _storable_json(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): _storable_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable_json(v) for v in value]
    return value


def _storable(column: Column, value: Any) -> Any:
    """A column's value as PostgreSQL takes it (see `storable_text`)."""
    if column.cast == "jsonb":
        return json.dumps(_storable_json(value))
    if column.pg_type == "text" and value is not None:
        return storable_text(value)
    return value


def _columns_of(records: Sequence[RequestRecord], extras: Sequence[RowExtras]) -> list[list[Any]]:
    """One array per column of `COLUMNS`, for the batch INSERT's unnest."""
    rows = list(zip(records, extras, strict=True))
    return [[_storable(c, c.read(r, x)) for r, x in rows] for c in COLUMNS]


def _metadata_sketches(
    records: Sequence[RequestRecord],
) -> tuple[list[uuid.UUID], list[str], list[bytes]]:
    """A HyperLogLog sketch of the values of each (API key, metadata key) in a batch."""
    sketches: dict[tuple[uuid.UUID, str], bytearray] = {}
    for r in records:
        if r.api_key_id is None:
            continue
        for name, value in r.raw_metadata.items():
            registers = sketches.get((r.api_key_id, name))
            if registers is None:
                registers = sketches[(r.api_key_id, name)] = bytearray(sketch.REGISTERS)
            sketch.add(registers, storable_text(str(value)))
    # Sorted: concurrent writers then lock registry rows in the same order (no deadlocks).
    ordered = sorted(sketches.items(), key=lambda item: (str(item[0][0]), item[0][1]))
    return (
        [key_id for (key_id, _), _ in ordered],
        [name for (_, name), _ in ordered],
        [bytes(registers) for _, registers in ordered],
    )


def _insert_batch_sql() -> str:
    """The batch INSERT, from `COLUMNS`: unnest one array per column, insert what is new, and
    in the same statement move the counters of the rows actually inserted."""
    arrays = ", ".join(f"${n}::{c.pg_type}[]" for n, c in enumerate(COLUMNS, 1))
    names = ", ".join(c.name for c in COLUMNS)
    values = ", ".join(f"i.{c.name}::{c.cast}" if c.cast else f"i.{c.name}" for c in COLUMNS)
    n = len(COLUMNS)
    counters = _COUNTERS.replace("${keys}", f"${n + 1}").replace("${names}", f"${n + 2}")
    counters = counters.replace("${hlls}", f"${n + 3}")
    return f"""
WITH input AS (
    SELECT * FROM unnest({arrays}) AS t({names})
),
inserted AS (
    INSERT INTO llm_requests ({names}, indexed_metadata)
    SELECT {values},
           coalesce((
               SELECT jsonb_object_agg(e.key, e.value)
                 FROM jsonb_each(i.raw_metadata::jsonb) AS e
                 JOIN llm_requests_metadata_keys AS mk
                   ON mk.majordomo_api_key_id = i.majordomo_api_key_id AND mk.key_name = e.key
                  AND mk.is_active
           ), '{{}}'::jsonb)
      FROM input AS i
    ON CONFLICT (id) DO NOTHING
    RETURNING majordomo_api_key_id, requested_at, raw_metadata
),
{counters}"""


# What the batch statement does with the rows it inserted (`$keys`, `$names`, `$hlls` are
# the metadata sketches' arrays, numbered after the columns').
_COUNTERS = """key_counts AS (
    UPDATE api_keys AS k
       SET request_count = k.request_count + c.n,
           last_used_at = greatest(k.last_used_at, c.last_used)
      FROM (SELECT majordomo_api_key_id AS id, count(*) AS n, max(requested_at) AS last_used
              FROM inserted WHERE majordomo_api_key_id IS NOT NULL GROUP BY 1) AS c
     WHERE k.id = c.id
),
metadata_counts AS (
    SELECT majordomo_api_key_id AS key_id, m.name, count(*) AS n, max(requested_at) AS last_seen
      FROM inserted, jsonb_object_keys(raw_metadata) AS m(name)
     WHERE majordomo_api_key_id IS NOT NULL
     GROUP BY 1, 2
),
registry AS (
    INSERT INTO llm_requests_metadata_keys AS mk (
        majordomo_api_key_id, key_name, request_count, last_seen_at, approx_hll,
        approx_cardinality
    )
    SELECT s.key_id, s.name, coalesce(c.n, 0), c.last_seen, s.hll, majordomo_hll_estimate(s.hll)
      FROM unnest(${keys}::uuid[], ${names}::text[], ${hlls}::bytea[]) AS s(key_id, name, hll)
      LEFT JOIN metadata_counts AS c USING (key_id, name)
     ORDER BY s.key_id, s.name
    ON CONFLICT (majordomo_api_key_id, key_name) DO UPDATE SET
        request_count = mk.request_count + excluded.request_count,
        last_seen_at = greatest(mk.last_seen_at, excluded.last_seen_at),
        approx_hll = majordomo_hll_merge(mk.approx_hll, excluded.approx_hll),
        approx_cardinality = majordomo_hll_estimate(
            majordomo_hll_merge(mk.approx_hll, excluded.approx_hll))
)
SELECT count(*) FROM inserted
"""


_INSERT_BATCH = _insert_batch_sql()


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
