"""The `majordomo` command line: parse, call, print.

Every failure a person can cause ends with one line on stderr (`majordomo: …`) and exit
status 1, never a traceback.
"""

from __future__ import annotations

import os
import sys

import cyclopts
import trio

from majordomo.cli.common import (
    ConfigOption,
    JsonFlag,
    database_context,
    load_settings,
    prepare,
    print_json,
    run_with_database,
)
from majordomo.cli.keys import keys_app
from majordomo.cli.metadata import metadata_app
from majordomo.cli.pricing import pricing_app
from majordomo.cli.proxy_keys import proxy_keys_app
from majordomo.cli.secrets import secrets_app
from majordomo.cli.usage import usage_app
from majordomo.cli.users import audit, users_app
from majordomo.db import Database
from majordomo.errors import MajordomoError, sole_error

app = cyclopts.App(
    name="majordomo",
    help="An LLM API gateway that records exact usage and cost in PostgreSQL.",
)
app.command(keys_app)
app.command(proxy_keys_app)
app.command(secrets_app)
app.command(users_app)
app.command(audit)
app.command(metadata_app)
app.command(pricing_app)
app.command(usage_app)

db_app = cyclopts.App(name="db", help="Manage the database schema.")
app.command(db_app)


@app.command
def serve(*, config: ConfigOption = None) -> None:
    """Run the gateway until SIGINT or SIGTERM, then shut down without losing a record."""
    from majordomo.server import bind_sockets, run_gateway

    settings = load_settings(config)
    # The address first: a busy port is one clear line, before any database is touched.
    sockets = bind_sockets(settings)
    ctx = database_context(settings)
    trio.run(
        lambda: run_gateway(
            ctx.settings, ctx.postgres, create_database=ctx.create_database, sockets=sockets
        )
    )


@db_app.command
def migrate(*, json: JsonFlag = False, config: ConfigOption = None) -> None:
    """Apply schema.sql (idempotent) and print the schema version."""
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> int:
        return await db.migrate()

    version = run_with_database(ctx, action)
    if json:
        print_json({"schema_version": version})
    else:
        print(f"Schema is at version {version}.")


def main(argv: list[str] | None = None) -> None:
    try:
        try:
            app(argv)
        except BaseExceptionGroup as group:
            # trio and trio-asyncio wrap what a command raised; report it as itself.
            raise sole_error(group) from None
    except MajordomoError as exc:
        print(f"majordomo: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
