from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import asyncpg
import pytest
import trio

from majordomo import db as dbmod
from majordomo.auth import generate_key, hash_key
from majordomo.config import PostgresSettings
from majordomo.db import Database, open_database
from majordomo.errors import DatabaseUnavailable, MajordomoError, RowsRefused, sole_error
from majordomo.records import RequestRecord, Usage
from tests.pghelpers import PgAdmin
from tests.poll import wait_until


@asynccontextmanager
async def database(
    settings: PostgresSettings, *, migrate: bool = True, create: bool = False
) -> AsyncIterator[Database]:
    try:
        async with open_database(settings, create_database=create) as db:
            if migrate:
                await db.migrate()
            yield db
    except BaseExceptionGroup as group:
        raise sole_error(group) from None


# Column names are part of the contract (DESIGN.md); additions are allowed, renames are not.
CONTRACT_COLUMNS = {
    "api_keys": {
        "id", "key_hash", "name", "description", "is_active", "created_at", "revoked_at",
        "last_used_at", "request_count",
    },
    "llm_requests": {
        "id", "majordomo_api_key_id", "provider_api_key_hash", "provider_api_key_alias",
        "provider", "model", "request_path", "request_method", "requested_at", "responded_at",
        "response_time_ms", "input_tokens", "output_tokens", "cached_tokens",
        "cache_creation_tokens", "input_cost", "output_cost", "total_cost", "status_code",
        "error_message", "raw_metadata", "indexed_metadata", "request_body", "response_body",
        "body_s3_key", "model_alias_found", "created_at", "proxy_key_id",
    },
    # The Go gateway's proxy keys (go-gateway-beyond-its-readme.md).
    "proxy_keys": {
        "id", "key_hash", "name", "description", "majordomo_api_key_id", "is_active",
        "created_at", "revoked_at", "last_used_at", "request_count",
    },
    "proxy_key_provider_mappings": {
        "id", "proxy_key_id", "provider", "encrypted_key", "created_at", "updated_at",
    },
    "llm_requests_metadata_keys": {
        "majordomo_api_key_id", "key_name", "display_name", "key_type", "is_active",
        "activated_at", "request_count", "last_seen_at", "approx_cardinality", "created_at",
    },
}  # fmt: skip


async def test_migrate_creates_the_contract_tables_and_is_idempotent(pg: PgAdmin) -> None:
    async with database(pg.settings, migrate=False) as db:
        assert await db.schema_version() is None
        assert await db.migrate() == dbmod.SCHEMA_VERSION
        key = await db.keys.create(hash_key(generate_key()), "kept", None)
        assert await db.migrate() == dbmod.SCHEMA_VERSION  # again: nothing changes
        assert [k.id for k in await db.keys.list()] == [key.id]
    for table, columns in CONTRACT_COLUMNS.items():
        rows = await pg.afetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
        )
        assert columns <= {r["column_name"] for r in rows}, table
    assert await pg.afetchval("SELECT count(*) FROM majordomo_schema") == dbmod.SCHEMA_VERSION


async def test_migrate_from_many_processes_at_once_is_safe(pg: PgAdmin) -> None:
    async with database(pg.settings, migrate=False) as db:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(db.migrate)
        assert await db.schema_version() == dbmod.SCHEMA_VERSION


async def test_a_newer_schema_is_refused(pg: PgAdmin) -> None:
    async with database(pg.settings) as db:
        await pg.afetch("INSERT INTO majordomo_schema (version) VALUES (999)")
        with pytest.raises(MajordomoError, match="newer than this gateway's"):
            await db.migrate()


def test_schema_sql_ships_inside_the_package() -> None:
    from pathlib import Path

    sql = dbmod.schema_sql()
    assert "CREATE TABLE IF NOT EXISTS llm_requests" in sql
    assert f"VALUES ({dbmod.SCHEMA_VERSION})" in sql
    # The top-level schema.sql is the same file.
    assert (Path(__file__).parents[1] / "schema.sql").read_text() == sql
    assert "uuidv7" not in sql  # PostgreSQL 14 compatible


async def test_key_lifecycle(pg: PgAdmin) -> None:
    plaintext = generate_key()
    async with database(pg.settings) as db:
        key = await db.keys.create(hash_key(plaintext), "prod", "for prod")
        assert key.is_active
        assert key.revoked_at is None
        assert key.request_count == 0
        assert (await db.keys.get(key.id)) == key
        renamed = await db.keys.update(key.id, name="prod-2", description=None)
        assert (renamed.name, renamed.description) == ("prod-2", "for prod")
        revoked = await db.keys.revoke(key.id)
        assert not revoked.is_active
        assert revoked.revoked_at is not None
        with pytest.raises(MajordomoError, match=r"already revoked \(since .*\); nothing to do"):
            await db.keys.revoke(key.id)
        missing = uuid.uuid4()
        for call in (db.keys.get(missing), db.keys.revoke(missing)):
            with pytest.raises(
                MajordomoError, match=f"no key with id {missing}; 'majordomo keys list'"
            ):
                await call
        with pytest.raises(MajordomoError, match="no key with id"):
            await db.keys.update(missing, name="x", description=None)
    stored = await pg.afetchval("SELECT key_hash FROM api_keys")
    assert stored == hash_key(plaintext)
    assert plaintext not in str(await pg.afetch("SELECT * FROM api_keys"))


