"""`majordomo usage`: where the money goes — spend, tokens and requests, grouped, over a window.

Theory of operation: the command turns its options into a window and a `Grouping` (pure:
`parse_window`, `parse_grouping`), asks the database for one grouped scan of the window
(`Database.usage_report`, whose first row is the window's total), builds a `UsageReport` of
frozen `UsageRow`s and prints it as a table (`render_table`, or `render_days`: a bar per UTC
day, the trend at a glance), as JSON (`report_json`) or as CSV (`write_csv`). Costs stay
`Decimal` throughout: JSON and CSV carry them at full precision, only the table rounds them.
"""

from __future__ import annotations

import csv
import re
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import IO, Annotated, Any

import cyclopts

from majordomo.cli.common import ConfigOption, JsonFlag, prepare, print_json, run_with_database
from majordomo.cli.keys import parse_key_id
from majordomo.db import Database
from majordomo.errors import MajordomoError

# The window when --since is not given: the last 30 UTC days, today included.
DEFAULT_SINCE = "30d"
# The day view's lines fit a terminal this wide; the bar takes what the numbers leave.
SCREEN_WIDTH = 80
# A bar is never shorter than this, however wide the numbers get.
MIN_BAR_WIDTH = 10
# Eighth blocks: a bar's last cell shows the remaining eighths, so short bars still differ.
_BLOCKS = " ▏▎▍▌▋▊▉█"
# Longest group value shown in the table (metadata values are whatever clients send).
MAX_GROUP_WIDTH = 48
# The table shows costs to a hundredth of a cent, half up (JSON and CSV keep every digit).
_CENT_HUNDREDTHS = Decimal("0.0001")
# How a missing group value (no API key, no such metadata) reads in the table.
NONE_LABEL = "(none)"

GROUPINGS = "key, model, provider, day or meta:NAME (e.g. meta:user-id)"
_RELATIVE = re.compile(r"(\d+)\s*([wdhm])", re.IGNORECASE)
_METADATA_PREFIX = "x-majordomo-"


# -- options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grouping:
    """What rows are grouped by: `by` as `Database.usage_report` takes it, and a metadata key."""

    by: str
    meta_name: str | None = None

    @property
    def label(self) -> str:
        """The grouping as --by spells it, e.g. `model` or `meta:user-id`."""
        return f"meta:{self.meta_name}" if self.meta_name is not None else self.by


def parse_grouping(raw: str) -> Grouping:
    """`key`, `model`, `provider`, `day` or `meta:NAME` (NAME as sent, X-Majordomo- optional)."""
    text = raw.strip()
    if text.lower() in ("key", "model", "provider", "day"):
        return Grouping(text.lower())
    prefix, sep, name = text.partition(":")
    if sep and prefix.strip().lower() in ("meta", "metadata"):
        name = name.strip().lower()
        # Metadata keys are stored lower-cased, without the header prefix.
        name = name.removeprefix(_METADATA_PREFIX)
        if name:
            return Grouping("meta", name)
    raise MajordomoError(f"--by {raw!r} is not a grouping; use {GROUPINGS}")


