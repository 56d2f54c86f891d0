"""`api_keys`: Majordomo keys, and the notifications that make revocation immediate."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from majordomo.auth import KeyStatus
from majordomo.db.limits import limits_from_row
from majordomo.errors import MajordomoError
from majordomo.limits import NO_LIMITS, Limits

if TYPE_CHECKING:
    import asyncpg

    from majordomo.db import Database

# Keys changed (revoked, renamed) are announced here so every gateway drops its cached entry.
KEYS_CHANNEL = "majordomo_keys"

_COLUMNS = (
    "id, name, description, user_id, is_active, created_at, revoked_at, last_used_at, "
    "request_count, budget_usd, budget_period, rpm, tpm"
)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: uuid.UUID
    name: str
    description: str | None
    user_id: uuid.UUID | None
    is_active: bool
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    request_count: int
    limits: Limits = NO_LIMITS

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ApiKey:
        fields = {k: row[k] for k in cls.__dataclass_fields__ if k != "limits"}
        return cls(**fields, limits=limits_from_row(row))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "user_id": str(self.user_id) if self.user_id else None,
            "is_active": self.is_active,
            "created_at": iso(self.created_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
            "request_count": self.request_count,
            "limits": self.limits.as_json(),
        }


def unknown_key(key_id: uuid.UUID) -> MajordomoError:
    return MajordomoError(f"no key with id {key_id}; 'majordomo keys list' shows the ids")


class KeyQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        key_hash: str,
        name: str,
        description: str | None,
        user_id: uuid.UUID | None = None,
    ) -> ApiKey:
        row = await self._db.fetchrow(
            f"INSERT INTO api_keys (key_hash, name, description, user_id) VALUES ($1, $2, $3, $4) "
            f"RETURNING {_COLUMNS}",
            key_hash,
            name,
            description,
            user_id,
        )
        assert row is not None  # INSERT … RETURNING returns its row
        return ApiKey.from_row(row)

    async def list(self, user_id: uuid.UUID | None = None) -> list[ApiKey]:
        """Every key, or those owned by `user_id`."""
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM api_keys WHERE $1::uuid IS NULL OR user_id = $1 "
            "ORDER BY created_at, id",
            user_id,
        )
        return [ApiKey.from_row(row) for row in rows]

    async def get(self, key_id: uuid.UUID) -> ApiKey:
        row = await self._db.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        if row is None:
            raise unknown_key(key_id)
        return ApiKey.from_row(row)

    async def update(
        self, key_id: uuid.UUID, *, name: str | None, description: str | None
    ) -> ApiKey:
        row = await self._db.fetchrow(
            f"""
            WITH updated AS (
                UPDATE api_keys
                   SET name = coalesce($2, name), description = coalesce($3, description)
                 WHERE id = $1
             RETURNING {_COLUMNS}, key_hash
            )
            SELECT {_COLUMNS}, pg_notify('{KEYS_CHANNEL}', key_hash) AS _ FROM updated
            """,
            key_id,
            name,
            description,
        )
        if row is None:
            raise unknown_key(key_id)
        return ApiKey.from_row(row)

    async def set_limits(self, key_id: uuid.UUID, limits: Limits) -> ApiKey:
        """Set every limit of a key (None clears one); every gateway sees it at once."""
        row = await self._db.fetchrow(
            f"""
            WITH updated AS (
                UPDATE api_keys SET budget_usd = $2, budget_period = $3, rpm = $4, tpm = $5
                 WHERE id = $1
             RETURNING {_COLUMNS}, key_hash
            )
            SELECT {_COLUMNS}, pg_notify('{KEYS_CHANNEL}', key_hash) AS _ FROM updated
            """,
            key_id,
            limits.budget_usd,
            limits.budget_period if limits.budget_usd is not None else None,
            limits.rpm,
            limits.tpm,
        )
        if row is None:
            raise unknown_key(key_id)
        return ApiKey.from_row(row)

    async def revoke(self, key_id: uuid.UUID) -> ApiKey:
        """Deactivate a key for good and tell every gateway to forget it at once."""
        row = await self._db.fetchrow(
            f"""
            WITH target AS (SELECT id, is_active FROM api_keys WHERE id = $1),
            revoked AS (
                UPDATE api_keys SET is_active = false, revoked_at = now()
                 WHERE id = $1 AND is_active
             RETURNING {_COLUMNS}, key_hash
            )
            SELECT (SELECT is_active FROM target) AS was_active,
                   (SELECT pg_notify('{KEYS_CHANNEL}', key_hash) FROM revoked) AS _
            """,
            key_id,
        )
        if row is None or row["was_active"] is None:
            raise unknown_key(key_id)
        key = await self.get(key_id)
        if not row["was_active"]:
            revoked = iso(key.revoked_at) or "earlier"
            raise MajordomoError(
                f"key {key_id} is already revoked (since {revoked}); nothing to do"
            )
        return key

    async def find(self, key_hash: str) -> KeyStatus | None:
        """The id and state of the key with this hash, or None (the auth cache's lookup)."""
        row = await self._db.fetchrow(
            "SELECT id, is_active, budget_usd, budget_period, rpm, tpm FROM api_keys "
            "WHERE key_hash = $1",
            key_hash,
        )
        if row is None:
            return None
        return KeyStatus(row["id"], row["is_active"], limits_from_row(row))

    async def listen_for_changes(self, on_change: Callable[[str | None], None]) -> None:
        """Call `on_change(key_hash)` for every key revoked or changed (None: anything may
        have changed while the notification connection was away), until cancelled."""
        await self._db.listen(KEYS_CHANNEL, on_change)
