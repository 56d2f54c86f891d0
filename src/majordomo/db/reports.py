"""Reads over `llm_requests` for reports (`majordomo usage`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from majordomo.db import Database


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