def parse_moment(raw: str, option: str, now: datetime, *, end_of_day: bool = False) -> datetime:
    """A point in time from --since/--until, in UTC.

    Accepted: `now`, `today` (midnight UTC), a date (`2025-06-01`, midnight UTC; the end of that
    day with `end_of_day`, so `--until 2025-06-07` includes June 7th), a date-time
    (`2025-06-01T12:00:00Z`; no zone means UTC) or an age: `24h` and `90m` are exact, `7d` and
    `2w` count whole UTC days with today as the first (`7d`: midnight six days ago).
    """
    text = raw.strip()
    today = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    if text.lower() == "now":
        return now
    if text.lower() == "today":
        return today
    relative = _RELATIVE.fullmatch(text)
    if relative:
        count, unit = int(relative.group(1)), relative.group(2).lower()
        if unit == "h":
            return now - timedelta(hours=count)
        if unit == "m":
            return now - timedelta(minutes=count)
        days = count * 7 if unit == "w" else count
        if days < 1:
            raise MajordomoError(f"{option} {raw!r} counts no day; use 1d or more (1d is today)")
        return today - timedelta(days=days - 1)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime.combine(day + timedelta(days=int(end_of_day)), time(), UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise MajordomoError(
            f"{option} {raw!r} is not a time; use a date (2025-06-01), a date-time "
            "(2025-06-01T12:00:00Z), an age (7d, 24h, 90m, 2w), today or now"
        ) from None
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The `[since, until)` window the options name (default: the last 30 UTC days)."""
    start = parse_moment(since or DEFAULT_SINCE, "--since", now)
    end = parse_moment(until, "--until", now, end_of_day=True) if until else now
    if start >= end:
        raise MajordomoError(
            f"--since ({_moment(start)}) is not before --until ({_moment(end)}); "
            "give an earlier --since or a later --until"
        )
    return start, end


# -- the report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    """One group's (or the window's) requests, tokens, cost and errors."""

    group: str | None
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    total_cost: Decimal = Decimal(0)
    errors: int = 0
    key_name: str | None = None

    @classmethod
    def from_db(cls, row: dict[str, Any]) -> UsageRow:
        return cls(
            group=row["grp"],
            requests=int(row["requests"]),
            input_tokens=int(row["input_tokens"]),
            output_tokens=int(row["output_tokens"]),
            cached_tokens=int(row["cached_tokens"]),
            cache_creation_tokens=int(row["cache_creation_tokens"]),
            reasoning_tokens=int(row["reasoning_tokens"]),
            total_cost=row["total_cost"],
            errors=int(row["errors"]),
            key_name=row["key_name"],
        )


@dataclass(frozen=True)
class UsageReport:
    """What `majordomo usage` shows: the window, its groups and its total."""

    since: datetime
    until: datetime
    grouping: Grouping
    key_id: uuid.UUID | None
    rows: tuple[UsageRow, ...]
    total: UsageRow
    # Groups in the window; more than len(rows) when --limit cut the list.
    group_count: int

    def share(self, row: UsageRow) -> Decimal | None:
        """The row's percentage of the window's cost (None when the window cost nothing)."""
        if not self.total.total_cost:
            return None
        return row.total_cost * 100 / self.total.total_cost


async def load_report(
    db: Database,
    since: datetime,
    until: datetime,
    grouping: Grouping,
    *,
    key_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    limit: int | None = None,
    all_days: bool = False,
) -> UsageReport:
    """Ask the database for the window's groups. The day view lists days in order: the days
    with requests, or with `all_days` every day of the window, idle ones at 0."""
    rows = await db.reports.usage(
        since,
        until,
        by=grouping.by,
        meta_name=grouping.meta_name,
        key_id=key_id,
        user_id=user_id,
        limit=None if grouping.by == "day" else limit,
    )
    total, groups = UsageRow.from_db(rows[0]), [UsageRow.from_db(r) for r in rows[1:]]
    count = int(rows[0]["groups"])
    if grouping.by == "day":
        found = {row.group: row for row in groups}
        days = utc_days(since, until) if all_days else sorted(d for d in found if d is not None)
        groups = [found.get(day, UsageRow(day)) for day in days]
        count = len(groups)
    return UsageReport(since, until, grouping, key_id, tuple(groups), total, count)


def utc_days(since: datetime, until: datetime) -> list[str]:
    """Every UTC date (`YYYY-MM-DD`) that `[since, until)` touches, in order."""
    first = since.astimezone(UTC).date()
    last = (until.astimezone(UTC) - timedelta(microseconds=1)).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


# -- output ---------------------------------------------------------------------------------

CSV_COLUMNS = (
    "group",
    "key_name",
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "total_cost",
    "errors",
    "cost_share_percent",
)


def row_json(report: UsageReport, row: UsageRow, *, group: bool = True) -> dict[str, Any]:
    """A row for scripts: exact integers, cost as a decimal string, share as a percentage."""
    share = report.share(row)
    fields: dict[str, Any] = {"group": row.group} if group else {}
    if report.grouping.by == "key" and group:
        fields["key_name"] = row.key_name
    return {
        **fields,
        "requests": row.requests,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cached_tokens": row.cached_tokens,
        "cache_creation_tokens": row.cache_creation_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "total_cost": _plain(row.total_cost),
        "errors": row.errors,
        "cost_share_percent": round(float(share), 2) if share is not None else None,
    }


def report_json(report: UsageReport) -> dict[str, Any]:
    """The whole report for `--json`; a missing group value (no key, no metadata) is null."""
    return {
        "since": report.since.isoformat(),
        "until": report.until.isoformat(),
        "by": report.grouping.label,
        "key": str(report.key_id) if report.key_id else None,
        "groups": [row_json(report, row) for row in report.rows],
        "group_count": report.group_count,
        "total": row_json(report, report.total, group=False),
    }


def write_csv(report: UsageReport, out: IO[str]) -> None:
    """One line per group under a fixed header (`key_name` is empty unless --by key)."""
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        fields = row_json(report, row)
        fields.setdefault("key_name", None)
        writer.writerow({k: "" if v is None else v for k, v in fields.items()})


_TABLE_HEADERS = (
    "REQUESTS",
    "INPUT",
    "OUTPUT",
    "CACHED",
    "CACHE WRITE",
    "REASONING",
    "COST (USD)",
    "ERRORS",
    "SHARE",
)


def render_table(report: UsageReport) -> str:
    """Groups most expensive first, then a TOTAL line for the whole window."""
    header = _group_header(report.grouping)
    body = [[_group_label(report, row), *_numbers(report, row)] for row in report.rows]
    total = ["TOTAL", *_numbers(report, report.total)]
    table = _align([[header, *_TABLE_HEADERS], *body, total])
    lines = [_title(report), "", *table[:-1]]
    lines.append("-" * len(table[0]))
    lines.append(table[-1])
    hidden = report.group_count - len(report.rows)
    if hidden > 0:
        groups = "group" if hidden == 1 else "groups"
        lines.append(f"({hidden} more {groups} not shown, in the total; raise --limit to see them)")
    return "\n".join(lines)


def render_days(report: UsageReport, width: int = SCREEN_WIDTH) -> str:
    """One line per UTC day of the report, with a bar proportional to its cost."""
    headers = ["DAY", "REQUESTS", "TOKENS", "COST (USD)", "ERRORS"]
    cells = [
        [
            f"{date.fromisoformat(row.group or '1970-01-01'):%a %Y-%m-%d}",
            f"{row.requests:,}",
            f"{row.input_tokens + row.output_tokens:,}",
            _money(row.total_cost),
            f"{row.errors:,}",
        ]
        for row in report.rows
    ]
    t = report.total
    total = ["TOTAL", f"{t.requests:,}", f"{t.input_tokens + t.output_tokens:,}"]
    total += [_money(t.total_cost), f"{t.errors:,}"]
    table = _align([headers, *cells, total])
    bar_width = max(MIN_BAR_WIDTH, width - len(table[0]) - 2)
    peak = max((row.total_cost for row in report.rows), default=Decimal(0))
    lines = [_title(report), "", table[0]]
    for line, row in zip(table[1:-1], report.rows, strict=True):
        lines.append(f"{line}  {cost_bar(row.total_cost, peak, bar_width)}".rstrip())
    lines.append("-" * len(table[0]))
    lines.append(table[-1])
    lines.append(f"(one {_BLOCKS[-1]} = ${_money(peak / bar_width)})" if peak else "")
    return "\n".join(lines).rstrip("\n")


def cost_bar(cost: Decimal, peak: Decimal, width: int) -> str:
    """A bar of `width` cells at `peak`, in eighths of a cell; any spend shows at least ▏."""
    if not peak or cost <= 0:
        return ""
    eighths = max(1, round(cost * width * 8 / peak))
    full, rest = divmod(eighths, 8)
    return _BLOCKS[-1] * full + (_BLOCKS[rest] if rest else "")


def bar_eighths(bar: str) -> int:
    """How many eighths of a cell `bar` shows (the inverse of `cost_bar`, for checks)."""
    return sum(_BLOCKS.index(cell) for cell in bar)


def empty_message(report: UsageReport) -> str:
    """What an empty window says, and how to widen it."""
    scope = f" for key {report.key_id}" if report.key_id else ""
    hint = " or drop --key" if report.key_id else ""
    return (
        f"No requests{scope} from {_moment(report.since)} to {_moment(report.until)}; "
        f"widen the window with --since (e.g. --since 90d or --since 2025-01-01){hint}."
    )


def _title(report: UsageReport) -> str:
    scope = f", key {report.key_id}" if report.key_id else ""
    return (
        f"Usage by {report.grouping.label}, {_moment(report.since)} to "
        f"{_moment(report.until)}{scope}"
    )


def _group_header(grouping: Grouping) -> str:
    return grouping.meta_name if grouping.meta_name is not None else grouping.by.upper()


def _group_label(report: UsageReport, row: UsageRow) -> str:
    if row.group is None:
        return NONE_LABEL
    if report.grouping.by == "key":
        # The full id: it is what --key and 'majordomo keys get' take.
        return f"{_clip(row.key_name or '?', 24)} {row.group}"
    return _clip(row.group, MAX_GROUP_WIDTH)


def _numbers(report: UsageReport, row: UsageRow) -> list[str]:
    share = report.share(row)
    return [
        f"{row.requests:,}",
        f"{row.input_tokens:,}",
        f"{row.output_tokens:,}",
        f"{row.cached_tokens:,}",
        f"{row.cache_creation_tokens:,}",
        f"{row.reasoning_tokens:,}",
        _money(row.total_cost),
        f"{row.errors:,}",
        f"{share:.1f}%" if share is not None else "-",
    ]


def _align(rows: Sequence[Sequence[str]]) -> list[str]:
    """The rows as lines of aligned columns: the first left-aligned, the others right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        ).rstrip()
        for r in rows
    ]


