"""`majordomo usage`, against seeded rows in a real PostgreSQL: every grouping's numbers exactly."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from majordomo.cli.usage import (
    CSV_COLUMNS,
    Grouping,
    bar_eighths,
    cost_bar,
    load_report,
    parse_grouping,
    parse_moment,
    parse_window,
    report_json,
)
from majordomo.db import open_database
from majordomo.errors import MajordomoError
from tests.cli import Result, assert_one_line_error, majordomo
from tests.pghelpers import PgAdmin


def usage_cli(pg: PgAdmin, cwd: Path, *args: str) -> Result:
    return majordomo("usage", *args, env=pg.env, cwd=cwd)


# -- seeded rows ----------------------------------------------------------------------------

PROD = uuid.UUID("00000000-0000-0000-0000-0000000000a1")
BATCH = uuid.UUID("00000000-0000-0000-0000-0000000000b1")
WINDOW = ("--since", "2025-06-01", "--until", "2025-06-07")  # June 1st to 7th, both included

ROWS: list[tuple[Any, ...]] = [
    # key, provider, model, requested_at, (input, output, cached, written, reasoning),
    # total_cost, status, raw_metadata
    (PROD, "openai", "gpt-4o", "2025-06-01T10:00:00Z", (1000, 500, 200, 0, 0),
     "0.0075", 200, {"user-id": "alice", "team": "web"}),
    (PROD, "openai", "gpt-4o", "2025-06-03T23:59:59Z", (2000, 1000, 0, 0, 0),
     "0.015", 200, {"user-id": "bob"}),
    (BATCH, "anthropic", "claude-sonnet-4-5", "2025-06-03T00:00:00Z", (3000, 300, 1000, 500, 0),
     "0.0123456789", 200, {"user-id": "alice"}),
    (BATCH, "gemini", "gemini-2.5-flash", "2025-06-07T12:00:00Z", (100, 900, 0, 0, 600),
     "0.00225", 200, {}),
    # An error: counted as a request and an error, costs nothing.
    (PROD, "openai", "gpt-4o", "2025-06-05T08:00:00Z", (0, 0, 0, 0, 0),
     "0", 429, {"user-id": "bob"}),
    # No Majordomo key; a metadata value that is a JSON number.
    (None, "anthropic", "claude-haiku-4-5", "2025-06-06T09:30:00Z", (400, 100, 0, 0, 0),
     "0.001", 200, {"user-id": 42}),
    # Outside the window, on both sides (--until's day ends at midnight, excluded).
    (PROD, "openai", "gpt-4o", "2025-05-31T23:59:59Z", (9, 9, 0, 0, 0), "5", 200, {}),
    (BATCH, "openai", "gpt-4o", "2025-06-08T00:00:00Z", (9, 9, 0, 0, 0), "7", 200, {}),
]  # fmt: skip

TOTAL_COST = Decimal("0.0380956789")


def seed(pg: PgAdmin) -> None:
    from majordomo.db import schema_sql

    pg.execute(schema_sql())
    pg.execute(
        "INSERT INTO api_keys (id, key_hash, name) VALUES ($1, 'hash-a', 'prod'), "
        "($2, 'hash-b', 'batch')",
        PROD,
        BATCH,
    )
    for key_id, provider, model, at, tokens, cost, status, metadata in ROWS:
        when = datetime.fromisoformat(at)
        pg.execute(
            """
            INSERT INTO llm_requests (
                majordomo_api_key_id, provider, model, request_path, request_method,
                requested_at, responded_at, status_code, input_tokens, output_tokens,
                cached_tokens, cache_creation_tokens, reasoning_tokens, total_cost, raw_metadata
            ) VALUES ($1, $2, $3, '/v1/x', 'POST', $4, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            """,
            key_id, provider, model, when, status, *tokens, Decimal(cost), json.dumps(metadata),
        )  # fmt: skip


def share(cost: str) -> float:
    return round(float(Decimal(cost) * 100 / TOTAL_COST), 2)


def group(
    name: str | None,
    requests: int,
    tokens: tuple[int, int, int, int, int],
    cost: str,
    errors: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "group": name,
        **extra,
        "requests": requests,
        "input_tokens": tokens[0],
        "output_tokens": tokens[1],
        "cached_tokens": tokens[2],
        "cache_creation_tokens": tokens[3],
        "reasoning_tokens": tokens[4],
        "total_cost": cost,
        "errors": errors,
        "cost_share_percent": share(cost),
    }


NOTHING = (0, 0, 0, 0, 0)
EXPECTED: dict[str, list[dict[str, Any]]] = {
    "model": [
        group("gpt-4o", 3, (3000, 1500, 200, 0, 0), "0.0225", errors=1),
        group("claude-sonnet-4-5", 1, (3000, 300, 1000, 500, 0), "0.0123456789"),
        group("gemini-2.5-flash", 1, (100, 900, 0, 0, 600), "0.00225"),
        group("claude-haiku-4-5", 1, (400, 100, 0, 0, 0), "0.001"),
    ],
    "provider": [
        group("openai", 3, (3000, 1500, 200, 0, 0), "0.0225", errors=1),
        group("anthropic", 2, (3400, 400, 1000, 500, 0), "0.0133456789"),
        group("gemini", 1, (100, 900, 0, 0, 600), "0.00225"),
    ],
    "key": [
        group(str(PROD), 3, (3000, 1500, 200, 0, 0), "0.0225", errors=1, key_name="prod"),
        group(str(BATCH), 2, (3100, 1200, 1000, 500, 600), "0.0145956789", key_name="batch"),
        group(None, 1, (400, 100, 0, 0, 0), "0.001", key_name=None),
    ],
    "meta:user-id": [
        group("alice", 2, (4000, 800, 1200, 500, 0), "0.0198456789"),
        group("bob", 2, (2000, 1000, 0, 0, 0), "0.015", errors=1),
        group(None, 1, (100, 900, 0, 0, 600), "0.00225"),
        group("42", 1, (400, 100, 0, 0, 0), "0.001"),
    ],
    "day": [
        group("2025-06-01", 1, (1000, 500, 200, 0, 0), "0.0075"),
        group("2025-06-02", 0, NOTHING, "0"),
        group("2025-06-03", 2, (5000, 1300, 1000, 500, 0), "0.0273456789"),
        group("2025-06-04", 0, NOTHING, "0"),
        group("2025-06-05", 1, NOTHING, "0", errors=1),
        group("2025-06-06", 1, (400, 100, 0, 0, 0), "0.001"),
        group("2025-06-07", 1, (100, 900, 0, 0, 600), "0.00225"),
    ],
}
TOTAL = {
    "requests": 6,
    "input_tokens": 6500,
    "output_tokens": 2800,
    "cached_tokens": 1200,
    "cache_creation_tokens": 500,
    "reasoning_tokens": 600,
    "total_cost": "0.0380956789",
    "errors": 1,
    "cost_share_percent": 100.0,
}
JUNE_1 = datetime(2025, 6, 1, tzinfo=UTC)
JUNE_8 = datetime(2025, 6, 8, tzinfo=UTC)


# -- every grouping, exactly ----------------------------------------------------------------


async def test_every_grouping_adds_up_exactly(pg: PgAdmin) -> None:
    await trio.to_thread.run_sync(seed, pg)
    async with open_database(pg.settings) as db:
        for by, every in EXPECTED.items():
            report = await load_report(db, JUNE_1, JUNE_8, parse_grouping(by))
            shown = report_json(report)
            # Days without requests are listed only when asked for (--all-days).
            expected = [g for g in every if g["requests"]] if by == "day" else every
            assert shown["groups"] == expected, by
            assert shown["total"] == TOTAL, by
            assert shown["group_count"] == len(expected)
            assert (shown["since"], shown["until"], shown["by"], shown["key"]) == (
                "2025-06-01T00:00:00+00:00", "2025-06-08T00:00:00+00:00", by, None,
            )  # fmt: skip

        every_day = report_json(
            await load_report(db, JUNE_1, JUNE_8, Grouping("day"), all_days=True)
        )
        assert every_day["groups"] == EXPECTED["day"]
        assert every_day["total"] == TOTAL

        # One key's rows only; the limit cuts the list, never the total.
        report = await load_report(db, JUNE_1, JUNE_8, Grouping("model"), key_id=BATCH, limit=1)
        shown = report_json(report)
        assert [(g["group"], g["total_cost"]) for g in shown["groups"]] == [
            ("claude-sonnet-4-5", "0.0123456789")
        ]
        assert (shown["group_count"], shown["total"]["requests"]) == (2, 2)
        assert shown["total"]["total_cost"] == "0.0145956789"

        with pytest.raises(MajordomoError, match=r"no key with id .*'majordomo keys list'"):
            await load_report(db, JUNE_1, JUNE_8, Grouping("model"), key_id=uuid.uuid4())


def test_json_through_the_command(pg: PgAdmin, tmp_path: Path) -> None:
    seed(pg)
    shown = usage_cli(pg, tmp_path, *WINDOW, "--by", "meta:X-Majordomo-User-Id", "--json").json()
    assert shown["by"] == "meta:user-id"
    assert shown["groups"] == EXPECTED["meta:user-id"]
    assert shown["total"] == TOTAL
    # --key narrows the window to one key's requests.
    shown = usage_cli(pg, tmp_path, *WINDOW, "--by", "key", "--key", str(PROD), "--json").json()
    assert shown["groups"] == [{**EXPECTED["key"][0], "cost_share_percent": 100.0}]
    assert shown["key"] == str(PROD)


def test_csv_has_a_fixed_header_and_exact_rows(pg: PgAdmin, tmp_path: Path) -> None:
    seed(pg)
    result = usage_cli(pg, tmp_path, *WINDOW, "--by", "key", "--csv")
    assert result.code == 0, result.err
    lines = list(csv.reader(io.StringIO(result.out)))
    assert lines[0] == list(CSV_COLUMNS)
    assert lines[1:] == [
        [str(PROD), "prod", "3", "3000", "1500", "200", "0", "0", "0.0225", "1", str(share("0.0225"))],
        [str(BATCH), "batch", "2", "3100", "1200", "1000", "500", "600", "0.0145956789", "0",
         str(share("0.0145956789"))],
        ["", "", "1", "400", "100", "0", "0", "0", "0.001", "0", str(share("0.001"))],
    ]  # fmt: skip

    rows = list(csv.DictReader(io.StringIO(usage_cli(pg, tmp_path, *WINDOW, "--csv").out)))
    assert [(r["group"], r["key_name"], r["total_cost"]) for r in rows] == [
        (g["group"], "", g["total_cost"]) for g in EXPECTED["model"]
    ]


def test_table_lists_groups_by_cost_then_the_total(pg: PgAdmin, tmp_path: Path) -> None:
    seed(pg)
    result = usage_cli(pg, tmp_path, *WINDOW, "--by", "provider")
    assert result.code == 0, result.err
    assert result.err == ""
    lines = result.out.splitlines()
    assert lines[0] == "Usage by provider, 2025-06-01 00:00 UTC to 2025-06-08 00:00 UTC"
    assert lines[1] == ""
    assert lines[2].split() == [
        "PROVIDER", "REQUESTS", "INPUT", "OUTPUT", "CACHED", "CACHE", "WRITE", "REASONING",
        "COST", "(USD)", "ERRORS", "SHARE",
    ]  # fmt: skip
    assert lines[3].split() == [
        "openai", "3", "3,000", "1,500", "200", "0", "0", "0.0225", "1", "59.1%",
    ]  # fmt: skip
    assert lines[4].split()[0] == "anthropic"
    assert lines[4].split()[7:] == ["0.0133", "0", "35.0%"]
    assert lines[5].split()[0] == "gemini"
    assert set(lines[6]) == {"-"}
    assert lines[7].split() == [
        "TOTAL", "6", "6,500", "2,800", "1,200", "500", "600", "0.0381", "1", "100.0%",
    ]  # fmt: skip
    assert len(lines) == 8
    # Columns line up: every line of the table is as wide as its header (or narrower).
    assert all(len(line) <= len(lines[6]) for line in lines[2:])

    by_key = usage_cli(pg, tmp_path, *WINDOW, "--by", "key", "--limit", "2").out.splitlines()
    assert by_key[2].startswith("KEY ")
    assert by_key[3].startswith(f"prod {PROD}")
    assert by_key[4].startswith(f"batch {BATCH}")
    assert by_key[6].split()[:2] == ["TOTAL", "6"]
    assert by_key[7] == "(1 more group not shown, in the total; raise --limit to see them)"

    by_meta = usage_cli(pg, tmp_path, *WINDOW, "--by", "meta:user-id").out.splitlines()
    assert [line.split()[0] for line in by_meta[2:7]] == ["user-id", "alice", "bob", "(none)", "42"]


def test_day_view_lists_the_days_with_requests_unless_asked_for_every_day(
    pg: PgAdmin, tmp_path: Path
) -> None:
    seed(pg)
    result = usage_cli(pg, tmp_path, *WINDOW, "--by", "day")
    assert result.code == 0, result.err
    days = [line[:14] for line in result.out.splitlines()[3:8]]
    assert days == [
        "Sun 2025-06-01", "Tue 2025-06-03", "Thu 2025-06-05", "Fri 2025-06-06", "Sat 2025-06-07",
    ]  # fmt: skip
    assert set(result.out.splitlines()[8]) == {"-"}
    refused = usage_cli(pg, tmp_path, *WINDOW, "--by", "model", "--all-days")
    assert_one_line_error(refused, "--all-days goes with --by day")


def test_day_view_shows_every_day_with_a_bar_proportional_to_cost(
    pg: PgAdmin, tmp_path: Path
) -> None:
    seed(pg)
    result = usage_cli(pg, tmp_path, *WINDOW, "--by", "day", "--all-days")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "Usage by day, 2025-06-01 00:00 UTC to 2025-06-08 00:00 UTC"
    assert lines[2].split() == ["DAY", "REQUESTS", "TOKENS", "COST", "(USD)", "ERRORS"]
    days = lines[3:10]
    assert [line[:14] for line in days] == [
        "Sun 2025-06-01", "Mon 2025-06-02", "Tue 2025-06-03", "Wed 2025-06-04",
        "Thu 2025-06-05", "Fri 2025-06-06", "Sat 2025-06-07",
    ]  # fmt: skip
    assert days[1].split()[2:] == ["0", "0", "0.0000", "0"]  # idle, no bar
    assert days[4].split()[2:] == ["1", "0", "0.0000", "1"]  # an error only, no bar
    assert all(len(line) <= 80 for line in lines)

    # The busiest day's bar fills the width; the others are in proportion, to an eighth.
    bars = [line[len(line.rstrip("█▏▎▍▌▋▊▉")) :] for line in days]
    width = len(bars[2])
    assert width >= 10
    assert bars[2] == "█" * width
    peak = Decimal("0.0273456789")
    for bar, expected in zip(bars, EXPECTED["day"], strict=True):
        cost = Decimal(expected["total_cost"])
        want = max(1, round(cost * width * 8 / peak)) if cost else 0
        assert bar_eighths(bar) == want, (bar, expected["group"])
    assert bar_eighths(bars[5]) < bar_eighths(bars[6]) < bar_eighths(bars[0])
    assert set(lines[10]) == {"-"}
    assert lines[11].split() == ["TOTAL", "6", "9,300", "0.0381", "1"]
    assert lines[12].startswith("(one █ = $")


def test_an_empty_window_says_how_to_widen_it(pg: PgAdmin, tmp_path: Path) -> None:
    seed(pg)
    result = usage_cli(pg, tmp_path, "--since", "2024-01-01", "--until", "2024-01-31")
    assert result.code == 0, result.err
    assert result.out == (
        "No requests from 2024-01-01 00:00 UTC to 2024-02-01 00:00 UTC; widen the window "
        "with --since (e.g. --since 90d or --since 2025-01-01).\n"
    )
    day = usage_cli(pg, tmp_path, "--since", "2024-01-01", "--until", "2024-01-31", "--by", "day")
    assert day.out == result.out
    # Scripts get the same shape as ever, all zero.
    shown = usage_cli(pg, tmp_path, "--since", "2024-01-01", "--until", "2024-01-02", "--json")
    assert shown.json()["groups"] == []
    assert shown.json()["total"]["total_cost"] == "0"
    assert shown.json()["total"]["cost_share_percent"] is None
    assert usage_cli(
        pg, tmp_path, "--since", "2024-01-01", "--until", "2024-01-02", "--csv"
    ).out == (",".join(CSV_COLUMNS) + "\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--by", "team"), r"--by 'team' is not a grouping; use key, model, provider, day or "
         r"meta:NAME \(e\.g\. meta:user-id\)"),
        (("--by", "meta:"), r"--by 'meta:' is not a grouping"),
        (("--since", "last week"), r"--since 'last week' is not a time; use a date \(2025-06-01\)"
         r".*an age \(7d, 24h, 90m, 2w\), today or now"),
        (("--until", "2025-13-01"), r"--until '2025-13-01' is not a time"),
        (("--since", "2025-06-07", "--until", "2025-06-01"),
         r"--since \(2025-06-07 00:00 UTC\) is not before --until \(2025-06-02 00:00 UTC\)"),
        (("--since", "0d"), r"--since '0d' counts no day; use 1d or more"),
        (("--json", "--csv"), r"--json and --csv are exclusive"),
        (("--by", "day", "--limit", "3"), r"--limit does not apply to --by day"),
        (("--limit", "0"), r"--limit 0 shows nothing"),
        (("--key", "nope"), r"'nope' is not a key id"),
        (("--key", str(uuid.UUID(int=7))), r"no key with id 00000000-0000-0000-0000-000000000007"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line_saying_what_is_accepted(
    pg: PgAdmin, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    assert_one_line_error(usage_cli(pg, tmp_path, *args), message)


# -- pure parts -----------------------------------------------------------------------------

NOW = datetime(2025, 6, 10, 15, 30, 45, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("7d", datetime(2025, 6, 4, tzinfo=UTC)),  # 7 UTC days, today included
        ("1d", datetime(2025, 6, 10, tzinfo=UTC)),
        ("2w", datetime(2025, 5, 28, tzinfo=UTC)),
        ("24h", datetime(2025, 6, 9, 15, 30, 45, tzinfo=UTC)),
        ("90m", datetime(2025, 6, 10, 14, 0, 45, tzinfo=UTC)),
        ("today", datetime(2025, 6, 10, tzinfo=UTC)),
        ("now", NOW),
        ("2025-06-01", datetime(2025, 6, 1, tzinfo=UTC)),
        ("2025-06-01T12:00:00", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01T12:00:00+02:00", datetime(2025, 6, 1, 10, tzinfo=UTC)),
    ],
)
def test_moments(raw: str, expected: datetime) -> None:
    assert parse_moment(raw, "--since", NOW) == expected


def test_window_defaults_to_the_last_30_days_and_a_date_until_includes_its_day() -> None:
    assert parse_window(None, None, NOW) == (datetime(2025, 5, 12, tzinfo=UTC), NOW)
    assert parse_window("2025-06-01", "2025-06-01", NOW) == (
        datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 2, tzinfo=UTC),
    )  # fmt: skip


def test_groupings() -> None:
    assert parse_grouping(" Model ") == Grouping("model")
    assert parse_grouping("meta:User-Id") == Grouping("meta", "user-id")
    assert parse_grouping("meta:x-majordomo-team").label == "meta:team"


def test_bars_are_proportional_to_an_eighth_and_any_spend_shows() -> None:
    peak = Decimal(10)
    assert cost_bar(peak, peak, 20) == "█" * 20
    assert cost_bar(Decimal(5), peak, 20) == "█" * 10
    assert cost_bar(Decimal("0.3125"), peak, 20) == "▋"  # 5 eighths
    assert cost_bar(Decimal("0.0001"), peak, 20) == "▏"
    assert cost_bar(Decimal(0), peak, 20) == ""
    assert bar_eighths("██▌") == 20
