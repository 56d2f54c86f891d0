"""Reads over `llm_requests` for reports (`majordomo usage`)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from majordomo.db import Database


# What the request log lists per row (the detail adds the bodies and the rest).
LOG_COLUMNS = (
    "id, requested_at, responded_at, majordomo_api_key_id, proxy_key_id, user_id, provider, "
    "model, request_path, request_method, status_code, input_tokens, output_tokens, "
    "cached_tokens, cache_creation_tokens, reasoning_tokens, input_cost, output_cost, "
    "total_cost, response_time_ms, time_to_first_byte_ms, streamed, error_message, "
    "usage_error, raw_metadata"
)


@dataclass(frozen=True)
class LogFilter:
    """The request log's filters; None (or empty) means any."""

    key_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    model: str | None = None
    provider: str | None = None
    status: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class ReportQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def usage(
        self,
        since: datetime,
        until: datetime,
        *,
        by: str,
        meta_name: str | None = None,
        key_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Requests, tokens, cost and errors of `llm_requests` in `[since, until)`, grouped.

        `by` is one of `model`, `provider`, `key` (the API key's id as text, with its name in
        `key_name`), `meta` (the value of `raw_metadata ->> meta_name`) or `day` (the UTC date,
        `YYYY-MM-DD`). A group whose value is missing (no key, no such metadata) has `grp` null.

        The first row is the whole window's total (`is_total` true), then up to `limit` groups
        (all when None), most expensive first; every row carries `groups`, the number of groups
        before the limit. One scan of the window, through `llm_requests_requested_at_idx`, or
        `(majordomo_api_key_id, requested_at)` when `key_id` is given, or
        `(user_id, requested_at DESC)` for one user's requests. Nothing is interpolated:
        the grouping and the metadata key name are parameters.
        """
        if by not in ("model", "provider", "key", "meta", "day"):
            raise ValueError(f"unknown grouping {by!r}")
        if key_id is not None:
            await self._db.keys.get(key_id)  # a clear error for an unknown id
        rows = await self._db.fetch(
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
                   AND ($7::uuid IS NULL OR user_id = $7)
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
            user_id,
        )
        return [dict(row.items()) for row in rows]

    async def request_log(
        self,
        filters: LogFilter,
        *,
        before: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """One page of the request log, newest first, after the keyset cursor `before`.

        Only the filters given go into the WHERE clause (each a parameter), so the planner
        picks the index that serves them: `(majordomo_api_key_id, requested_at)` for a key,
        `(user_id, requested_at DESC)` for a member's own requests, else `requested_at` read
        backwards (model, provider, status, since/until and metadata filter that scan). A
        metadata filter on a key whose metadata key is activated uses `indexed_metadata`'s GIN
        index instead.
        """
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if before is not None:
            where.append(f"(requested_at, id) < ({arg(before[0])}, {arg(before[1])})")
        for column, value in (
            ("majordomo_api_key_id", filters.key_id),
            ("user_id", filters.user_id),
            ("model", filters.model),
            ("provider", filters.provider),
            ("status_code", filters.status),
        ):
            if value is not None:
                where.append(f"{column} = {arg(value)}")
        if filters.since is not None:
            where.append(f"requested_at >= {arg(filters.since)}")
        if filters.until is not None:
            where.append(f"requested_at < {arg(filters.until)}")
        if filters.metadata:
            column = "raw_metadata"
            if filters.key_id is not None and await self._all_active(
                filters.key_id, list(filters.metadata)
            ):
                column = "indexed_metadata"
            where.append(f"{column} @> {arg(json.dumps(filters.metadata))}::jsonb")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._db.fetch(
            f"SELECT {LOG_COLUMNS} FROM llm_requests {clause} "
            f"ORDER BY requested_at DESC, id DESC LIMIT {arg(limit)}",
            *args,
        )
        return [dict(row.items()) for row in rows]

    async def _all_active(self, key_id: uuid.UUID, names: list[str]) -> bool:
        active = await self._db.fetchval(
            "SELECT count(*) FROM llm_requests_metadata_keys "
            "WHERE majordomo_api_key_id = $1 AND key_name = ANY($2::text[]) AND is_active",
            key_id,
            names,
        )
        return int(active) == len(names)

    async def request(self, request_id: uuid.UUID) -> dict[str, Any] | None:
        """Every stored column of one request (bodies included), or None."""
        row = await self._db.fetchrow(
            f"SELECT {LOG_COLUMNS}, indexed_metadata, request_body, response_body, body_s3_key, "
            "model_alias_found, provider_api_key_alias FROM llm_requests WHERE id = $1",
            request_id,
        )
        return dict(row.items()) if row is not None else None