def _money(value: Decimal) -> str:
    """A cost for the table: four decimals, thousands separated; a trace shows as <0.0001."""
    if 0 < value < Decimal("0.00005"):
        return "<0.0001"
    return f"{value.quantize(_CENT_HUNDREDTHS, rounding=ROUND_HALF_UP):,}"


def _plain(value: Decimal) -> str:
    """A cost at full precision, without exponent or trailing zeros: 0.0000125, 12."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _moment(value: datetime) -> str:
    """A window bound for people: to the minute, or to the second when it has seconds."""
    utc = value.astimezone(UTC)
    shown = f"{utc:%Y-%m-%d %H:%M:%S}" if utc.second or utc.microsecond else f"{utc:%Y-%m-%d %H:%M}"
    return f"{shown} UTC"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- the command ----------------------------------------------------------------------------

CsvFlag = Annotated[
    bool, cyclopts.Parameter(name="--csv", negative="", help="Print CSV (one line per group).")
]


usage_app = cyclopts.App(
    name="usage",
    help="Spend, tokens, requests and errors over a time window, grouped by key, model, "
    "provider, metadata or day.",
)


@usage_app.default
def report(
    *,
    since: Annotated[
        str | None,
        cyclopts.Parameter(
            help="Start of the window: 2025-06-01, 2025-06-01T12:00:00Z, 7d (7 UTC days, "
            "today included), 24h, today. Default: 30d."
        ),
    ] = None,
    until: Annotated[
        str | None,
        cyclopts.Parameter(
            help="End of the window, excluded (a date alone includes that day). Default: now."
        ),
    ] = None,
    by: Annotated[
        str,
        cyclopts.Parameter(
            help="Group by key, model, provider, day (a bar per UTC day) or meta:NAME "
            "(an X-Majordomo-NAME header's value)."
        ),
    ] = "model",
    key: Annotated[
        str | None, cyclopts.Parameter(name="--key", help="Only this API key's requests (its id).")
    ] = None,
    limit: Annotated[
        int | None,
        cyclopts.Parameter(help="Show only the N most expensive groups (the total counts all)."),
    ] = None,
    all_days: Annotated[
        bool,
        cyclopts.Parameter(
            name="--all-days",
            negative="",
            help="With --by day: a line for every day of the window, idle ones too.",
        ),
    ] = False,
    json: JsonFlag = False,
    csv: CsvFlag = False,
    config: ConfigOption = None,
) -> None:
    """Spend, tokens, requests and errors over a time window, grouped, most expensive first."""
    if json and csv:
        raise MajordomoError("--json and --csv are exclusive; choose one")
    grouping = parse_grouping(by)
    if limit is not None and limit < 1:
        raise MajordomoError(f"--limit {limit} shows nothing; give 1 or more, or leave it out")
    if all_days and grouping.by != "day":
        raise MajordomoError("--all-days goes with --by day")
    if limit is not None and grouping.by == "day":
        raise MajordomoError(
            "--limit does not apply to --by day (every day is shown); narrow the window with "
            "--since and --until instead"
        )
    start, end = parse_window(since, until, datetime.now(UTC))
    key_id = parse_key_id(key) if key is not None else None
    ctx = prepare(config, log_level="warning")

    async def action(db: Database) -> UsageReport:
        return await load_report(
            db, start, end, grouping, key_id=key_id, limit=limit, all_days=all_days
        )

    report = run_with_database(ctx, action)
    if json:
        print_json(report_json(report))
    elif csv:
        write_csv(report, sys.stdout)
    elif not report.total.requests:
        print(empty_message(report))
    elif grouping.by == "day":
        print(render_days(report))
    else:
        print(render_table(report))
