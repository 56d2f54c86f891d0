"""Which provider credential goes upstream for a request that does not carry its own.

Theory of operation
-------------------
A request either carries the provider credential itself (pass-through: nothing here is
asked), or lets the gateway supply it:

* a proxy key (`mdm_pk_…`) where the SDK puts its api_key, with the Majordomo key in
  `X-Majordomo-Key`: the credential the proxy key holds for the detected provider;
* the Majordomo key itself where the SDK puts its api_key: the credential held for that key,
  else the gateway-wide `providers.<name>.api_key`.

`HeldCredentials` answers from memory: lookups (one query each) are remembered for
`auth.cache_ttl`, unknown proxy keys for `auth.negative_cache_ttl`, and everything is
forgotten at once when any gateway changes a credential or revokes a proxy key (the
`majordomo_credentials` notification calls `clear`). Decrypted credentials live only here, in
memory. While the database is unreachable, what is remembered keeps serving; what is not
gets 503.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

from majordomo.db.credentials import API_KEY, PROXY_KEY, ProxyKeyLookup
from majordomo.errors import DatabaseUnavailable, Unauthorized
from majordomo.limits import NO_LIMITS, Limits
from majordomo.vault import CREDENTIALS_OFF, CannotOpen, Vault

PROXY_KEY_PREFIX = "mdm_pk_"
_PROXY_KEY_RE = re.compile(r"^mdm_pk_[A-Za-z0-9_-]{43}$")
# Entries remembered at most; past it the oldest go (a caller can invent proxy keys).
MAX_ENTRIES = 10_000


def generate_proxy_key() -> str:
    """A new proxy key: `mdm_pk_` + base64url of 32 random bytes, without padding."""
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return PROXY_KEY_PREFIX + token


def hash_proxy_key(key: str) -> str:
    """The SHA-256 hex digest under which a proxy key is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Held:
    """The credential to send upstream, and the proxy key it came from (if any)."""

    secret: str
    proxy_key_id: uuid.UUID | None = None
    limits: Limits = NO_LIMITS  # the proxy key's


@dataclass(frozen=True, slots=True)
class _Lookup:
    """What the database said, before the checks that depend on the request."""

    proxy_key_id: uuid.UUID | None
    owner_key_id: uuid.UUID | None  # a proxy key's Majordomo key
    is_active: bool
    secret: str | None  # opened; None: no credential for the provider
    unreadable: str | None  # why a stored credential could not be opened
    limits: Limits = NO_LIMITS


@dataclass(frozen=True, slots=True)
class _Entry:
    lookup: _Lookup | None  # None: no such proxy key
    expires_at: float


def _set_provider_hint(kind: str, provider: str) -> str:
    return f"'majordomo {kind} set-provider ID --provider {provider} --api-key -'"