async def test_revoke_and_update_notify_every_gateway(pg: PgAdmin) -> None:
    plaintext = generate_key()
    async with database(pg.settings) as db, database(pg.settings) as other:
        key = await db.keys.create(hash_key(plaintext), "watched", None)
        heard: list[str | None] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other.keys.listen_for_changes, heard.append)
            await wait_until(lambda: heard == [None], deadline=10, what="listening")
            await db.keys.update(key.id, name="renamed", description=None)
            await db.keys.revoke(key.id)
            await wait_until(lambda: len(heard) == 3, deadline=10, what="two notifications")
            nursery.cancel_scope.cancel()
    assert heard == [None, hash_key(plaintext), hash_key(plaintext)]


async def test_records_insert_once_even_when_replayed(pg: PgAdmin) -> None:
    now = datetime.now(UTC)
    record = RequestRecord(
        id=uuid.uuid4(),
        api_key_id=None,
        provider="openai",
        model="gpt-4o",
        request_path="/v1/chat/completions",
        request_method="POST",
        requested_at=now,
        responded_at=now,
        status_code=200,
        usage=Usage(input_tokens=10, output_tokens=5, cached_tokens=2, reasoning_tokens=1),
        raw_metadata={"user-id": "u1"},
    )
    async with database(pg.settings) as db:
        await db.requests.insert([record])
        await db.requests.insert([record, dataclasses.replace(record, id=uuid.uuid4())])
    rows = await pg.afetch("SELECT * FROM llm_requests ORDER BY created_at")
    assert len(rows) == 2
    row = rows[0]
    assert (row["input_tokens"], row["output_tokens"], row["cached_tokens"]) == (10, 5, 2)
    assert row["reasoning_tokens"] == 1
    assert row["raw_metadata"] == '{"user-id": "u1"}'


async def test_unreachable_server_is_reported_with_advice() -> None:
    settings = PostgresSettings(host="127.0.0.1", port=1, connect_timeout=2)
    with pytest.raises(
        DatabaseUnavailable,
        match=r"cannot reach database 'majordomo' at 127\.0\.0\.1:1: .*is PostgreSQL running\? check storage\.postgres\.host",
    ):
        async with database(settings):
            pass


async def test_missing_database_is_reported_with_advice(pg_server: PostgresSettings) -> None:
    settings = dataclasses.replace(pg_server, database="does_not_exist")
    with pytest.raises(
        MajordomoError, match=r"does not exist; create it \(CREATE DATABASE does_not_exist\)"
    ):
        async with database(settings):
            pass


async def test_embedded_server_database_is_created_on_demand(pg_server: PostgresSettings) -> None:
    name = f"mdm_created_{uuid.uuid4().hex[:8]}"
    settings = dataclasses.replace(pg_server, database=name)
    try:
        async with database(settings, create=True) as db:
            await db.ping()
    finally:
        await trio.to_thread.run_sync(PgAdmin(pg_server).drop_database, name)


async def test_passwords_with_url_characters_reach_the_server_verbatim(pg: PgAdmin) -> None:
    """A role that must authenticate by password, whose password is full of URL syntax."""
    if os.environ.get("MAJORDOMO_TEST_DSN"):
        pytest.skip("needs the embedded server, whose pg_hba.conf the test may edit")
    role, password = f"mdm_pw_{uuid.uuid4().hex[:8]}", "p@ss/w?rd:#x%40 y"
    hba_file = trio.Path(await pg.afetchval("SHOW hba_file"))
    original = await hba_file.read_text()
    await hba_file.write_text(f"local all {role} scram-sha-256\n" + original)
    try:
        await pg.afetch("SELECT pg_reload_conf()")
        await pg.afetch(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        good = dataclasses.replace(pg.settings, user=role, password=password)
        async with database(good, migrate=False) as db:
            await db.ping()
        bad = dataclasses.replace(good, password=password[:-1])
        with pytest.raises(
            MajordomoError, match=f"PostgreSQL refused user '{role}'.*wrong password"
        ):
            async with database(bad, migrate=False):
                pass
    finally:
        await hba_file.write_text(original)
        await pg.afetch("SELECT pg_reload_conf()")


@pytest.mark.parametrize(
    ("raised", "stores_rows", "expected"),
    [
        # asyncpg's lost connections subclass PostgresError: still "unreachable", never refused.
        (asyncpg.AdminShutdownError("terminating"), True, DatabaseUnavailable),
        (asyncpg.ConnectionDoesNotExistError("closed"), True, DatabaseUnavailable),
        (asyncpg.CannotConnectNowError("starting"), False, DatabaseUnavailable),
        (OSError("network is unreachable"), False, DatabaseUnavailable),
        (asyncpg.DeadlockDetectedError("deadlock"), True, DatabaseUnavailable),
        (asyncpg.CharacterNotInRepertoireError("bad text"), True, RowsRefused),
        (asyncpg.UniqueViolationError("duplicate"), False, asyncpg.UniqueViolationError),
    ],
)
def test_one_translation_of_driver_errors(
    raised: Exception, stores_rows: bool, expected: type[Exception]
) -> None:
    db = Database(None, PostgresSettings(host="db.internal"))
    with pytest.raises(expected), db.translated(stores_rows=stores_rows):
        raise raised
