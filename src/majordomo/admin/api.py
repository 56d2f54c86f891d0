"""The admin API (`/api/v1/admin/…`, JWT) and the self-service routes (`/api/v1/proxy-keys…`,
`X-Majordomo-Key`), at the Go gateway's paths and with its JSON field names.

Every route is one `Route` in `ROUTES`: its method, path, who may call it, a summary and its
handler. The Quart app is built from that table, and so is `GET /api/v1/openapi.json`, so the
description cannot drift from what is served. Every answer is JSON, errors too:
`{"error": {"message": …, "type": …}}` with the status that fits, never a traceback. Each
change is recorded in `admin_audit` (who, what, when, from where).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from majordomo.admin.auth import ADMIN_API_OFF, InvalidToken, LoginThrottle, Tokens
from majordomo.auth import generate_key, hash_key
from majordomo.credentials import generate_proxy_key, hash_proxy_key
from majordomo.db import ApiKey, ProxyKey, User
from majordomo.db.credentials import API_KEY, PROXY_KEY, Owner
from majordomo.db.reports import LogFilter
from majordomo.db.users import ROLES, check_username
from majordomo.errors import DatabaseUnavailable, MajordomoError, Unauthorized
from majordomo.limits import MAX_RATE, Limits
from majordomo.passwords import check_strength, hash_password, needs_rehash, verify_password
from majordomo.providers import PROVIDER_NAMES
from majordomo.vault import CREDENTIALS_OFF, hint

if TYPE_CHECKING:
    from majordomo.server import GatewayState

log = logging.getLogger("majordomo.admin")

PREFIX = "/api/v1"
# Largest JSON body an admin route reads; larger ones get 413.
MAX_BODY = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after: int | None = None

    def with_retry_after(self, seconds: int) -> ApiError:
        self.retry_after = seconds
        return self


def error_response(status: int, message: str, kind: str) -> Response:
    body = json.dumps({"error": {"message": message, "type": kind}})
    return Response(body, status=status, content_type="application/json")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error")


def not_found(message: str) -> ApiError:
    return ApiError(404, message, "not_found_error")


@dataclass
class Call:
    """One call to a route: who made it, what it sent."""

    state: GatewayState
    body: dict[str, Any]
    args: dict[str, str]
    address: str
    user: User | None = None
    key_id: uuid.UUID | None = None  # self-service: the caller's Majordomo key

    @property
    def me(self) -> User:
        assert self.user is not None  # routes that need a user are registered so
        return self.user

    async def audit(self, action: str, target_type: str, target_id: object, **details: Any) -> None:
        actor = self.user.username if self.user else f"key {self.key_id}"
        await self.state.db.users.audit(
            actor=actor,
            actor_user_id=self.user.id if self.user else None,
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            details=details,
            client_address=self.address,
        )


Handler = Callable[..., Awaitable[tuple[Any, int]]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI's spelling: {name} for a path parameter
    auth: str  # "none", "user", "admin" or "key"
    summary: str
    handler: Handler
    body: tuple[str, ...] = ()  # the JSON fields it reads, for the description

    @property
    def quart_path(self) -> str:
        return re.sub(r"\{(\w+)\}", r"<\1>", self.path)


# -- reading what was sent ----------------------------------------------------------------


def text(body: dict[str, Any], name: str, *, required: bool, limit: int = 200) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(f"'{name}' is required")
        return None
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string")
    if required and not value.strip():
        raise bad_request(f"'{name}' must not be empty")
    if len(value) > limit:
        raise bad_request(f"'{name}' is longer than {limit} characters")
    return value


def parse_id(raw: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise bad_request(f"{raw[:80]!r} is not a {what} id (a UUID)") from None


def parse_provider(call: Call, raw: str) -> str:
    """A built-in provider's name, or one of `providers.extra`."""
    known = (*PROVIDER_NAMES, *call.state.settings.providers.extra)
    if raw not in known:
        raise bad_request(f"{raw[:40]!r} is not a provider; use one of {', '.join(known)}")
    return raw


# -- ownership ----------------------------------------------------------------------------


async def owned_key(call: Call, raw_id: str) -> ApiKey:
    """The Majordomo key `raw_id`, if the caller may see it (admins: any; members: theirs)."""
    key_id = parse_id(raw_id, "key")
    try:
        key = await call.state.db.keys.get(key_id)
    except MajordomoError:
        raise not_found(f"no key with id {key_id}") from None
    if not call.me.is_admin and key.user_id != call.me.id:
        raise ApiError(403, f"key {key_id} belongs to another user", "permission_error")
    return key


