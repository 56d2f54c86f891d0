"""`majordomo metadata …`: see the X-Majordomo-* keys each API key sends, choose which to index."""

from __future__ import annotations

from typing import Annotated

import cyclopts

from majordomo.cli.common import ConfigOption, JsonFlag, prepare, print_json, run_with_database
from majordomo.cli.keys import parse_key_id
from majordomo.db import Database, MetadataKey

metadata_app = cyclopts.App(
    name="metadata",
    help="Metadata keys (X-Majordomo-* headers) per API key, and which are indexed.",
)

KeyOption = Annotated[str, cyclopts.Parameter(name="--key", help="The API key's id.")]
Name = Annotated[str, cyclopts.Parameter(help="The metadata key, e.g. user-id.")]


def _line(m: MetadataKey) -> str:
    state = "active" if m.is_active else "-"
    seen = f"{m.last_seen_at:%Y-%m-%d %H:%M}" if m.last_seen_at else "never"
    return (
        f"{m.key_name[:32]:<32}  {state:<6}  {m.request_count:>10}  "
        f"{m.approx_cardinality:>11}  {seen}"
    )


@metadata_app.command(name="list")
def list_(*, key: KeyOption, json: JsonFlag = False, config: ConfigOption = None) -> None:
    """List the metadata keys an API key has sent, with counts and distinct values."""
    key_id = parse_key_id(key)
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> list[MetadataKey]:
        return await db.metadata.list(key_id)

    keys = run_with_database(ctx, action)
    if json:
        print_json([m.as_json() for m in keys])
        return
    if not keys:
        print("No metadata seen for this key yet (send X-Majordomo-<Name> headers).")
        return
    print(f"{'KEY':<32}  {'INDEX':<6}  {'REQUESTS':>10}  {'~DISTINCT':>11}  LAST SEEN")
    for m in keys:
        print(_line(m))


def _set_active(key: str, name: str, active: bool, json: bool, config: ConfigOption) -> None:
    key_id = parse_key_id(key)
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> MetadataKey:
        return await db.metadata.set_active(key_id, name.strip().lower(), active)

    m = run_with_database(ctx, action)
    if json:
        print_json(m.as_json())
    elif active:
        print(
            f"Indexing '{m.key_name}' for key {key_id} on new requests; "
            "run 'majordomo metadata backfill' to index stored ones."
        )
    else:
        print(f"No longer indexing '{m.key_name}' for key {key_id}.")


@metadata_app.command
def activate(
    name: Name, /, *, key: KeyOption, json: JsonFlag = False, config: ConfigOption = None
) -> None:
    """Copy this metadata key into indexed_metadata (GIN-indexed) on new rows."""
    _set_active(key, name, True, json, config)


@metadata_app.command
def deactivate(
    name: Name, /, *, key: KeyOption, json: JsonFlag = False, config: ConfigOption = None
) -> None:
    """Stop copying this metadata key into indexed_metadata."""
    _set_active(key, name, False, json, config)


@metadata_app.command
def backfill(
    *,
    key: Annotated[
        str | None, cyclopts.Parameter(name="--key", help="Only this API key's rows.")
    ] = None,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Recompute indexed_metadata of stored rows from the keys active now."""
    key_id = parse_key_id(key) if key is not None else None
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> int:
        return await db.metadata.backfill(key_id)

    changed = run_with_database(ctx, action)
    if json:
        print_json({"rows_changed": changed})
    else:
        print(f"Updated indexed_metadata of {changed} rows.")
