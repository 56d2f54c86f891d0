"""`majordomo proxy-keys …`: keys that stand for provider credentials the gateway holds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import cyclopts

from majordomo.cli.common import (
    BudgetOption,
    ConfigOption,
    JsonFlag,
    RpmOption,
    TpmOption,
    limit_lines,
    prepare,
    print_json,
    run_with_database,
)
from majordomo.cli.held import add_held_credential_commands
from majordomo.cli.keys import parse_key_id
from majordomo.credentials import generate_proxy_key, hash_proxy_key
from majordomo.db import Database, ProxyKey
from majordomo.db.credentials import PROXY_KEY
from majordomo.errors import MajordomoError
from majordomo.limits import NO_LIMITS, updated

proxy_keys_app = cyclopts.App(
    name="proxy-keys",
    help="Manage proxy keys: stand-ins for provider credentials the gateway holds.",
)

ProxyKeyId = Annotated[
    str, cyclopts.Parameter(help="The proxy key's id, as 'majordomo proxy-keys list' shows it.")
]
MajordomoKeyId = Annotated[
    str,
    cyclopts.Parameter(
        name="--majordomo-key-id", help="The Majordomo key the proxy key is used with."
    ),
]


def parse_proxy_key_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise MajordomoError(
            f"'{raw}' is not a proxy key id; ids look like 0b4e7c1a-…, see "
            "'majordomo proxy-keys list'"
        ) from None


def _describe(key: ProxyKey, windows: list[dict[str, Any]] | None = None) -> str:
    status = "active" if key.is_active else f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%S %Z}"
    return "\n".join(
        [
            f"id:            {key.id}",
            f"name:          {key.name}",
            f"description:   {key.description or ''}",
            f"majordomo key: {key.majordomo_api_key_id}",
            f"status:        {status}",
            f"created:       {key.created_at:%Y-%m-%d %H:%M:%S %Z}",
            f"last used:     {key.last_used_at or 'never'}",
            f"requests:      {key.request_count}",
            *limit_lines(key.limits, windows or []),
        ]
    )


@proxy_keys_app.command
def create(
    *,
    name: Annotated[str, cyclopts.Parameter(help="A name to recognise the proxy key by.")],
    majordomo_key_id: MajordomoKeyId,
    description: str | None = None,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Create a proxy key for a Majordomo key and print it once: only its hash is stored."""
    if not name.strip():
        raise MajordomoError("--name must not be empty; give the proxy key a name")
    owner = parse_key_id(majordomo_key_id)
    ctx = prepare(config, log_level="warning")
    plaintext = generate_proxy_key()

    async def action(db: Database) -> ProxyKey:
        return await db.credentials.create_proxy_key(
            hash_proxy_key(plaintext), name, description, owner
        )

    key = run_with_database(ctx, action)
    if json:
        print_json({**key.as_json(), "key": plaintext})
        return
    print(f"Created proxy key {key.id} ({key.name}) for key {key.majordomo_api_key_id}.")
    print(f"Proxy key: {plaintext}")
    print("Store it now: it is not shown again.")
    print(f"Next: majordomo proxy-keys set-provider {key.id} --provider openai --api-key -")


@proxy_keys_app.command(name="list")
def list_(
    *,
    majordomo_key_id: Annotated[
        str | None,
        cyclopts.Parameter(name="--majordomo-key-id", help="Only this Majordomo key's."),
    ] = None,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """List proxy keys, active and revoked."""
    owner = parse_key_id(majordomo_key_id) if majordomo_key_id is not None else None
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> list[ProxyKey]:
        return await db.credentials.list_proxy_keys(owner)

    keys = run_with_database(ctx, action)
    if json:
        print_json([k.as_json() for k in keys])
        return
    if not keys:
        print(
            "No proxy keys yet; create one with "
            "'majordomo proxy-keys create --name NAME --majordomo-key-id ID'."
        )
        return
    print(f"{'ID':<36}  {'NAME':<20}  {'MAJORDOMO KEY':<36}  {'STATUS':<8}  {'REQUESTS':>8}")
    for k in keys:
        status = "active" if k.is_active else "revoked"
        print(
            f"{k.id!s:<36}  {k.name[:20]:<20}  {k.majordomo_api_key_id!s:<36}  {status:<8}  "
            f"{k.request_count:>8}"
        )


@proxy_keys_app.command
def get(
    proxy_key_id: ProxyKeyId, /, *, json: JsonFlag = False, config: ConfigOption = None
) -> None:
    """Show one proxy key."""
    parsed = parse_proxy_key_id(proxy_key_id)
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> tuple[ProxyKey, list[dict[str, Any]]]:
        key = await db.credentials.get_proxy_key(parsed)
        now = datetime.now(UTC)
        return key, await db.limits.windows(key.id, key.limits, now, proxy_key=True)

    key, windows = run_with_database(ctx, action)
    print_json({**key.as_json(), "windows": windows}) if json else print(_describe(key, windows))


@proxy_keys_app.command
def update(
    proxy_key_id: ProxyKeyId,
    /,
    *,
    budget: BudgetOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Set a proxy key's limits, on top of its Majordomo key's (docs/limits.md)."""
    parsed = parse_proxy_key_id(proxy_key_id)
    if budget is None and rpm is None and tpm is None:
        raise MajordomoError("nothing to update; pass --budget, --rpm and/or --tpm")
    try:
        updated(NO_LIMITS, budget, rpm, tpm)  # malformed values fail before any connection
    except ValueError as exc:
        raise MajordomoError(str(exc)) from None
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> ProxyKey:
        key = await db.credentials.get_proxy_key(parsed)
        limits = updated(key.limits, budget, rpm, tpm)
        return await db.credentials.set_proxy_key_limits(parsed, limits)

    key = run_with_database(ctx, action)
    print_json(key.as_json()) if json else print(f"Updated proxy key {key.id}.\n{_describe(key)}")


@proxy_keys_app.command
def revoke(
    proxy_key_id: ProxyKeyId, /, *, json: JsonFlag = False, config: ConfigOption = None
) -> None:
    """Revoke a proxy key for good; every running gateway refuses it at once."""
    parsed = parse_proxy_key_id(proxy_key_id)
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> ProxyKey:
        return await db.credentials.revoke_proxy_key(parsed)

    key = run_with_database(ctx, action)
    print_json(key.as_json()) if json else print(f"Revoked proxy key {key.id} ({key.name}).")


add_held_credential_commands(
    proxy_keys_app,
    PROXY_KEY,
    "proxy_key_id",
    parse_proxy_key_id,
    "The proxy key's id, as 'majordomo proxy-keys list' shows it.",
)