async def proxy_key_of(call: Call, key_id: uuid.UUID, raw_id: str) -> ProxyKey:
    proxy_key_id = parse_id(raw_id, "proxy key")
    try:
        proxy_key = await call.state.db.credentials.get_proxy_key(proxy_key_id)
    except MajordomoError:
        raise not_found(f"no proxy key with id {proxy_key_id}") from None
    if proxy_key.majordomo_api_key_id != key_id:
        raise not_found(f"key {key_id} has no proxy key {proxy_key_id}")
    return proxy_key


# -- login and the caller's own account ---------------------------------------------------


async def login(call: Call) -> tuple[Any, int]:
    username = text(call.body, "username", required=True) or ""
    password = text(call.body, "password", required=True, limit=1024) or ""
    throttle: LoginThrottle = call.state.login_throttle
    wait = throttle.retry_after(username, call.address)
    if wait is not None:
        raise ApiError(
            429, f"too many failed logins; try again in {wait} s", "rate_limit_error"
        ).with_retry_after(wait)
    found = await call.state.db.users.credentials(username)
    stored = found[1] if found else _dummy_hash()  # the same work whether or not one exists
    matches = await trio.to_thread.run_sync(verify_password, stored, password)
    if found is None or not matches or not found[0].is_active:
        throttle.failed(username, call.address)
        raise ApiError(401, "wrong username or password", "authentication_error")
    user = found[0]
    throttle.succeeded(username)
    rehashed = None
    if needs_rehash(stored):  # a bcrypt hash from the Go gateway becomes argon2id
        rehashed = await trio.to_thread.run_sync(hash_password, password)
    await call.state.db.users.logged_in(user.id, rehashed)
    token = tokens(call).issue(user.id, user.username)
    call.user = user
    await call.audit("user.login", "user", user.id)
    return {"token": token, "user": (await call.state.db.users.get(user.id)).as_json()}, 200


@functools.cache
def _dummy_hash() -> str:
    return hash_password("not a password anyone has: only spends the time of a check")


def tokens(call: Call) -> Tokens:
    secret = call.state.jwt_secret
    assert secret is not None  # admin routes answer 404 before this when it is off
    return Tokens(secret, call.state.settings.jwt.expiry)


async def me(call: Call) -> tuple[Any, int]:
    return call.me.as_json(), 200


async def change_my_password(call: Call) -> tuple[Any, int]:
    current = text(call.body, "current_password", required=True, limit=1024) or ""
    new = text(call.body, "new_password", required=True, limit=1024) or ""
    stored = await call.state.db.users.password_hash(call.me.id)
    if not await trio.to_thread.run_sync(verify_password, stored, current):
        raise ApiError(401, "the current password is wrong", "authentication_error")
    _strong(new)
    new_hash = await trio.to_thread.run_sync(hash_password, new)
    await call.state.db.users.update(call.me.id, password_hash=new_hash)
    await call.audit("user.change_password", "user", call.me.id)
    return {"message": "password changed"}, 200


def _strong(password: str) -> None:
    try:
        check_strength(password)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


# -- API keys -----------------------------------------------------------------------------


async def list_keys(call: Call) -> tuple[Any, int]:
    owner: uuid.UUID | None = call.me.id
    if call.me.is_admin:
        raw = call.args.get("user_id")
        owner = parse_id(raw, "user") if raw else None
    return [k.as_json() for k in await call.state.db.keys.list(owner)], 200


async def create_key(call: Call) -> tuple[Any, int]:
    name = text(call.body, "name", required=True) or ""
    description = text(call.body, "description", required=False, limit=2000)
    owner = call.me.id
    if call.me.is_admin and call.body.get("user_id") is not None:
        owner = parse_id(str(call.body["user_id"]), "user")
        try:
            await call.state.db.users.get(owner)
        except MajordomoError:
            raise not_found(f"no user with id {owner}") from None
    plaintext = generate_key()
    key = await call.state.db.keys.create(hash_key(plaintext), name, description, owner)
    await call.audit("api_key.create", "api_key", key.id, name=name)
    return {**key.as_json(), "key": plaintext}, 201