class HeldCredentials:
    def __init__(
        self,
        *,
        find_proxy_key: Callable[[str, str], Awaitable[ProxyKeyLookup | None]],
        find_key_credential: Callable[[uuid.UUID, str], Awaitable[str | None]],
        vault: Vault | None,
        defaults: Mapping[str, str],
        ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._find_proxy_key = find_proxy_key
        self._find_key_credential = find_key_credential
        self._vault = vault
        self._defaults = {name: value for name, value in defaults.items() if value}
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._entries: dict[tuple[str, str, str], _Entry] = {}
        self._generation = 0

    @property
    def enabled(self) -> bool:
        """Whether credentials can be held (an encryption key is available)."""
        return self._vault is not None

    async def for_proxy_key(self, key_id: uuid.UUID, proxy_key: str, provider: str) -> Held:
        """The credential proxy key `proxy_key` holds for `provider`, checked against the
        Majordomo key `key_id`; raises `Unauthorized` saying why not."""
        if self._vault is None:
            raise Unauthorized(f"a proxy key was sent, but {CREDENTIALS_OFF}")
        if _PROXY_KEY_RE.fullmatch(proxy_key) is None:
            raise Unauthorized(
                "the proxy key is malformed: expected mdm_pk_ followed by 43 characters, as "
                "printed by 'majordomo proxy-keys create'"
            )
        key_hash = hash_proxy_key(proxy_key)
        lookup = await self._remembered(("proxy", key_hash, provider), self._proxy_lookup)
        if lookup is None:
            raise Unauthorized(
                "unknown proxy key; create one with 'majordomo proxy-keys create --name NAME "
                "--majordomo-key-id ID'"
            )
        if not lookup.is_active:
            raise Unauthorized(
                f"proxy key {lookup.proxy_key_id} has been revoked; create a new one with "
                "'majordomo proxy-keys create'"
            )
        if lookup.owner_key_id != key_id:
            raise Unauthorized(
                f"proxy key {lookup.proxy_key_id} belongs to another Majordomo key; send it "
                "with the Majordomo key it was created for"
            )
        if lookup.unreadable is not None:
            raise Unauthorized(
                f"the {provider} credential of proxy key {lookup.proxy_key_id} cannot be "
                f"opened: {lookup.unreadable}"
            )
        if lookup.secret is None:
            raise Unauthorized(
                f"proxy key {lookup.proxy_key_id} holds no {provider} credential; add one with "
                + _set_provider_hint("proxy-keys", provider)
            )
        return Held(lookup.secret, lookup.proxy_key_id, lookup.limits)

    async def for_key(self, key_id: uuid.UUID, provider: str) -> Held:
        """The credential held for Majordomo key `key_id` and `provider`, else the gateway's
        default for `provider`; raises `Unauthorized` saying how to add one."""
        lookup: _Lookup | None = None
        if self._vault is not None:
            lookup = await self._remembered(("key", str(key_id), provider), self._key_lookup)
        if lookup is not None and lookup.unreadable is not None:
            raise Unauthorized(
                f"the {provider} credential held for key {key_id} cannot be opened: "
                f"{lookup.unreadable}"
            )
        if lookup is not None and lookup.secret is not None:
            return Held(lookup.secret)
        default = self._defaults.get(provider)
        if default is not None:
            return Held(default)
        how = (
            f"add one with {_set_provider_hint('keys', provider)}, "
            if self._vault is not None
            else f"({CREDENTIALS_OFF}), "
        )
        raise Unauthorized(
            f"the Majordomo key was sent as the {provider} API key, and no {provider} "
            f"credential is held for it: {how}set providers.{provider}.api_key for every "
            "caller, or send the Majordomo key in X-Majordomo-Key and your own provider key "
            "as the API key"
        )

    async def _proxy_lookup(self, key_hash: str, provider: str) -> _Lookup | None:
        found = await self._find_proxy_key(key_hash, provider)
        if found is None:
            return None
        secret, unreadable = self._open(found.encrypted_key, PROXY_KEY.context(found.id, provider))
        return _Lookup(
            found.id, found.majordomo_api_key_id, found.is_active, secret, unreadable, found.limits
        )

    async def _key_lookup(self, key_id: str, provider: str) -> _Lookup:
        owner = uuid.UUID(key_id)
        stored = await self._find_key_credential(owner, provider)
        secret, unreadable = self._open(stored, API_KEY.context(owner, provider))
        return _Lookup(None, owner, True, secret, unreadable)

    def _open(self, stored: str | None, context: str) -> tuple[str | None, str | None]:
        if stored is None or self._vault is None:
            return None, None
        try:
            return self._vault.open(stored, context), None
        except CannotOpen as exc:
            return None, str(exc)

    async def _remembered(
        self,
        cache_key: tuple[str, str, str],
        lookup: Callable[[str, str], Awaitable[_Lookup | None]],
    ) -> _Lookup | None:
        entry = self._entries.get(cache_key)
        now = self._clock()
        if entry is not None and entry.expires_at > now:
            return entry.lookup
        generation = self._generation
        try:
            found = await lookup(cache_key[1], cache_key[2])
        except DatabaseUnavailable:
            if entry is not None:
                return entry.lookup  # keep serving what was known while the db is away
            raise DatabaseUnavailable(
                "cannot check the held credential right now: the gateway's database is "
                "unreachable; retry in a moment"
            ) from None
        # A change announced during the lookup may postdate what it read: use, not remember.
        if generation == self._generation:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.pop(next(iter(self._entries)))
            ttl = self._ttl if found is not None else self._negative_ttl
            self._entries.pop(cache_key, None)
            self._entries[cache_key] = _Entry(found, now + ttl)
        return found

    def clear(self) -> None:
        """Forget everything (a credential or proxy key changed somewhere)."""
        self._generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
