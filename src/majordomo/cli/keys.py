"""`majordomo keys …`: create, list, show, rename and revoke Majordomo API keys, and the
provider credentials held for a key (`set-provider`, `remove-provider`, `list-providers`)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import cyclopts

from majordomo.auth import generate_key, hash_key
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
from majordomo.db import ApiKey, Database
from majordomo.db.credentials import API_KEY
from majordomo.errors import MajordomoError
from majordomo.limits import NO_LIMITS, updated

keys_app = cyclopts.App(name="keys", help="Manage Majordomo API keys.")

KeyId = Annotated[str, cyclopts.Parameter(help="The key's id, as 'majordomo keys list' shows it.")]


def parse_key_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise MajordomoError(
            f"'{raw}' is not a key id; ids look like 0b4e7c1a-…, see 'majordomo keys list'"
        ) from None


def _describe(key: ApiKey, windows: list[dict[str, Any]] | None = None) -> str:
    status = "active" if key.is_active else f"revoked {key.revoked_at:%Y-%m-%d %H:%M:%S %Z}"
    lines = [
        f"id:            {key.id}",
        f"name:          {key.name}",
        f"description:   {key.description or ''}",
        f"owner:         {key.user_id or ''}",
        f"status:        {status}",
        f"created:       {key.created_at:%Y-%m-%d %H:%M:%S %Z}",
        f"last used:     {key.last_used_at or 'never'}",
        f"requests:      {key.request_count}",
    ]
    lines += limit_lines(key.limits, windows or [])
    return "\n".join(lines)


@keys_app.command
def create(
    *,
    name: Annotated[str, cyclopts.Parameter(help="A name to recognise the key by.")],
    description: str | None = None,
    user: Annotated[str | None, cyclopts.Parameter(help="The username of the key's owner.")] = None,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it once: only its hash is stored."""
    if not name.strip():
        raise MajordomoError("--name must not be empty; give the key a name to recognise it by")
    ctx = prepare(config, log_level="warning")
    plaintext = generate_key()

    async def action(db: Database) -> ApiKey:
        owner = (await db.users.by_username(user)).id if user is not None else None
        return await db.keys.create(hash_key(plaintext), name, description, owner)

    key = run_with_database(ctx, action)
    if json:
        print_json({**key.as_json(), "key": plaintext})
        return
    print(f"Created key {key.id} ({key.name}).")
    print(f"Key: {plaintext}")
    print("Store it now: it is not shown again.")


@keys_app.command(name="list")
def list_(*, json: JsonFlag = False, config: ConfigOption = None) -> None:
    """List every key, active and revoked."""
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> list[ApiKey]:
        return await db.keys.list()

    keys = run_with_database(ctx, action)
    if json:
        print_json([k.as_json() for k in keys])
        return
    if not keys:
        print("No keys yet; create one with 'majordomo keys create --name NAME'.")
        return
    print(f"{'ID':<36}  {'NAME':<24}  {'STATUS':<8}  {'REQUESTS':>8}  CREATED")
    for k in keys:
        status = "active" if k.is_active else "revoked"
        print(
            f"{k.id!s:<36}  {k.name[:24]:<24}  {status:<8}  {k.request_count:>8}  "
            f"{k.created_at:%Y-%m-%d %H:%M}"
        )


@keys_app.command
def get(key_id: KeyId, /, *, json: JsonFlag = False, config: ConfigOption = None) -> None:
    """Show one key."""
    parsed = parse_key_id(key_id)
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> tuple[ApiKey, list[dict[str, Any]]]:
        key = await db.keys.get(parsed)
        return key, await db.limits.windows(key.id, key.limits, datetime.now(UTC))

    key, windows = run_with_database(ctx, action)
    print_json({**key.as_json(), "windows": windows}) if json else print(_describe(key, windows))


@keys_app.command
def update(
    key_id: KeyId,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    budget: BudgetOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Change a key's name, description or limits (options may come before or after the id);
    limits hold across every gateway at once (docs/limits.md)."""
    parsed = parse_key_id(key_id)
    if name is None and description is None and budget is None and rpm is None and tpm is None:
        raise MajordomoError(
            "nothing to update; pass --name, --description, --budget, --rpm and/or --tpm"
        )
    if name is not None and not name.strip():
        raise MajordomoError("--name must not be empty")
    try:
        updated(NO_LIMITS, budget, rpm, tpm)  # malformed values fail before any connection
    except ValueError as exc:
        raise MajordomoError(str(exc)) from None
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> ApiKey:
        key = await db.keys.get(parsed)
        if name is not None or description is not None:
            key = await db.keys.update(parsed, name=name, description=description)
        if budget is not None or rpm is not None or tpm is not None:
            key = await db.keys.set_limits(parsed, updated(key.limits, budget, rpm, tpm))
        return key

    key = run_with_database(ctx, action)
    print_json(key.as_json()) if json else print(f"Updated key {key.id}.\n{_describe(key)}")


@keys_app.command
def revoke(key_id: KeyId, /, *, json: JsonFlag = False, config: ConfigOption = None) -> None:
    """Revoke a key for good; every running gateway refuses it at once."""
    parsed = parse_key_id(key_id)
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> ApiKey:
        return await db.keys.revoke(parsed)

    key = run_with_database(ctx, action)
    print_json(key.as_json()) if json else print(f"Revoked key {key.id} ({key.name}).")


add_held_credential_commands(
    keys_app,
    API_KEY,
    "api_key_id",
    parse_key_id,
    "The key's id, as 'majordomo keys list' shows it.",
)