async def get_key(call: Call, id: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    windows = await call.state.db.limits.windows(key.id, key.limits, datetime.now(UTC))
    return {**key.as_json(), "windows": windows}, 200


def _limits(body: dict[str, Any], current: Limits) -> Limits | None:
    """The `limits` object of a request body over a key's current limits; None when absent.
    Each field given replaces that limit (null clears it); fields left out keep theirs."""
    raw = body.get("limits")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise bad_request("'limits' must be an object: {budget_usd, budget_period, rpm, tpm}")
    unknown = set(raw) - {"budget_usd", "budget_period", "rpm", "tpm"}
    if unknown:
        raise bad_request(
            f"unknown limit {sorted(unknown)[0]!r}; limits are budget_usd, budget_period, rpm, tpm"
        )
    for name in ("rpm", "tpm"):
        value = raw.get(name)
        if value is not None and (type(value) is not int or not 0 < value <= MAX_RATE):
            raise bad_request(
                f"'limits.{name}' must be a whole number from 1 to {MAX_RATE}, or null"
            )
    budget: Decimal | None = current.budget_usd
    if "budget_usd" in raw:
        given = raw["budget_usd"]
        if given is not None and (type(given) not in (int, float) or given < 0):
            raise bad_request(
                "'limits.budget_usd' must be a number of dollars (0 or more), or null"
            )
        budget = Decimal(str(given)) if given is not None else None
    period = raw.get("budget_period", current.budget_period or "day")
    if period not in ("day", "month"):
        raise bad_request("'limits.budget_period' must be 'day' or 'month'")
    return Limits(
        budget_usd=budget,
        budget_period=period if budget is not None else None,
        rpm=raw.get("rpm", current.rpm),
        tpm=raw.get("tpm", current.tpm),
    )


async def update_key(call: Call, id: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    name = text(call.body, "name", required=False)
    if name is not None and not name.strip():
        raise bad_request("'name' must not be empty")
    description = text(call.body, "description", required=False, limit=2000)
    limits = _limits(call.body, key.limits)
    if limits is not None and not call.me.is_admin:
        raise ApiError(403, "only an admin sets a key's limits", "permission_error")
    updated = await call.state.db.keys.update(key.id, name=name, description=description)
    if limits is not None:
        updated = await call.state.db.keys.set_limits(key.id, limits)
    details: dict[str, Any] = {"name": name, "description": description}
    if limits is not None:
        details["limits"] = limits.as_json()
    await call.audit("api_key.update", "api_key", key.id, **details)
    return updated.as_json(), 200


async def revoke_key(call: Call, id: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    try:
        revoked = await call.state.db.keys.revoke(key.id)
    except MajordomoError as exc:
        raise ApiError(409, str(exc), "conflict_error") from None
    await call.audit("api_key.revoke", "api_key", key.id)
    return revoked.as_json(), 200


# -- proxy keys and their providers (admin paths and self-service share these) --------------


async def _list_proxy_keys(call: Call, key_id: uuid.UUID) -> tuple[Any, int]:
    keys = await call.state.db.credentials.list_proxy_keys(key_id)
    return [k.as_json() for k in keys], 200


async def _create_proxy_key(call: Call, key_id: uuid.UUID) -> tuple[Any, int]:
    name = text(call.body, "name", required=True) or ""
    description = text(call.body, "description", required=False, limit=2000)
    plaintext = generate_proxy_key()
    try:
        proxy_key = await call.state.db.credentials.create_proxy_key(
            hash_proxy_key(plaintext), name, description, key_id
        )
    except MajordomoError as exc:
        raise ApiError(409, str(exc), "conflict_error") from None
    await call.audit("proxy_key.create", "proxy_key", proxy_key.id, name=name)
    return {**proxy_key.as_json(), "key": plaintext}, 201


async def _revoke_proxy_key(call: Call, proxy_key: ProxyKey) -> tuple[Any, int]:
    try:
        revoked = await call.state.db.credentials.revoke_proxy_key(proxy_key.id)
    except MajordomoError as exc:
        raise ApiError(409, str(exc), "conflict_error") from None
    await call.audit("proxy_key.revoke", "proxy_key", proxy_key.id)
    return revoked.as_json(), 200


async def _list_providers(call: Call, owner: Owner, owner_id: uuid.UUID) -> tuple[Any, int]:
    mappings = await call.state.db.credentials.list_credentials(owner, owner_id)
    return [m.as_json(owner.column) for m in mappings], 200


async def _set_provider(
    call: Call, owner: Owner, owner_id: uuid.UUID, provider: str
) -> tuple[Any, int]:
    name = parse_provider(call, provider)
    secret = text(call.body, "api_key", required=True, limit=4096) or ""
    if not all(33 <= ord(c) <= 126 for c in secret) or secret.startswith(("mdm_sk_", "mdm_pk_")):
        raise bad_request("'api_key' must be the provider's own API key (printable, no spaces)")
    vault = call.state.vault
    if vault is None:
        raise ApiError(409, f"cannot hold a credential: {CREDENTIALS_OFF}", "conflict_error")
    sealed = vault.seal(secret, owner.context(owner_id, name))
    mapping = await call.state.db.credentials.set_credential(
        owner, owner_id, name, sealed, hint(secret)
    )
    await call.audit("credential.set", owner.kind.replace(" ", "_"), owner_id, provider=name)
    return mapping.as_json(owner.column), 200


async def _remove_provider(
    call: Call, owner: Owner, owner_id: uuid.UUID, provider: str
) -> tuple[Any, int]:
    name = parse_provider(call, provider)
    try:
        await call.state.db.credentials.remove_credential(owner, owner_id, name)
    except MajordomoError as exc:
        raise not_found(str(exc)) from None
    await call.audit("credential.remove", owner.kind.replace(" ", "_"), owner_id, provider=name)
    return {"message": f"removed the {name} credential"}, 200


async def admin_list_proxy_keys(call: Call, id: str) -> tuple[Any, int]:
    return await _list_proxy_keys(call, (await owned_key(call, id)).id)


async def admin_create_proxy_key(call: Call, id: str) -> tuple[Any, int]:
    return await _create_proxy_key(call, (await owned_key(call, id)).id)


async def admin_get_proxy_key(call: Call, id: str, pk_id: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    proxy_key = await proxy_key_of(call, key.id, pk_id)
    windows = await call.state.db.limits.windows(
        proxy_key.id, proxy_key.limits, datetime.now(UTC), proxy_key=True
    )
    return {**proxy_key.as_json(), "windows": windows}, 200


async def admin_update_proxy_key(call: Call, id: str, pk_id: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    proxy_key = await proxy_key_of(call, key.id, pk_id)
    limits = _limits(call.body, proxy_key.limits)
    if limits is None:
        raise bad_request("nothing to update; send a 'limits' object")
    if not call.me.is_admin:
        raise ApiError(403, "only an admin sets a proxy key's limits", "permission_error")
    updated = await call.state.db.credentials.set_proxy_key_limits(proxy_key.id, limits)
    await call.audit("proxy_key.update", "proxy_key", proxy_key.id, limits=limits.as_json())
    return updated.as_json(), 200


async def admin_revoke_proxy_key(call: Call, id: str, pk_id: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    return await _revoke_proxy_key(call, await proxy_key_of(call, key.id, pk_id))


async def admin_list_providers(call: Call, id: str, pk_id: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    proxy_key = await proxy_key_of(call, key.id, pk_id)
    return await _list_providers(call, PROXY_KEY, proxy_key.id)


async def admin_set_provider(call: Call, id: str, pk_id: str, provider: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    proxy_key = await proxy_key_of(call, key.id, pk_id)
    return await _set_provider(call, PROXY_KEY, proxy_key.id, provider)


async def admin_remove_provider(call: Call, id: str, pk_id: str, provider: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    proxy_key = await proxy_key_of(call, key.id, pk_id)
    return await _remove_provider(call, PROXY_KEY, proxy_key.id, provider)


async def key_list_providers(call: Call, id: str) -> tuple[Any, int]:
    return await _list_providers(call, API_KEY, (await owned_key(call, id)).id)


async def key_set_provider(call: Call, id: str, provider: str) -> tuple[Any, int]:
    return await _set_provider(call, API_KEY, (await owned_key(call, id)).id, provider)


async def key_remove_provider(call: Call, id: str, provider: str) -> tuple[Any, int]:
    return await _remove_provider(call, API_KEY, (await owned_key(call, id)).id, provider)


# Self-service: the caller's own Majordomo key (X-Majordomo-Key) owns the proxy keys.


def _my_key(call: Call) -> uuid.UUID:
    assert call.key_id is not None  # "key" routes are authenticated so
    return call.key_id


async def self_list_proxy_keys(call: Call) -> tuple[Any, int]:
    return await _list_proxy_keys(call, _my_key(call))


async def self_create_proxy_key(call: Call) -> tuple[Any, int]:
    return await _create_proxy_key(call, _my_key(call))


async def self_get_proxy_key(call: Call, id: str) -> tuple[Any, int]:
    return (await proxy_key_of(call, _my_key(call), id)).as_json(), 200


async def self_revoke_proxy_key(call: Call, id: str) -> tuple[Any, int]:
    return await _revoke_proxy_key(call, await proxy_key_of(call, _my_key(call), id))


async def self_list_providers(call: Call, id: str) -> tuple[Any, int]:
    proxy_key = await proxy_key_of(call, _my_key(call), id)
    return await _list_providers(call, PROXY_KEY, proxy_key.id)


async def self_set_provider(call: Call, id: str, provider: str) -> tuple[Any, int]:
    proxy_key = await proxy_key_of(call, _my_key(call), id)
    return await _set_provider(call, PROXY_KEY, proxy_key.id, provider)


async def self_remove_provider(call: Call, id: str, provider: str) -> tuple[Any, int]:
    proxy_key = await proxy_key_of(call, _my_key(call), id)
    return await _remove_provider(call, PROXY_KEY, proxy_key.id, provider)


# -- users and the audit trail (admins) ---------------------------------------------------


async def list_users(call: Call) -> tuple[Any, int]:
    return [u.as_json() for u in await call.state.db.users.list()], 200


def _role(body: dict[str, Any], *, required: bool) -> str | None:
    role = text(body, "role", required=required)
    if role is not None and role not in ROLES:
        raise bad_request(f"'role' must be one of {', '.join(ROLES)}")
    return role


async def create_user(call: Call) -> tuple[Any, int]:
    username = text(call.body, "username", required=True, limit=64) or ""
    password = text(call.body, "password", required=True, limit=1024) or ""
    role = _role(call.body, required=False) or "member"
    try:
        check_username(username)
    except MajordomoError as exc:
        raise bad_request(str(exc)) from None
    _strong(password)
    password_hash = await trio.to_thread.run_sync(hash_password, password)
    try:
        user = await call.state.db.users.create(username, password_hash, role)
    except MajordomoError as exc:
        raise ApiError(409, str(exc), "conflict_error") from None
    await call.audit("user.create", "user", user.id, username=username, role=role)
    return user.as_json(), 201


async def update_user(call: Call, id: str) -> tuple[Any, int]:
    user_id = parse_id(id, "user")
    role = _role(call.body, required=False)
    active = call.body.get("is_active")
    if active is not None and not isinstance(active, bool):
        raise bad_request("'is_active' must be true or false")
    password = text(call.body, "password", required=False, limit=1024)
    password_hash = None
    if password is not None:
        _strong(password)
        password_hash = await trio.to_thread.run_sync(hash_password, password)
    if user_id == call.me.id and (active is False or role == "member"):
        raise ApiError(409, "you cannot disable or demote yourself", "conflict_error")
    try:
        user = await call.state.db.users.update(
            user_id, password_hash=password_hash, is_active=active, role=role
        )
    except MajordomoError:
        raise not_found(f"no user with id {user_id}") from None
    changed = {k: v for k, v in (("role", role), ("is_active", active)) if v is not None}
    if password is not None:
        changed["password"] = "changed"
    await call.audit("user.update", "user", user.id, **changed)
    return user.as_json(), 200


async def audit_log(call: Call) -> tuple[Any, int]:
    limit = _int_arg(call, "limit", 50, 1, 1000)
    before = call.args.get("before")
    entries = await call.state.db.users.audit_log(
        limit=limit, before=_int_arg(call, "before", 0, 1, 2**62) if before else None
    )
    return [e.as_json() for e in entries], 200


def _int_arg(call: Call, name: str, default: int, low: int, high: int) -> int:
    raw = call.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise bad_request(f"'{name}' must be a whole number from {low} to {high}")
    return int(raw)


async def usage(call: Call) -> tuple[Any, int]:
    """The same report as `majordomo usage --json` (the same query and JSON), for the caller's
    own requests unless an admin."""
    from majordomo.cli.usage import load_report, parse_grouping, parse_window, report_json

    try:
        grouping = parse_grouping(call.args.get("by", "model"))
        since, until = parse_window(
            call.args.get("since"), call.args.get("until"), datetime.now(UTC)
        )
    except MajordomoError as exc:
        raise bad_request(str(exc).replace("--", "")) from None
    key_id = None
    if call.args.get("key_id"):
        key_id = (await owned_key(call, call.args["key_id"])).id
    user_id: uuid.UUID | None = call.me.id
    if call.me.is_admin:
        raw = call.args.get("user_id")
        user_id = parse_id(raw, "user") if raw else None
    report = await load_report(
        call.state.db, since, until, grouping, key_id=key_id, user_id=user_id
    )
    return report_json(report), 200


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.items():
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        elif name in ("raw_metadata", "indexed_metadata") and isinstance(value, str):
            value = json.loads(value)
        out[name] = value
    return out


def _cursor(row: dict[str, Any]) -> str:
    text = f"{row['requested_at'].isoformat()}|{row['id']}"
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _parse_cursor(raw: str) -> tuple[datetime, uuid.UUID]:
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        at, _, request_id = text.partition("|")
        return datetime.fromisoformat(at), uuid.UUID(request_id)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("'before' is not a cursor from this list's next_cursor") from None


def _moment_arg(call: Call, name: str) -> datetime | None:
    raw = call.args.get(name)
    if not raw:
        return None
    from majordomo.cli.usage import parse_moment

    try:
        return parse_moment(raw, name, datetime.now(UTC), end_of_day=name == "until")
    except MajordomoError as exc:
        raise bad_request(str(exc)) from None


async def list_requests(call: Call) -> tuple[Any, int]:
    """The request log, newest first, keyset-paginated (`before` = the last `next_cursor`)."""
    limit = _int_arg(call, "limit", 50, 1, 500)
    key_id = (await owned_key(call, call.args["key_id"])).id if call.args.get("key_id") else None
    user_id: uuid.UUID | None = call.me.id
    if call.me.is_admin:
        raw = call.args.get("user_id")
        user_id = parse_id(raw, "user") if raw else None
    status = _int_arg(call, "status", 0, 100, 599) if call.args.get("status") else None
    metadata = {
        name[len("meta.") :].lower(): value
        for name, value in call.args.items()
        if name.startswith("meta.") and len(name) > len("meta.")
    }
    filters = LogFilter(
        key_id=key_id,
        user_id=user_id,
        model=call.args.get("model") or None,
        provider=call.args.get("provider") or None,
        status=status,
        since=_moment_arg(call, "since"),
        until=_moment_arg(call, "until"),
        metadata=metadata,
    )
    before = _parse_cursor(call.args["before"]) if call.args.get("before") else None
    rows = await call.state.db.reports.request_log(filters, before=before, limit=limit + 1)
    page = rows[:limit]
    next_cursor = _cursor(page[-1]) if len(rows) > limit else None
    return {"requests": [_jsonable(r) for r in page], "next_cursor": next_cursor}, 200


async def get_request(call: Call, id: str) -> tuple[Any, int]:
    """One request with every stored column, and its bodies (from PostgreSQL or S3)."""
    request_id = parse_id(id, "request")
    row = await call.state.db.reports.request(request_id)
    if row is None:
        raise not_found(f"no request with id {request_id}")
    if not call.me.is_admin and row["user_id"] != call.me.id:
        raise ApiError(403, f"request {request_id} belongs to another user", "permission_error")
    detail = _jsonable(row)
    # With body_storage s3 the bodies are one object; with postgres, in the row's columns.
    key = row["body_s3_key"]
    detail["stored_bodies"] = await call.state.bodies.fetch(key) if key else None
    return detail, 200


async def list_metadata_keys(call: Call, id: str) -> tuple[Any, int]:
    key = await owned_key(call, id)
    return [m.as_json() for m in await call.state.db.metadata.list(key.id)], 200


async def _set_metadata(call: Call, id: str, name: str, active: bool) -> tuple[Any, int]:
    key = await owned_key(call, id)
    clean = name.strip().lower().removeprefix("x-majordomo-")
    if not clean or len(clean) > 128:
        raise bad_request("a metadata key name has 1 to 128 characters")
    found = await call.state.db.metadata.set_active(key.id, clean, active)
    action = "metadata_key.activate" if active else "metadata_key.deactivate"
    await call.audit(action, "api_key", key.id, key_name=clean)
    return found.as_json(), 200


async def activate_metadata_key(call: Call, id: str, name: str) -> tuple[Any, int]:
    """Copy this metadata key into `indexed_metadata` from now on, as `metadata activate`."""
    return await _set_metadata(call, id, name, True)


async def deactivate_metadata_key(call: Call, id: str, name: str) -> tuple[Any, int]:
    return await _set_metadata(call, id, name, False)


async def openapi(call: Call) -> tuple[Any, int]:
    return describe(ROUTES), 200


ADMIN = f"{PREFIX}/admin"
KEY = f"{ADMIN}/api-keys/{{id}}"
PK = f"{KEY}/proxy-keys/{{pk_id}}"
SELF = f"{PREFIX}/proxy-keys"

ROUTES: tuple[Route, ...] = (
    Route("POST", f"{ADMIN}/login", "none", "Log in; returns a token", login, ("username", "password")),
    Route("GET", f"{ADMIN}/me", "user", "The logged-in user", me),
    Route("PUT", f"{ADMIN}/me/password", "user", "Change your password", change_my_password, ("current_password", "new_password")),
    Route("GET", f"{ADMIN}/api-keys", "user", "Your keys (admins: all, or ?user_id=)", list_keys),
    Route("POST", f"{ADMIN}/api-keys", "user", "Create a key; the plaintext is in `key`, once", create_key, ("name", "description", "user_id")),
    Route("GET", KEY, "user", "One key", get_key),
    Route("PUT", KEY, "user", "Rename or describe a key; admins set its limits", update_key, ("name", "description", "limits")),
    Route("DELETE", KEY, "user", "Revoke a key", revoke_key),
    Route("GET", f"{KEY}/providers", "user", "Credentials held for a key (hints)", key_list_providers),
    Route("PUT", f"{KEY}/providers/{{provider}}", "user", "Hold a credential for a key", key_set_provider, ("api_key",)),
    Route("DELETE", f"{KEY}/providers/{{provider}}", "user", "Remove a key's credential", key_remove_provider),
    Route("GET", f"{KEY}/metadata-keys", "user", "Metadata keys the key has sent", list_metadata_keys),
    Route("PUT", f"{KEY}/metadata-keys/{{name}}/active", "user", "Activate a metadata key (index it)", activate_metadata_key),
    Route("DELETE", f"{KEY}/metadata-keys/{{name}}/active", "user", "Deactivate a metadata key", deactivate_metadata_key),
    Route("GET", f"{KEY}/proxy-keys", "user", "A key's proxy keys", admin_list_proxy_keys),
    Route("POST", f"{KEY}/proxy-keys", "user", "Create a proxy key; the plaintext is in `key`, once", admin_create_proxy_key, ("name", "description")),
    Route("GET", PK, "user", "One proxy key", admin_get_proxy_key),
    Route("PUT", PK, "user", "Set a proxy key's limits (admins)", admin_update_proxy_key, ("limits",)),
    Route("DELETE", PK, "user", "Revoke a proxy key", admin_revoke_proxy_key),
    Route("GET", f"{PK}/providers", "user", "A proxy key's credentials (hints)", admin_list_providers),
    Route("PUT", f"{PK}/providers/{{provider}}", "user", "Hold a credential for a proxy key", admin_set_provider, ("api_key",)),
    Route("DELETE", f"{PK}/providers/{{provider}}", "user", "Remove a proxy key's credential", admin_remove_provider),
    Route("GET", f"{ADMIN}/usage", "user", "Spend and tokens (?since=&until=&by=&key_id=&user_id=), as majordomo usage --json", usage),
    Route("GET", f"{ADMIN}/requests", "user", "The request log, newest first (?before=&limit=&key_id=&model=&provider=&status=&since=&until=&meta.NAME=)", list_requests),
    Route("GET", f"{ADMIN}/requests/{{id}}", "user", "One request, with its stored bodies", get_request),
    Route("GET", f"{ADMIN}/users", "admin", "Every user", list_users),
    Route("POST", f"{ADMIN}/users", "admin", "Create a user", create_user, ("username", "password", "role")),
    Route("PUT", f"{ADMIN}/users/{{id}}", "admin", "Change a user's role, state or password", update_user, ("role", "is_active", "password")),
    Route("GET", f"{ADMIN}/audit", "admin", "Who changed what, newest first (?limit=&before=)", audit_log),
    Route("GET", SELF, "key", "Your Majordomo key's proxy keys", self_list_proxy_keys),
    Route("POST", SELF, "key", "Create a proxy key for your Majordomo key", self_create_proxy_key, ("name", "description")),
    Route("GET", f"{SELF}/{{id}}", "key", "One of your proxy keys", self_get_proxy_key),
    Route("DELETE", f"{SELF}/{{id}}", "key", "Revoke one of your proxy keys", self_revoke_proxy_key),
    Route("GET", f"{SELF}/{{id}}/providers", "key", "Its credentials (hints)", self_list_providers),
    Route("PUT", f"{SELF}/{{id}}/providers/{{provider}}", "key", "Hold a credential for it", self_set_provider, ("api_key",)),
    Route("DELETE", f"{SELF}/{{id}}/providers/{{provider}}", "key", "Remove its credential", self_remove_provider),
    Route("GET", f"{PREFIX}/openapi.json", "none", "This description", openapi),
)  # fmt: skip


_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "user": [{"bearer": []}],
    "admin": [{"bearer": []}],
    "key": [{"majordomoKey": []}],
}


def describe(routes: tuple[Route, ...]) -> dict[str, Any]:
    """OpenAPI 3.1 for `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "responses": {"default": {"description": "JSON; errors as {error: {message, type}}"}},
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", route.path)
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.body:
            operation["requestBody"] = {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {name: {} for name in route.body},
                        }
                    }
                }
            }
        if route.auth in _SECURITY:
            operation["security"] = _SECURITY[route.auth]
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Majordomo admin API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "majordomoKey": {"type": "apiKey", "in": "header", "name": "X-Majordomo-Key"},
            }
        },
    }


# -- serving ------------------------------------------------------------------------------


def add_routes(app: QuartTrio, state: GatewayState) -> None:
    """Register every route of `ROUTES` on `app`, and JSON answers for everything under /api."""
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    for route in ROUTES:
        app.add_url_rule(
            route.quart_path,
            endpoint=f"{route.method} {route.path}",
            view_func=_view(route, state),
            methods=[route.method],
        )

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        response = error_response(exc.status, exc.message, exc.kind)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return await http_error(exc)
        log.exception("%s %s failed", request.method, request.path)  # a bug of ours
        return error_response(500, "the gateway failed to answer; see its log", "api_error")

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        kinds = {404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error"}
        message = {
            404: f"no route {request.method} {request.path}; GET {PREFIX}/openapi.json lists them",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"the body is over {MAX_BODY} bytes",
        }.get(status, exc.description or "error")
        return error_response(status, message, kinds.get(status, "api_error"))


def _view(route: Route, state: GatewayState) -> Callable[..., Awaitable[Response]]:
    async def view(**params: str) -> Response:
        call = Call(
            state=state,
            body=await _body(route),
            args=dict(request.args.items()),
            address=_address(),
        )
        try:
            await _authorise(route, call)
            result, status = await route.handler(call, **params)
        except DatabaseUnavailable as exc:
            raise ApiError(503, str(exc), "api_error") from None
        return Response(json.dumps(result), status=status, content_type="application/json")

    view.__name__ = route.handler.__name__
    return view


async def _body(route: Route) -> dict[str, Any]:
    if request.method not in ("POST", "PUT"):
        return {}
    raw = await request.get_data(cache=False)
    if not raw.strip():
        if route.body:
            raise bad_request("send a JSON object as the body")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _address() -> str:
    client = request.scope.get("client")
    return str(client[0]) if client else "unknown"


async def _authorise(route: Route, call: Call) -> None:
    state = call.state
    if route.auth == "key":
        raw = request.headers.get("X-Majordomo-Key")
        try:
            call.key_id = await state.keys.authenticate(raw.strip() if raw else None)
        except Unauthorized as exc:
            raise ApiError(401, str(exc), "authentication_error") from None
        return
    if route.path.startswith(ADMIN) and state.jwt_secret is None:
        raise ApiError(404, ADMIN_API_OFF, "not_found_error")
    if route.auth == "none":
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "missing Authorization: Bearer <token>; get one from POST /api/v1/admin/login",
            "authentication_error",
        )
    try:
        user_id = tokens(call).user_id(token.strip())
        user = await state.db.users.get(user_id)
    except InvalidToken as exc:
        raise ApiError(401, str(exc), "authentication_error") from None
    except MajordomoError:
        raise ApiError(401, "the token's user no longer exists", "authentication_error") from None
    if not user.is_active:
        raise ApiError(401, "this user has been disabled", "authentication_error")
    if route.auth == "admin" and not user.is_admin:
        raise ApiError(403, "only admins may do this", "permission_error")
    call.user = user
