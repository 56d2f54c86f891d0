"""What every command shares: loading settings, finding the database, running under trio."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import cyclopts
import trio

from majordomo import config
from majordomo.config import PostgresSettings, Settings
from majordomo.db import Database, open_database
from majordomo.embedded import start_embedded
from majordomo.limits import Limits
from majordomo.logconfig import configure_logging

T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    cyclopts.Parameter(
        name="--config",
        help="Path to majordomo.yaml (default: ./majordomo.yaml, else /etc/majordomo/).",
    ),
]
JsonFlag = Annotated[bool, cyclopts.Parameter(name="--json", negative="", help="Print JSON.")]


@dataclass(frozen=True)
class Context:
    settings: Settings
    postgres: PostgresSettings
    # The embedded server starts with only the `postgres` database; ours is created on demand.
    create_database: bool


def load_settings(config_path: Path | None, *, log_level: str | None = None) -> Settings:
    """Load settings and set up the process log (nothing else: no database yet)."""
    settings = config.load(config_path)
    configure_logging(log_level or settings.logging.level, settings.logging.format)
    unknown = config.unknown_env_names(os.environ)
    if unknown:
        logging.getLogger("majordomo.config").warning(
            "ignoring environment variables that name no setting: %s", ", ".join(unknown)
        )
    return settings


def database_context(settings: Settings) -> Context:
    """Where the database is: the configured server, or the embedded one, started now."""
    pg = settings.storage.postgres
    if pg.host:
        return Context(settings, pg, create_database=False)
    data_dir = Path(settings.storage.embedded.data_dir)
    return Context(settings, start_embedded(data_dir, pg), create_database=True)


def prepare(config_path: Path | None, *, log_level: str | None = None) -> Context:
    """Load settings, set up the process log, start the embedded server when configured so."""
    return database_context(load_settings(config_path, log_level=log_level))


def run_with_database(ctx: Context, action: Callable[[Database], Awaitable[T]]) -> T:
    """Run `action` with an open database (schema applied unless auto_migrate is off)."""

    async def main() -> T:
        async with open_database(ctx.postgres, create_database=ctx.create_database) as db:
            if ctx.settings.storage.auto_migrate:
                await db.migrate()
            return await action(db)

    return trio.run(main)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2)
    sys.stdout.write("\n")


BudgetOption = Annotated[
    str | None, cyclopts.Parameter(help="A spend budget: 25/day, 100/month, or none.")
]
RpmOption = Annotated[str | None, cyclopts.Parameter(help="Requests per minute, or none.")]
TpmOption = Annotated[
    str | None, cyclopts.Parameter(help="Tokens (input + output) per minute, or none.")
]


def limit_lines(limits: Limits, windows: list[dict[str, Any]]) -> list[str]:
    """A key's limits and what each current window used, for `get`."""
    budget = (
        f"${limits.budget_usd}/{limits.budget_period}" if limits.budget_usd is not None else "none"
    )
    lines = [
        f"limits:        budget {budget}, rpm {limits.rpm or 'none'}, tpm {limits.tpm or 'none'}"
    ]
    for w in windows:
        value, used = w["value"], w["used"]
        shown = (
            f"${used:.4f} of ${value:.2f}" if w["limit"] == "budget_usd" else f"{used} of {value}"
        )
        lines.append(f"  {w['limit']:<12} {shown} used, resets {w['resets_at']}")
    return lines
