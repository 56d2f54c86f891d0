"""Majordomo API keys: their format, their hash, and the cache that checks them.

A key is `mdm_sk_` followed by 43 base64url characters (32 random bytes, unpadded). Only the
SHA-256 hex digest of the whole key is stored; the plaintext is shown once, at creation.

`KeyCache` answers "which key is this, and may it be used?" without asking the database on
every request. Entries live `auth.cache_ttl`; unknown keys are remembered for the shorter
`auth.negative_cache_ttl`. Revocation does not wait for either: every gateway listens for
PostgreSQL notifications and calls `invalidate` (or `clear` after a reconnect, when
notifications may have been missed). While the database is unreachable, keys already known
as active keep working past their TTL; keys never seen get 503, not 401.

Unknown keys cost a caller nothing to invent, so they are remembered apart and within a bound
(`max_unknown`): expired entries are dropped first, then the oldest. Known keys are bounded by
the keys that exist.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from majordomo.errors import DatabaseUnavailable, Unauthorized
from majordomo.limits import NO_LIMITS, Limits

KEY_PREFIX = "mdm_sk_"
_KEY_RE = re.compile(r"^mdm_sk_[A-Za-z0-9_-]{43}$")


def generate_key() -> str:
    """A new plaintext key: `mdm_sk_` + base64url of 32 random bytes, without padding."""
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return KEY_PREFIX + token


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_well_formed(key: str) -> bool:
    """Whether `key` has the shape of a Majordomo key (checked before any lookup)."""
    return _KEY_RE.fullmatch(key) is not None


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """What the database says about a key hash."""

    key_id: uuid.UUID
    is_active: bool
    limits: Limits = NO_LIMITS


@dataclass(frozen=True, slots=True)
class _Entry:
    status: KeyStatus | None  # None: no such key
    expires_at: float


MISSING_KEY = (
    "missing X-Majordomo-Key header; send your Majordomo key (mdm_sk_...) in it or as the "
    "SDK's API key, or create one with 'majordomo keys create --name NAME'"
)
MALFORMED_KEY = (
    "X-Majordomo-Key is not a Majordomo key: expected mdm_sk_ followed by 43 characters, "
    "as printed by 'majordomo keys create'"
)
UNKNOWN_KEY = "unknown Majordomo key; create one with 'majordomo keys create --name NAME'"
REVOKED_KEY = "this Majordomo key has been revoked; create a new one with 'majordomo keys create'"
CANNOT_CHECK = (
    "cannot check the Majordomo key right now: the gateway's database is unreachable; "
    "retry in a moment"
)

Lookup = Callable[[str], Awaitable[KeyStatus | None]]

# Unknown keys remembered at most (about 200 bytes each): enough to absorb a client retrying
# a wrong key, too few for random keys to grow the process.
MAX_UNKNOWN_KEYS = 10_000


class KeyCache:
    def __init__(
        self,
        lookup: Lookup,
        *,
        ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = trio.current_time,
        max_unknown: int = MAX_UNKNOWN_KEYS,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._max_unknown = max_unknown
        self._entries: dict[str, _Entry] = {}  # known keys
        self._unknown: dict[str, _Entry] = {}  # unknown keys, oldest first
        self._generation = 0  # bumped by every invalidation

    async def authenticate(self, header: str | None) -> uuid.UUID:
        """The id of the active key in `header`; raises `Unauthorized` or `DatabaseUnavailable`."""
        return (await self.status(header)).key_id

    async def status(self, header: str | None) -> KeyStatus:
        """The active key in `header`, with its limits; raises like `authenticate`."""
        if not header:
            raise Unauthorized(MISSING_KEY)
        if not is_well_formed(header):
            raise Unauthorized(MALFORMED_KEY)
        key_hash = hash_key(header)
        entry = self._entries.get(key_hash) or self._unknown.get(key_hash)
        now = self._clock()
        if entry is None or entry.expires_at <= now:
            generation = self._generation
            try:
                status = await self._lookup(key_hash)
            except DatabaseUnavailable:
                if entry is None or entry.status is None or not entry.status.is_active:
                    raise DatabaseUnavailable(CANNOT_CHECK) from None
                status = entry.status  # known and active: keep serving while the db is away
            else:
                # A notification that arrived during the lookup may postdate what it read:
                # then the answer is used once but not remembered.
                if generation == self._generation:
                    self._remember(key_hash, status, now)
        else:
            status = entry.status
        if status is None:
            raise Unauthorized(UNKNOWN_KEY)
        if not status.is_active:
            raise Unauthorized(REVOKED_KEY)
        return status

    def _remember(self, key_hash: str, status: KeyStatus | None, now: float) -> None:
        if status is not None:
            self._unknown.pop(key_hash, None)
            self._entries[key_hash] = _Entry(status, now + self._ttl)
            return
        self._entries.pop(key_hash, None)
        unknown = self._unknown
        unknown.pop(key_hash, None)  # re-inserted last: the dict stays ordered by age
        if len(unknown) >= self._max_unknown:
            for stale in [k for k, e in unknown.items() if e.expires_at <= now]:
                del unknown[stale]
            while len(unknown) >= self._max_unknown:
                del unknown[next(iter(unknown))]
        unknown[key_hash] = _Entry(None, now + self._negative_ttl)

    def invalidate(self, key_hash: str) -> None:
        """Forget one key (it was revoked or changed)."""
        self._generation += 1
        self._entries.pop(key_hash, None)
        self._unknown.pop(key_hash, None)

    def clear(self) -> None:
        """Forget every key (notifications may have been missed)."""
        self._generation += 1
        self._entries.clear()
        self._unknown.clear()

    def __len__(self) -> int:
        return len(self._entries) + len(self._unknown)
