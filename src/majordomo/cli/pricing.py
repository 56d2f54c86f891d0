"""`majordomo pricing …`: show the price that applies to a model, recompute stored costs."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import cyclopts
import httpx
import trio

from majordomo import config as config_module
from majordomo.cli.common import ConfigOption, JsonFlag, prepare, print_json, run_with_database
from majordomo.config import Settings
from majordomo.db import Database
from majordomo.errors import MajordomoError
from majordomo.logconfig import configure_logging
from majordomo.pricing import (
    PriceBook,
    PriceField,
    PriceRefreshError,
    ResolvedPrice,
    fetch_remote_table,
)
from majordomo.pricing.recalc import RecalcReport, recalculate_costs

pricing_app = cyclopts.App(
    name="pricing", help="Show the prices in use; recompute stored costs after a correction."
)

ModelArg = Annotated[
    str, cyclopts.Parameter(help="A model id as the provider returns it, e.g. gpt-4o-2024-08-06.")
]
ProviderOption = Annotated[
    str | None,
    cyclopts.Parameter(
        name="--provider", help="openai, anthropic or gemini (default: the first that knows it)."
    ),
]
FetchFlag = Annotated[
    bool,
    cyclopts.Parameter(
        name="--fetch",
        negative="",
        help="Fetch pricing.remote_url first, as the gateway does (default: bundled prices "
        "and overrides only, no network).",
    ),
]


# -- show ---------------------------------------------------------------------------------


@pricing_app.command
def show(
    model: ModelArg,
    /,
    *,
    provider: ProviderOption = None,
    at: Annotated[
        str | None, cyclopts.Parameter(help="Prices in force at this date (default: now).")
    ] = None,
    fetch: FetchFlag = False,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Print the prices that apply to MODEL and where each one comes from."""
    when = parse_when(at, "--at") if at else datetime.now(UTC)
    settings = _load_settings(config)
    book = build_price_book(settings, fetch=fetch)
    resolved = book.resolve(provider.strip().lower() if provider else None, model, when)
    if resolved is None:
        where = f"provider {provider}" if provider else "openai, anthropic or gemini"
        raise MajordomoError(
            f"no price for model '{model}' ({where}) in {book.describe_table()}; its calls "
            "are recorded at cost 0 — add it under pricing.overrides in majordomo.yaml"
        )
    if json:
        print_json(resolved.as_json())
    else:
        print(render_resolved(resolved))


def render_resolved(resolved: ResolvedPrice) -> str:
    """The human form of `pricing show`."""
    lines = [
        f"{resolved.model} ({resolved.provider}): USD per 1M tokens, "
        f"at {resolved.at:%Y-%m-%d %H:%M %Z}".rstrip(),
    ]
    rows = (
        ("input", resolved.input),
        ("output", resolved.output),
        ("cache read", resolved.cache_read),
        ("cache write", resolved.cache_write),
    )
    for label, price in rows:
        lines.append(f"  {label:<12} {_describe_price(price)}")
    for how in resolved.matched:
        lines.append(f"  from         {how}")
    if resolved.other:
        lines.append(f"  also priced  {', '.join(resolved.other)} (not reported by Majordomo)")
    return "\n".join(lines)


def _describe_price(price: PriceField | None) -> str:
    if price is None:
        return "charged at the input rate (no separate price)"
    text = f"{_number(price.rate):<10} {price.source}"
    for threshold, rate in price.tiers:
        text += f"; {_number(rate)} when the prompt exceeds {threshold:,} tokens"
    return text


# -- recalc -------------------------------------------------------------------------------


@pricing_app.command
def recalc(
    *,
    since: Annotated[
        str, cyclopts.Parameter(help="Recompute rows requested at or after this date/time.")
    ],
    model: Annotated[str | None, cyclopts.Parameter(help="Only rows of this model.")] = None,
    dry_run: Annotated[
        bool, cyclopts.Parameter(name="--dry-run", negative="", help="Report, change nothing.")
    ] = False,
    fetch: FetchFlag = False,
    json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Recompute stored costs from stored tokens (after a price correction) and report changes."""
    start = parse_when(since, "--since")
    ctx = prepare(config, log_level="warning")
    book = build_price_book(ctx.settings, fetch=fetch)

    async def action(db: Database) -> RecalcReport:
        return await recalculate_costs(db, book, start, model=model, dry_run=dry_run)

    report = run_with_database(ctx, action)
    if json:
        print_json(report.as_json())
    else:
        print(render_report(report))


def render_report(report: RecalcReport) -> str:
    """The human form of `pricing recalc`."""
    scope = f" of model {report.model}" if report.model else ""
    verb = "would change" if report.dry_run else "changed"
    lines = [
        f"Repriced {report.rows} rows{scope} since {report.since.isoformat()}: "
        f"{report.changed} {verb}.",
        f"Total cost before: ${_number(report.before)}   after: ${_number(report.after)}   "
        f"difference: ${_number(report.after - report.before)}",
    ]
    for change in report.by_model.values():
        if change.changed:
            lines.append(
                f"  {change.provider}/{change.model}: {change.changed} of {change.rows} rows, "
                f"${_number(change.before)} → ${_number(change.after)}"
            )
    if report.unpriced_kept:
        lines.append(
            f"{report.unpriced_kept} rows had a price but none was found now, so they kept "
            "their cost; run with --fetch to use the remote table, or add the model under "
            "pricing.overrides."
        )
    if report.dry_run and report.changed:
        lines.append("Dry run: nothing was written; run again without --dry-run to apply.")
    return "\n".join(lines)


# -- shared -------------------------------------------------------------------------------


def parse_when(raw: str, option: str) -> datetime:
    """A date (`2025-06-01`, midnight UTC) or date-time (`2025-06-01T12:00:00Z`)."""
    try:
        value = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise MajordomoError(
            f"{option} {raw!r} is not a date; use 2025-06-01 or 2025-06-01T12:00:00Z"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def build_price_book(settings: Settings, *, fetch: bool) -> PriceBook:
    """A price book with the configured overrides and, with `fetch`, the remote table."""
    book = PriceBook.for_settings(settings)
    if fetch:
        url = settings.pricing.remote_url
        if not url:
            raise MajordomoError("--fetch needs pricing.remote_url; it is empty")
        timeout = settings.pricing.refresh_timeout

        async def fetch_table() -> None:
            async with httpx.AsyncClient() as http:
                book.replace_remote(await fetch_remote_table(http, url, timeout=timeout))

        try:
            trio.run(fetch_table)
        except (PriceRefreshError, ValueError) as exc:
            raise MajordomoError(
                f"cannot use the prices at {url}: {exc}; run without --fetch to use the "
                "bundled prices and overrides"
            ) from None
    return book


def _load_settings(config_path: Path | None) -> Settings:
    # `show` needs no database: no embedded server, no pool.
    settings = config_module.load(config_path)
    configure_logging("warning", settings.logging.format)
    return settings


def _number(value: Decimal) -> str:
    """A price or cost without exponent or trailing zeros: 2.5, 0.0000125, 12."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
