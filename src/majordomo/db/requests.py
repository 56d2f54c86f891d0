"""`llm_requests`: the batch insert (with the counters it moves), and repricing.

The batch statement is derived from `records.COLUMNS`; it inserts the rows that are new (ids
already present are skipped: a replayed spool writes nothing twice) and, in the same
statement, moves the key counters and the metadata key registry for exactly those rows.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from majordomo import sketch
from majordomo.records import COLUMNS, Column, RequestRecord, RowExtras

if TYPE_CHECKING:
    from majordomo.db import Database


class RequestQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(
        self, records: Sequence[RequestRecord], extras: Sequence[RowExtras] | None = None
    ) -> int:
        """Insert finished requests in one round trip; return how many rows were new.

        Ids already present are skipped, so replaying a batch is safe, and the counters this
        statement moves (`request_count`/`last_used_at` of the key and the proxy key, the metadata
        key registry)
        only count the rows it actually inserted. Active metadata keys of each API key are
        copied into `indexed_metadata` in the same statement.
        """
        if not records:
            return 0
        extras = extras or [RowExtras()] * len(records)
        columns = _columns_of(records, extras)
        key_ids, names, hlls = _metadata_sketches(records)
        inserted = await self._db.fetchval(
            _INSERT_BATCH, *columns, key_ids, names, hlls, stores_rows=True
        )
        return int(inserted)

    async def ping(self) -> None:
        """Whether the database answers (with it, this is the log writer's `RecordStore`)."""
        await self._db.ping()

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
        rows = await self._db.fetch(
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
        status = await self._db.execute(
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
    INSERT INTO llm_requests ({names}, user_id, indexed_metadata)
    SELECT {values},
           (SELECT k.user_id FROM api_keys AS k WHERE k.id = i.majordomo_api_key_id),
           coalesce((
               SELECT jsonb_object_agg(e.key, e.value)
                 FROM jsonb_each(i.raw_metadata::jsonb) AS e
                 JOIN llm_requests_metadata_keys AS mk
                   ON mk.majordomo_api_key_id = i.majordomo_api_key_id AND mk.key_name = e.key
                  AND mk.is_active
           ), '{{}}'::jsonb)
      FROM input AS i
    ON CONFLICT (id) DO NOTHING
    RETURNING majordomo_api_key_id, proxy_key_id, requested_at, raw_metadata
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
proxy_key_counts AS (
    UPDATE proxy_keys AS p
       SET request_count = p.request_count + c.n,
           last_used_at = greatest(p.last_used_at, c.last_used)
      FROM (SELECT proxy_key_id AS id, count(*) AS n, max(requested_at) AS last_used
              FROM inserted WHERE proxy_key_id IS NOT NULL GROUP BY 1) AS c
     WHERE p.id = c.id
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
