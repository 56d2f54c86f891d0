from __future__ import annotations

import base64
import hashlib
import uuid

import pytest
import trio

from majordomo.auth import (
    CANNOT_CHECK,
    MALFORMED_KEY,
    MISSING_KEY,
    REVOKED_KEY,
    UNKNOWN_KEY,
    KeyCache,
    KeyStatus,
    generate_key,
    hash_key,
    is_well_formed,
)
from majordomo.errors import DatabaseUnavailable, Unauthorized


def test_generated_keys_have_the_documented_format() -> None:
    key = generate_key()
    assert key.startswith("mdm_sk_")
    token = key.removeprefix("mdm_sk_")
    assert len(token) == 43
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert is_well_formed(key)


def test_keys_are_unique() -> None:
    assert len({generate_key() for _ in range(1000)}) == 1000


def test_hash_is_sha256_hex_of_the_whole_key() -> None:
    key = generate_key()
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert len(hash_key(key)) == 64


def test_malformed_keys_are_recognised() -> None:
    assert not is_well_formed("mdm_sk_short")
    assert not is_well_formed("sk-" + "a" * 43)
    assert not is_well_formed(generate_key() + "x")
    assert not is_well_formed("mdm_sk_" + "!" * 43)


# -- KeyCache ---------------------------------------------------------------------------------


class FakeKeyTable:
    """Stands in for the database's api_keys (the cache takes its lookup as a parameter)."""

    def __init__(self) -> None:
        self.rows: dict[str, KeyStatus] = {}
        self.lookups = 0
        self.down = False

    def add(self, active: bool = True) -> tuple[str, uuid.UUID]:
        key, key_id = generate_key(), uuid.uuid4()
        self.rows[hash_key(key)] = KeyStatus(key_id, active)
        return key, key_id

    async def lookup(self, key_hash: str) -> KeyStatus | None:
        self.lookups += 1
        await trio.lowlevel.checkpoint()
        if self.down:
            raise DatabaseUnavailable("cannot reach database")
        return self.rows.get(key_hash)


def make_cache(table: FakeKeyTable) -> KeyCache:
    return KeyCache(table.lookup, ttl=300, negative_ttl=10)


@pytest.mark.parametrize(
    ("header", "message"),
    [(None, MISSING_KEY), ("", MISSING_KEY), ("sk-proj-abc", MALFORMED_KEY)],
)
async def test_missing_and_malformed_keys_never_reach_the_database(
    header: str | None, message: str
) -> None:
    table = FakeKeyTable()
    with pytest.raises(Unauthorized) as info:
        await make_cache(table).authenticate(header)
    assert str(info.value) == message
    assert table.lookups == 0


async def test_active_key_is_cached_for_the_ttl(autojump_clock: trio.testing.MockClock) -> None:
    table = FakeKeyTable()
    key, key_id = table.add()
    cache = make_cache(table)
    assert await cache.authenticate(key) == key_id
    await trio.sleep(299)
    assert await cache.authenticate(key) == key_id
    assert table.lookups == 1
    await trio.sleep(2)
    assert await cache.authenticate(key) == key_id
    assert table.lookups == 2


async def test_unknown_key_is_remembered_briefly(autojump_clock: trio.testing.MockClock) -> None:
    table = FakeKeyTable()
    cache = make_cache(table)
    unknown = generate_key()
    for _ in range(3):
        with pytest.raises(Unauthorized, match=UNKNOWN_KEY):
            await cache.authenticate(unknown)
    assert table.lookups == 1
    table.rows[hash_key(unknown)] = KeyStatus(uuid.uuid4(), True)  # created meanwhile
    await trio.sleep(11)
    assert await cache.authenticate(unknown) == table.rows[hash_key(unknown)].key_id


async def test_random_unknown_keys_cannot_grow_the_cache(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeKeyTable()
    known, known_id = table.add()
    cache = KeyCache(table.lookup, ttl=300, negative_ttl=10, max_unknown=1000)
    assert await cache.authenticate(known) == known_id
    for _ in range(50_000):
        with pytest.raises(Unauthorized, match=UNKNOWN_KEY):
            await cache.authenticate(generate_key())
    assert len(cache) <= 1000 + 1
    # The real key was never pushed out, and stays cached (one lookup in all).
    lookups = table.lookups
    assert await cache.authenticate(known) == known_id
    assert table.lookups == lookups


async def test_expired_unknown_keys_go_first(autojump_clock: trio.testing.MockClock) -> None:
    table = FakeKeyTable()
    cache = KeyCache(table.lookup, ttl=300, negative_ttl=10, max_unknown=100)
    for _ in range(100):
        with pytest.raises(Unauthorized):
            await cache.authenticate(generate_key())
    await trio.sleep(11)  # all 100 expired
    recent = generate_key()
    with pytest.raises(Unauthorized):
        await cache.authenticate(recent)
    assert len(cache) == 1  # expired ones dropped, not merely the oldest
    lookups = table.lookups
    with pytest.raises(Unauthorized):
        await cache.authenticate(recent)
    assert table.lookups == lookups  # the recent one is still remembered


async def test_revoked_key_is_refused_and_invalidation_is_immediate() -> None:
    table = FakeKeyTable()
    key, _ = table.add()
    cache = make_cache(table)
    await cache.authenticate(key)
    table.rows[hash_key(key)] = KeyStatus(table.rows[hash_key(key)].key_id, False)
    await cache.authenticate(key)  # still cached: the notification has not come yet
    cache.invalidate(hash_key(key))
    with pytest.raises(Unauthorized, match=REVOKED_KEY):
        await cache.authenticate(key)


async def test_clear_forgets_everything() -> None:
    table = FakeKeyTable()
    keys = [table.add()[0] for _ in range(3)]
    cache = make_cache(table)
    for key in keys:
        await cache.authenticate(key)
    assert len(cache) == 3
    cache.clear()
    assert len(cache) == 0


async def test_database_down_known_keys_keep_working_unknown_get_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = FakeKeyTable()
    key, key_id = table.add()
    revoked, _ = table.add(active=False)
    cache = make_cache(table)
    await cache.authenticate(key)
    with pytest.raises(Unauthorized):
        await cache.authenticate(revoked)
    table.down = True
    await trio.sleep(3600)  # long expired
    assert await cache.authenticate(key) == key_id
    for other in (generate_key(), revoked):
        with pytest.raises(DatabaseUnavailable) as info:
            await cache.authenticate(other)
        assert str(info.value) == CANNOT_CHECK


async def test_an_invalidation_during_a_lookup_is_not_overwritten() -> None:
    table = FakeKeyTable()
    key, _ = table.add()
    cache = make_cache(table)
    started, release = trio.Event(), trio.Event()

    async def slow_lookup(key_hash: str) -> KeyStatus | None:
        started.set()
        status = table.rows.get(key_hash)  # read before the revocation...
        await release.wait()
        return status

    cache = KeyCache(slow_lookup, ttl=300, negative_ttl=10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.authenticate, key)
        await started.wait()
        cache.invalidate(hash_key(key))  # ...revoked while it was in flight
        release.set()
    assert len(cache) == 0  # the stale answer was not remembered
