"""Held provider credentials: `proxy_keys`, their provider mappings, and the credentials held
for a Majordomo key itself (`api_key_provider_mappings`).

Every change that a running gateway must see at once (a proxy key revoked, a credential set,
changed or removed, everything re-sealed) notifies `CREDENTIALS_CHANNEL`; every gateway then
forgets what it had cached. Credentials arrive and leave sealed: this module never sees a
plaintext (the vault seals before and opens after).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from majordomo.db.keys import iso
from majordomo.db.limits import limits_from_row
from majordomo.errors import MajordomoError
from majordomo.limits import NO_LIMITS, Limits

if TYPE_CHECKING:
    import asyncpg

    from majordomo.db import Database

CREDENTIALS_CHANNEL = "majordomo_credentials"

_PROXY_COLUMNS = (
    "id, name, description, majordomo_api_key_id, is_active, created_at, revoked_at, "
    "last_used_at, request_count, budget_usd, budget_period, rpm, tpm"
)


@dataclass(frozen=True, slots=True)
class ProxyKey:
    id: uuid.UUID
    name: str
    description: str | None
    majordomo_api_key_id: uuid.UUID
    is_active: bool
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    request_count: int
    limits: Limits = NO_LIMITS

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ProxyKey:
        fields = {k: row[k] for k in cls.__dataclass_fields__ if k != "limits"}
        return cls(**fields, limits=limits_from_row(row))

    def as_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "description": self.description,
            "majordomo_api_key_id": str(self.majordomo_api_key_id),
            "is_active": self.is_active,
            "created_at": iso(self.created_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
            "request_count": self.request_count,
            "limits": self.limits.as_json(),
        }


@dataclass(frozen=True, slots=True)
class Mapping:
    """One held credential, as listings show it: never the key, only its hint."""

    id: uuid.UUID
    owner_id: uuid.UUID
    provider: str
    key_hint: str
    created_at: datetime
    updated_at: datetime

    def as_json(self, owner_field: str) -> dict[str, Any]:
        return {
            "id": str(self.id),
            owner_field: str(self.owner_id),
            "provider": self.provider,
            "key_hint": self.key_hint,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds credentials: a proxy key or a Majordomo key (one mapping table each)."""

    table: str
    column: str  # the mapping table's column naming the owner
    kind: str  # for messages and the sealing context

    def context(self, owner_id: uuid.UUID, provider: str) -> str:
        """What a sealed credential is bound to: a value copied elsewhere does not open."""
        return f"{self.table}:{owner_id}:{provider}"


PROXY_KEY = Owner("proxy_key_provider_mappings", "proxy_key_id", "proxy key")
API_KEY = Owner("api_key_provider_mappings", "api_key_id", "key")
OWNERS = (PROXY_KEY, API_KEY)


@dataclass(frozen=True, slots=True)
class ProxyKeyLookup:
    """What a request needs to know about a proxy key, for one provider."""

    id: uuid.UUID
    majordomo_api_key_id: uuid.UUID
    is_active: bool
    encrypted_key: str | None  # None: no credential for that provider
    limits: Limits = NO_LIMITS


@dataclass(frozen=True, slots=True)
class Sealed:
    """A stored credential, for re-sealing."""

    owner: Owner
    owner_id: uuid.UUID
    provider: str
    encrypted_key: str


def unknown_proxy_key(proxy_key_id: uuid.UUID) -> MajordomoError:
    return MajordomoError(
        f"no proxy key with id {proxy_key_id}; 'majordomo proxy-keys list' shows the ids"
    )


class CredentialQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- proxy keys ------------------------------------------------------------------------

    async def create_proxy_key(
        self, key_hash: str, name: str, description: str | None, api_key_id: uuid.UUID
    ) -> ProxyKey:
        row = await self._db.fetchrow(
            f"""
            INSERT INTO proxy_keys (key_hash, name, description, majordomo_api_key_id)
            SELECT $1, $2, $3, id FROM api_keys WHERE id = $4 AND is_active
            RETURNING {_PROXY_COLUMNS}
            """,
            key_hash,
            name,
            description,
            api_key_id,
        )
        if row is None:
            key = await self._db.keys.get(api_key_id)  # raises for an unknown key
            raise MajordomoError(
                f"key {key.id} ({key.name}) is revoked; a proxy key needs an active Majordomo key"
            )
        return ProxyKey.from_row(row)

    async def list_proxy_keys(self, api_key_id: uuid.UUID | None = None) -> list[ProxyKey]:
        rows = await self._db.fetch(
            f"SELECT {_PROXY_COLUMNS} FROM proxy_keys "
            "WHERE $1::uuid IS NULL OR majordomo_api_key_id = $1 ORDER BY created_at, id",
            api_key_id,
        )
        return [ProxyKey.from_row(row) for row in rows]

    async def get_proxy_key(self, proxy_key_id: uuid.UUID) -> ProxyKey:
        row = await self._db.fetchrow(
            f"SELECT {_PROXY_COLUMNS} FROM proxy_keys WHERE id = $1", proxy_key_id
        )
        if row is None:
            raise unknown_proxy_key(proxy_key_id)
        return ProxyKey.from_row(row)

    async def revoke_proxy_key(self, proxy_key_id: uuid.UUID) -> ProxyKey:
        """Deactivate a proxy key for good; every gateway refuses it at once."""
        row = await self._db.fetchrow(
            f"""
            WITH target AS (SELECT is_active FROM proxy_keys WHERE id = $1),
            revoked AS (
                UPDATE proxy_keys SET is_active = false, revoked_at = now()
                 WHERE id = $1 AND is_active
             RETURNING id
            )
            SELECT (SELECT is_active FROM target) AS was_active,
                   (SELECT pg_notify('{CREDENTIALS_CHANNEL}', id::text) FROM revoked) AS _
            """,
            proxy_key_id,
        )
        if row is None or row["was_active"] is None:
            raise unknown_proxy_key(proxy_key_id)
        key = await self.get_proxy_key(proxy_key_id)
        if not row["was_active"]:
            raise MajordomoError(
                f"proxy key {proxy_key_id} is already revoked (since "
                f"{iso(key.revoked_at) or 'earlier'}); nothing to do"
            )
        return key

    async def find_proxy_key(self, key_hash: str, provider: str) -> ProxyKeyLookup | None:
        """The proxy key with this hash and its sealed credential for `provider`, or None."""
        row = await self._db.fetchrow(
            """
            SELECT p.id, p.majordomo_api_key_id, p.is_active, m.encrypted_key,
                   p.budget_usd, p.budget_period, p.rpm, p.tpm
              FROM proxy_keys AS p
              LEFT JOIN proxy_key_provider_mappings AS m
                ON m.proxy_key_id = p.id AND m.provider = $2
             WHERE p.key_hash = $1
            """,
            key_hash,
            provider,
        )
        if row is None:
            return None
        return ProxyKeyLookup(
            row["id"],
            row["majordomo_api_key_id"],
            row["is_active"],
            row["encrypted_key"],
            limits_from_row(row),
        )

    async def set_proxy_key_limits(self, proxy_key_id: uuid.UUID, limits: Limits) -> ProxyKey:
        """Set every limit of a proxy key (None clears one); every gateway sees it at once."""
        row = await self._db.fetchrow(
            f"""
            WITH updated AS (
                UPDATE proxy_keys SET budget_usd = $2, budget_period = $3, rpm = $4, tpm = $5
                 WHERE id = $1
             RETURNING id
            )
            SELECT pg_notify('{CREDENTIALS_CHANNEL}', id::text) AS _ FROM updated
            """,
            proxy_key_id,
            limits.budget_usd,
            limits.budget_period if limits.budget_usd is not None else None,
            limits.rpm,
            limits.tpm,
        )
        if row is None:
            raise unknown_proxy_key(proxy_key_id)
        return await self.get_proxy_key(proxy_key_id)

    # -- mappings, for either owner --------------------------------------------------------

    async def _check_owner(self, owner: Owner, owner_id: uuid.UUID) -> None:
        if owner is PROXY_KEY:
            await self.get_proxy_key(owner_id)
        else:
            await self._db.keys.get(owner_id)

    async def set_credential(
        self, owner: Owner, owner_id: uuid.UUID, provider: str, encrypted_key: str, key_hint: str
    ) -> Mapping:
        """Hold `encrypted_key` for `provider` (replacing any), and tell every gateway."""
        await self._check_owner(owner, owner_id)
        row = await self._db.fetchrow(
            f"""
            WITH upserted AS (
                INSERT INTO {owner.table} AS m ({owner.column}, provider, encrypted_key, key_hint)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT ({owner.column}, provider) DO UPDATE
                   SET encrypted_key = excluded.encrypted_key, key_hint = excluded.key_hint,
                       updated_at = now()
                RETURNING id, {owner.column} AS owner_id, provider, key_hint, created_at,
                          updated_at
            )
            SELECT *, pg_notify('{CREDENTIALS_CHANNEL}', owner_id::text) AS _ FROM upserted
            """,
            owner_id,
            provider,
            encrypted_key,
            key_hint,
        )
        assert row is not None  # an upsert returns its row
        return _mapping(row)

    async def remove_credential(self, owner: Owner, owner_id: uuid.UUID, provider: str) -> None:
        await self._check_owner(owner, owner_id)
        row = await self._db.fetchrow(
            f"""
            WITH removed AS (
                DELETE FROM {owner.table} WHERE {owner.column} = $1 AND provider = $2
                RETURNING {owner.column} AS owner_id
            )
            SELECT pg_notify('{CREDENTIALS_CHANNEL}', owner_id::text) AS _ FROM removed
            """,
            owner_id,
            provider,
        )
        if row is None:
            raise MajordomoError(
                f"{owner.kind} {owner_id} holds no {provider} credential; "
                "list-providers shows what it holds"
            )

    async def list_credentials(self, owner: Owner, owner_id: uuid.UUID) -> list[Mapping]:
        await self._check_owner(owner, owner_id)
        rows = await self._db.fetch(
            f"SELECT id, {owner.column} AS owner_id, provider, key_hint, created_at, updated_at "
            f"FROM {owner.table} WHERE {owner.column} = $1 ORDER BY provider",
            owner_id,
        )
        return [_mapping(row) for row in rows]

    async def find_key_credential(self, api_key_id: uuid.UUID, provider: str) -> str | None:
        """The sealed credential held for a Majordomo key and `provider`, or None."""
        value: str | None = await self._db.fetchval(
            "SELECT encrypted_key FROM api_key_provider_mappings "
            "WHERE api_key_id = $1 AND provider = $2",
            api_key_id,
            provider,
        )
        return value

    # -- re-sealing ------------------------------------------------------------------------

    async def reseal_all(self, reseal: Callable[[Sealed], str | None]) -> int:
        """Pass every stored credential to `reseal`; store what it returns (None: unchanged),
        all in one transaction, and tell every gateway. Returns how many changed."""

        async def work(conn: asyncpg.Connection) -> int:
            changed = 0
            async with conn.transaction():
                for owner in OWNERS:
                    rows = await conn.fetch(
                        f"SELECT id, {owner.column} AS owner_id, provider, encrypted_key "
                        f"FROM {owner.table} ORDER BY id FOR UPDATE"
                    )
                    for row in rows:
                        sealed = Sealed(
                            owner, row["owner_id"], row["provider"], row["encrypted_key"]
                        )
                        fresh = reseal(sealed)
                        if fresh is not None and fresh != sealed.encrypted_key:
                            await conn.execute(
                                f"UPDATE {owner.table} SET encrypted_key = $2, updated_at = now() "
                                "WHERE id = $1",
                                row["id"],
                                fresh,
                            )
                            changed += 1
                await conn.execute(f"SELECT pg_notify('{CREDENTIALS_CHANNEL}', 'reencrypted')")
            return changed

        return await self._db.with_connection(work)

    async def listen_for_changes(self, on_change: Callable[[str | None], None]) -> None:
        """Call `on_change` for every credential change anywhere (None: changes may have been
        missed while the notification connection was away), until cancelled."""
        await self._db.listen(CREDENTIALS_CHANNEL, on_change)


def _mapping(row: asyncpg.Record) -> Mapping:
    return Mapping(
        row["id"],
        row["owner_id"],
        row["provider"],
        row["key_hint"],
        row["created_at"],
        row["updated_at"],
    )
