"""`majordomo pricing show|recalc`, run as a person would, against a real PostgreSQL."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trio

from majordomo.cli.pricing import render_report
from majordomo.db import open_database
from majordomo.pricing import ModelPrice, PriceBook
from majordomo.pricing.recalc import recalculate_costs
from tests.cli import Result, assert_one_line_error, majordomo
from tests.pghelpers import PgAdmin

M = 1_000_000


def pricing_cli(*args: str, env: dict[str, str], cwd: Path) -> Result:
    return majordomo("pricing", *args, env=env, cwd=cwd)


# -- show -----------------------------------------------------------------------------------


def test_show_prints_rates_tiers_and_where_they_come_from(tmp_path: Path) -> None:
    result = pricing_cli(
        "show", "claude-sonnet-4-5-20250929", "--provider", "anthropic", "--at", "2025-10-01",
        env={}, cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.err
    assert result.out == (
        "claude-sonnet-4-5-20250929 (anthropic): USD per 1M tokens, at 2025-10-01 00:00 UTC\n"
        "  input        3          bundled; 6 when the prompt exceeds 200,000 tokens\n"
        "  output       15         bundled; 22.5 when the prompt exceeds 200,000 tokens\n"
        "  cache read   0.3        bundled; 0.6 when the prompt exceeds 200,000 tokens\n"
        "  cache write  3.75       bundled; 7.5 when the prompt exceeds 200,000 tokens\n"
        "  from         bundled genai-prices 0.2.3 'anthropic/claude-sonnet-4-5'\n"
        "  also priced  cache_write_1h_mtok (bundled), web_searches_kcount (bundled) "
        "(not reported by Majordomo)\n"
    )


def test_show_json_finds_the_provider_when_not_given(tmp_path: Path) -> None:
    result = pricing_cli("show", "gpt-4o-2024-08-06", "--json", env={}, cwd=tmp_path)
    assert result.code == 0, result.err
    shown = result.json()
    assert (shown["provider"], shown["source"]) == ("openai", "bundled")
    assert shown["input"] == {"per_million": "2.5", "source": "bundled", "tiers": []}
    assert shown["cache_read"]["per_million"] == "1.25"
    assert shown["cache_write"] is None


def test_show_an_unknown_model_says_what_to_do(tmp_path: Path) -> None:
    result = pricing_cli("show", "my-fine-tune", "--provider", "openai", env={}, cwd=tmp_path)
    assert_one_line_error(
        result, r"no price for model 'my-fine-tune' \(provider openai\).*pricing.overrides"
    )
    result = pricing_cli("show", "gpt-4o", "--at", "yesterday", env={}, cwd=tmp_path)
    assert_one_line_error(result, r"--at 'yesterday' is not a date; use 2025-06-01")


class _TableHandler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, bytes]]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, b""))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def table_server() -> Iterator[str]:
    _TableHandler.routes = {
        "/current-v1.json": (
            200,
            b'{"updated_at": "2025-06-01", "prices": [{"id": "gpt-4o", "vendor": "openai",'
            b' "name": "GPT-4o", "input": 3, "output": 12, "input_cached": null}]}',
        ),
        "/broken.json": (500, b"oops"),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TableHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_show_fetch_uses_the_remote_table(tmp_path: Path, table_server: str) -> None:
    env = {"MAJORDOMO_PRICING_REMOTE_URL": table_server + "/current-v1.json"}
    shown = pricing_cli("show", "gpt-4o", "--fetch", "--json", env=env, cwd=tmp_path).json()
    assert (shown["source"], shown["input"]["per_million"]) == ("remote", "3")
    # llm-prices has no cached rate here: the bundled one stays, and says so.
    assert shown["cache_read"] == {"per_million": "1.25", "source": "bundled", "tiers": []}
    assert shown["matched"][0] == "llm-prices 'openai/gpt-4o', updated 2025-06-01"

    env = {"MAJORDOMO_PRICING_REMOTE_URL": table_server + "/broken.json"}
    result = pricing_cli("show", "gpt-4o", "--fetch", env=env, cwd=tmp_path)
    assert_one_line_error(
        result, r"cannot use the prices at http://127.0.0.1:\d+/broken.json: HTTP 500.*--fetch"
    )


# -- recalc -------------------------------------------------------------------------------

ROWS = [
    # id, provider, model, requested_at, (input, output, cached, written, reasoning),
    # stored (input_cost, output_cost, total_cost, found)
    # Stored before a price was known: 6000 * 2.5 + 4000 * 1.25 → 0.02; 2000 * 10 → 0.02.
    ("00000000-0000-0000-0000-00000000000a", "openai", "gpt-4o-2024-08-06",
     "2025-06-02T10:00:00Z", (10_000, 2_000, 4_000, 0, 0), ("0", "0", "0", False)),
    # Already right: 800 * 3 + 500 * 0.3 + 200 * 3.75 → 0.0033; 300 * 15 → 0.0045.
    ("00000000-0000-0000-0000-00000000000b", "anthropic", "claude-sonnet-4-5-20250929",
     "2025-06-03T10:00:00Z", (1_500, 300, 500, 200, 0), ("0.0033", "0.0045", "0.0078", True)),
    # Before --since: left alone however wrong.
    ("00000000-0000-0000-0000-00000000000c", "gemini", "gemini-2.5-flash",
     "2025-05-01T10:00:00Z", (1_000, 1_000, 0, 0, 0), ("9", "9", "18", True)),
    # Priced once (by a table this process lacks), unknown now: keeps its cost.
    ("00000000-0000-0000-0000-00000000000d", "openai", "my-fine-tune",
     "2025-06-04T10:00:00Z", (1_000, 1_000, 0, 0, 0), ("0.5", "0.5", "1", True)),
    # Unknown then and now: nothing to change.
    ("00000000-0000-0000-0000-00000000000e", "openai", "unknown-model",
     "2025-06-05T10:00:00Z", (1_000, 1_000, 0, 0, 0), ("0", "0", "0", False)),
    # Wrongly priced (say, an old table): 1000 * 0.3 → 0.0003; 1000 * 2.5 → 0.0025.
    ("00000000-0000-0000-0000-00000000000f", "gemini", "gemini-2.5-flash",
     "2025-06-06T10:00:00Z", (1_000, 1_000, 0, 0, 0), ("0.001", "0.001", "0.002", True)),
]  # fmt: skip


def insert_rows(pg: PgAdmin, rows: list[tuple[Any, ...]] = ROWS) -> None:
    for row_id, provider, model, at, tokens, stored in rows:
        when = datetime.fromisoformat(at)
        pg.execute(
            """
            INSERT INTO llm_requests (
                id, provider, model, request_path, request_method, requested_at, responded_at,
                status_code, input_tokens, output_tokens, cached_tokens, cache_creation_tokens,
                reasoning_tokens, input_cost, output_cost, total_cost, model_alias_found
            ) VALUES ($1, $2, $3, '/v1/x', 'POST', $4, $4, 200, $5, $6, $7, $8, $9,
                      $10, $11, $12, $13)
            """,
            uuid.UUID(row_id), provider, model, when, *tokens,
            *(Decimal(v) for v in stored[:3]), stored[3],
        )  # fmt: skip


def costs(pg: PgAdmin) -> dict[str, tuple[Decimal, Decimal, Decimal, bool]]:
    return {
        str(r["id"])[-1]: (
            r["input_cost"],
            r["output_cost"],
            r["total_cost"],
            r["model_alias_found"],
        )
        for r in pg.fetch("SELECT * FROM llm_requests ORDER BY id")
    }


def test_recalc_reprices_stored_rows_and_reports_what_changed(pg: PgAdmin, tmp_path: Path) -> None:
    assert majordomo("db", "migrate", env=pg.env, cwd=tmp_path).code == 0
    insert_rows(pg)
    before = costs(pg)

    dry = pricing_cli(
        "recalc", "--since", "2025-06-01", "--dry-run", "--json", env=pg.env, cwd=tmp_path
    )
    assert dry.code == 0, dry.err
    report = dry.json()
    assert {k: report[k] for k in ("rows", "changed", "unpriced_kept", "dry_run")} == {
        "rows": 5,
        "changed": 2,
        "unpriced_kept": 1,
        "dry_run": True,
    }
    # before: 0 + 0.0078 + 1 + 0 + 0.002; after: 0.04 + 0.0078 + 1 + 0 + 0.0028
    assert Decimal(report["total_cost_before"]) == Decimal("1.0098")
    assert Decimal(report["total_cost_after"]) == Decimal("1.0506")
    assert costs(pg) == before

    result = pricing_cli("recalc", "--since", "2025-06-01", env=pg.env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.out.splitlines()[:2] == [
        "Repriced 5 rows since 2025-06-01T00:00:00+00:00: 2 changed.",
        "Total cost before: $1.0098   after: $1.0506   difference: $0.0408",
    ]
    assert "  openai/gpt-4o-2024-08-06: 1 of 1 rows, $0 → $0.04" in result.out
    assert "1 rows had a price but none was found now" in result.out
    after = costs(pg)
    assert after["a"] == (Decimal("0.02"), Decimal("0.02"), Decimal("0.04"), True)
    assert after["f"] == (Decimal("0.0003"), Decimal("0.0025"), Decimal("0.0028"), True)
    for unchanged in "bcde":
        assert after[unchanged] == before[unchanged]

    # Nothing left to change; --model narrows the rows.
    again = pricing_cli(
        "recalc", "--since", "2025-06-01T00:00:00Z", "--model", "gpt-4o-2024-08-06", "--json",
        env=pg.env, cwd=tmp_path,
    ).json()  # fmt: skip
    assert (again["rows"], again["changed"], again["model"]) == (1, 0, "gpt-4o-2024-08-06")


def test_recalc_refuses_a_bad_date(pg: PgAdmin, tmp_path: Path) -> None:
    result = pricing_cli("recalc", "--since", "June", env=pg.env, cwd=tmp_path)
    assert_one_line_error(result, r"--since 'June' is not a date; use 2025-06-01")


async def test_recalc_pages_through_rows_sharing_a_timestamp(pg: PgAdmin) -> None:
    """Batches of 2 over 7 rows, 4 of them at the same instant: each row once, none skipped."""
    same = "2025-06-10T00:00:00Z"
    rows = [
        (f"00000000-0000-0000-0000-00000000001{i}", "openai", "gpt-4o",
         same if i < 4 else f"2025-06-1{i}T00:00:00Z", (M, 0, 0, 0, 0), ("0", "0", "0", False))
        for i in range(7)
    ]  # fmt: skip
    book = PriceBook({"gpt-4o": ModelPrice(Decimal(1), Decimal(1))})
    async with open_database(pg.settings) as db:
        await db.migrate()
        await trio.to_thread.run_sync(insert_rows, pg, rows)
        since = datetime(2025, 6, 1, tzinfo=UTC)
        report = await recalculate_costs(db, book, since, batch_size=2)
        assert (report.rows, report.changed) == (7, 7)
        assert report.after == 7  # a million input tokens at $1 each row
        again = await recalculate_costs(db, book, since, batch_size=2)
        assert (again.rows, again.changed) == (7, 0)
    assert render_report(again).startswith("Repriced 7 rows since 2025-06-01T00:00:00+00:00: 0")
    stored = await pg.afetch("SELECT DISTINCT total_cost, model_alias_found FROM llm_requests")
    assert [tuple(r) for r in stored] == [(Decimal(1), True)]
