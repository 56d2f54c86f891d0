"""`llm_requests_metadata_keys`: the X-Majordomo-* keys each API key sends, and which of
them are copied into the GIN-indexed `indexed_metadata`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from majordomo.db.keys import iso

if TYPE_CHECKING:
    from majordomo.db import Database


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
            "activated_at": iso(self.activated_at),
            "request_count": self.request_count,
            "last_seen_at": iso(self.last_seen_at),
            "approx_cardinality": self.approx_cardinality,
            "created_at": iso(self.created_at),
        }


_COLUMNS = (
    "key_name, display_name, key_type, is_active, activated_at, request_count, last_seen_at, "
    "approx_cardinality, created_at"
)

# One slice of a backfill: rows in id order after $2, for one API key ($1) or all.
_BACKFILL = """
WITH slice AS (
    SELECT r.id, coalesce((
               SELECT jsonb_object_agg(e.key, e.value)
                 FROM jsonb_each(r.raw_metadata) AS e
                 JOIN llm_requests_metadata_keys AS mk
                   ON mk.majordomo_api_key_id = r.majordomo_api_key_id
                  AND mk.key_name = e.key AND mk.is_active
           ), '{}'::jsonb) AS wanted
      FROM llm_requests AS r
     WHERE ($1::uuid IS NULL OR r.majordomo_api_key_id = $1) AND r.id > $2
     ORDER BY r.id LIMIT $3
),
updated AS (
    UPDATE llm_requests AS r
       SET indexed_metadata = slice.wanted
      FROM slice
     WHERE r.id = slice.id AND r.indexed_metadata IS DISTINCT FROM slice.wanted
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) AS changed,
       (SELECT id FROM slice ORDER BY id DESC LIMIT 1) AS last_id
"""


class MetadataQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list(self, key_id: uuid.UUID) -> list[MetadataKey]:
        await self._db.keys.get(key_id)  # a clear error for an unknown id
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM llm_requests_metadata_keys "
            "WHERE majordomo_api_key_id = $1 ORDER BY key_name",
            key_id,
        )
        return [MetadataKey(**dict(row.items())) for row in rows]

    async def set_active(self, key_id: uuid.UUID, name: str, active: bool) -> MetadataKey:
        """Activate (or deactivate) copying one metadata key into `indexed_metadata`.

        A key never seen yet can be activated ahead of its first request.
        """
        await self._db.keys.get(key_id)
        row = await self._db.fetchrow(
            f"""
            INSERT INTO llm_requests_metadata_keys AS mk
                (majordomo_api_key_id, key_name, is_active, activated_at)
            VALUES ($1, $2, $3, CASE WHEN $3 THEN now() END)
            ON CONFLICT (majordomo_api_key_id, key_name) DO UPDATE SET
                is_active = $3,
                activated_at = CASE WHEN $3 THEN coalesce(
                    CASE WHEN mk.is_active THEN mk.activated_at END, now()) END
            RETURNING {_COLUMNS}
            """,
            key_id,
            name,
            active,
        )
        assert row is not None  # an upsert returns its row
        return MetadataKey(**dict(row.items()))

    async def backfill(self, key_id: uuid.UUID | None, *, batch_size: int = 5000) -> int:
        """Recompute `indexed_metadata` of stored rows from the active keys; rows changed."""
        if key_id is not None:
            await self._db.keys.get(key_id)
        changed = 0
        last = uuid.UUID(int=0)
        while True:
            row = await self._db.fetchrow(_BACKFILL, key_id, last, batch_size)
            assert row is not None  # an aggregate always returns a row
            changed += int(row["changed"])
            if row["last_id"] is None:
                return changed
            last = row["last_id"]
