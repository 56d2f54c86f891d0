"""Held credentials for the tests: proxy keys and sealed provider keys written the way the
CLI writes them (same vault, same tables), without a child process per row."""

from __future__ import annotations

import uuid

from majordomo.credentials import generate_proxy_key, hash_proxy_key
from majordomo.db.credentials import API_KEY, PROXY_KEY, Owner
from majordomo.vault import Vault, hint
from tests.harness import TEST_ENCRYPTION_KEY
from tests.pghelpers import PgAdmin

VAULT = Vault(bytes.fromhex(TEST_ENCRYPTION_KEY))


async def create_proxy_key(
    pg: PgAdmin, key_id: uuid.UUID, *, active: bool = True
) -> tuple[str, uuid.UUID]:
    plaintext = generate_proxy_key()
    proxy_key_id = await pg.afetchval(
        "INSERT INTO proxy_keys (key_hash, name, majordomo_api_key_id, is_active) "
        "VALUES ($1, 'test', $2, $3) RETURNING id",
        hash_proxy_key(plaintext),
        key_id,
        active,
    )
    return plaintext, proxy_key_id


async def hold(pg: PgAdmin, owner: Owner, owner_id: uuid.UUID, provider: str, secret: str) -> None:
    sealed = VAULT.seal(secret, owner.context(owner_id, provider))
    await pg.afetch(
        f"INSERT INTO {owner.table} ({owner.column}, provider, encrypted_key, key_hint) "
        "VALUES ($1, $2, $3, $4)",
        owner_id,
        provider,
        sealed,
        hint(secret),
    )


__all__ = ["API_KEY", "PROXY_KEY", "VAULT", "create_proxy_key", "hold"]
