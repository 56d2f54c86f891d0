"""Prices and cost: hand-computed cases, the layers (overrides, remote tables, bundled data),
parsing both remote formats, and the refresher against a real local HTTP server.

Rates in the table below are USD per 1M tokens as the providers publish them, checked against
genai-prices' bundled data (`genai_prices/data.py`, 0.2.3). Each case shows its arithmetic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from majordomo import pricing
from majordomo.pricing import (
    Cost,
    ModelPrice,
    PriceBook,
    RemoteTable,
    describe_changes,
    model_id_candidates,
    normalise_model_id,
    parse_overrides,
    parse_remote_table,
    refresh_once,
    refresh_prices,
)
from majordomo.pricing import book as pricing_book
from majordomo.records import Usage

AT = datetime(2025, 10, 1, 12, 0, tzinfo=UTC)
M = 1_000_000


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


def usage(input: int, output: int, cached: int = 0, written: int = 0, reasoning: int = 0) -> Usage:
    return Usage(
        input_tokens=input,
        output_tokens=output,
        cached_tokens=cached,
        cache_creation_tokens=written,
        reasoning_tokens=reasoning,
    )


def d(text: str) -> Decimal:
    return Decimal(text)


# (provider, model, usage, at, expected input cost, expected output cost)
CASES: list[tuple[str, str, Usage, datetime, str, str]] = [
    # OpenAI gpt-4o: $2.50 in, $10 out, $1.25 cached input.
    # 1000 * 2.5 / M = 0.0025; 500 * 10 / M = 0.005
    ("openai", "gpt-4o", usage(1000, 500), AT, "0.0025", "0.005"),
    # Dated id, with cache reads: (10000 - 4000) * 2.5 + 4000 * 1.25 = 15000 + 5000 → 0.02;
    # 2000 * 10 → 0.02
    ("openai", "gpt-4o-2024-08-06", usage(10_000, 2_000, cached=4_000), AT, "0.02", "0.02"),
    # The May 2024 snapshot has its own price, $5 / $15, and no cached rate: cached tokens
    # pay the input rate. 1000 * 5 → 0.005; 1000 * 15 → 0.015
    ("openai", "gpt-4o-2024-05-13", usage(1_000, 1_000, cached=500), AT, "0.005", "0.015"),
    # gpt-4o-mini: $0.15 / $0.60 / $0.075 cached.
    # 50000 * 0.15 + 50000 * 0.075 = 7500 + 3750 → 0.01125; 10000 * 0.6 → 0.006
    ("openai", "gpt-4o-mini-2024-07-18", usage(100_000, 10_000, cached=50_000), AT,
     "0.01125", "0.006"),
    # o3 after its 2025-06-10 price cut: $2 / $8. Reasoning is output: 5000 * 8 → 0.04;
    # 2000 * 2 → 0.004
    ("openai", "o3", usage(2_000, 5_000, reasoning=4_000), AT, "0.004", "0.04"),
    # The same call before the cut ($10 / $40): request time matters.
    # 2000 * 10 → 0.02; 5000 * 40 → 0.2
    ("openai", "o3-2025-04-16", usage(2_000, 5_000, reasoning=4_000),
     datetime(2025, 5, 1, tzinfo=UTC), "0.02", "0.2"),
    # gpt-5: $1.25 / $10 / $0.125 cached, reasoning at the output rate.
    # 10000 * 1.25 + 10000 * 0.125 = 12500 + 1250 → 0.01375; 3000 * 10 → 0.03
    ("openai", "gpt-5-2025-08-07", usage(20_000, 3_000, cached=10_000, reasoning=2_000), AT,
     "0.01375", "0.03"),
    # gpt-4.1-nano: $0.10 / $0.40. A million each way: 0.1 and 0.4.
    ("openai", "gpt-4.1-nano", usage(M, M), AT, "0.1", "0.4"),
    # Embeddings: $0.02 input only. 12345 * 0.02 / M = 0.0002469
    ("openai", "text-embedding-3-small", usage(12_345, 0), AT, "0.0002469", "0"),
    # Anthropic Claude Sonnet 4.5 (dated id): $3 / $15, reads $0.30, 5-minute writes $3.75.
    # Input 1500 = 800 plain + 500 read + 200 written:
    # 800 * 3 + 500 * 0.3 + 200 * 3.75 = 2400 + 150 + 750 → 0.0033; 300 * 15 → 0.0045
    ("anthropic", "claude-sonnet-4-5-20250929", usage(1_500, 300, cached=500, written=200), AT,
     "0.0033", "0.0045"),
    # Long context: a prompt over 200k tokens pays $6 / $22.50 / $0.60 reads for every token.
    # 200000 * 6 + 50000 * 0.6 = 1.2 + 0.03 → 1.23; 1000 * 22.5 → 0.0225
    ("anthropic", "claude-sonnet-4-5-20250929", usage(250_000, 1_000, cached=50_000), AT,
     "1.23", "0.0225"),
    # Exactly 200k is not over the threshold: 200000 * 3 → 0.6; 1000 * 15 → 0.015
    ("anthropic", "claude-sonnet-4-5", usage(200_000, 1_000), AT, "0.6", "0.015"),
    # Opus 4.1: $15 / $75, reads $1.50, writes $18.75. 10000 = 6000 + 2000 read + 2000 written:
    # 6000 * 15 + 2000 * 1.5 + 2000 * 18.75 = 90000 + 3000 + 37500 → 0.1305; 1000 * 75 → 0.075
    ("anthropic", "claude-opus-4-1-20250805",
     usage(10_000, 1_000, cached=2_000, written=2_000), AT, "0.1305", "0.075"),
    # Haiku 4.5: $1 / $5, writes $1.25; thinking is output. 3000 = 2000 + 1000 written:
    # 2000 * 1 + 1000 * 1.25 → 0.00325; 800 * 5 → 0.004
    ("anthropic", "claude-haiku-4-5-20251001", usage(3_000, 800, written=1_000, reasoning=300),
     AT, "0.00325", "0.004"),
    # Haiku 3.5: $0.80 / $4, reads $0.08. 5000 = 1000 + 4000 read:
    # 1000 * 0.8 + 4000 * 0.08 = 800 + 320 → 0.00112; 100 * 4 → 0.0004
    ("anthropic", "claude-3-5-haiku-20241022", usage(5_000, 100, cached=4_000), AT,
     "0.00112", "0.0004"),
    # Opus 4.6 had long-context tiers ($10 / $37.50 over 200k) until 2026-03-13, then a flat
    # $5 / $25. 300000 * 10 → 3; 1000 * 37.5 → 0.0375 ...
    ("anthropic", "claude-opus-4-6", usage(300_000, 1_000), datetime(2026, 2, 1, tzinfo=UTC),
     "3", "0.0375"),
    # ... and after: 300000 * 5 → 1.5; 1000 * 25 → 0.025
    ("anthropic", "claude-opus-4-6", usage(300_000, 1_000), datetime(2026, 4, 1, tzinfo=UTC),
     "1.5", "0.025"),
    # Gemini 2.5 Flash: $0.30 / $2.50, cached $0.03; thinking tokens are output.
    # 8000 * 0.3 + 2000 * 0.03 = 2400 + 60 → 0.00246; 3000 * 2.5 → 0.0075
    ("gemini", "gemini-2.5-flash", usage(10_000, 3_000, cached=2_000, reasoning=2_000), AT,
     "0.00246", "0.0075"),
    # A dated preview id resolves to 2.5 Flash: 1000 * 0.3 → 0.0003; 800 * 2.5 → 0.002
    ("gemini", "gemini-2.5-flash-preview-09-2025", usage(1_000, 800, reasoning=500), AT,
     "0.0003", "0.002"),
    # Gemini 2.5 Pro up to 200k: $1.25 / $10. 100000 * 1.25 → 0.125; 2000 * 10 → 0.02
    ("gemini", "gemini-2.5-pro", usage(100_000, 2_000, reasoning=1_500), AT, "0.125", "0.02"),
    # Over 200k: $2.50 / $15, cached $0.25.
    # 200000 * 2.5 + 100000 * 0.25 = 0.5 + 0.025 → 0.525; 1000 * 15 → 0.015
    ("gemini", "gemini-2.5-pro", usage(300_000, 1_000, cached=100_000), AT, "0.525", "0.015"),
    # Gemini 2.0 Flash: $0.10 / $0.40. 4000 * 0.1 → 0.0004; 1000 * 0.4 → 0.0004
    ("gemini", "gemini-2.0-flash", usage(4_000, 1_000), AT, "0.0004", "0.0004"),
    # Gemini 2.5 Flash-Lite: $0.10 / $0.40, cached $0.01.
    # 500000 * 0.1 + 500000 * 0.01 = 0.05 + 0.005 → 0.055; 100000 * 0.4 → 0.04
    ("gemini", "gemini-2.5-flash-lite", usage(M, 100_000, cached=500_000), AT, "0.055", "0.04"),
]  # fmt: skip


@pytest.mark.parametrize(("provider", "model", "use", "at", "input_cost", "output_cost"), CASES)
def test_cost_matches_the_hand_computed_price(
    book: PriceBook,
    provider: str,
    model: str,
    use: Usage,
    at: datetime,
    input_cost: str,
    output_cost: str,
) -> None:
    cost = book.cost(provider, model, use, at)
    assert cost == Cost(
        d(input_cost), d(output_cost), d(input_cost) + d(output_cost), True, "bundled"
    )
    assert cost.total_cost == cost.input_cost + cost.output_cost


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "my-own-fine-tune"),
        ("anthropic", "claude-nonexistent-9"),
        # Prices are looked up within the provider that served the call: Gemini has no gpt-4o.
        ("gemini", "gpt-4o"),
        ("someprovider", "gpt-4o"),
        ("openai", ""),
    ],
)
def test_an_unknown_model_costs_nothing_and_is_flagged(
    book: PriceBook, provider: str, model: str
) -> None:
    cost = book.cost(provider, model, usage(1_000, 1_000), AT)
    assert cost == Cost(Decimal(0), Decimal(0), Decimal(0), False, "none")
    assert book.resolve(provider, model, AT) is None


def test_a_streamed_and_a_non_streamed_call_with_the_same_usage_cost_the_same(
    book: PriceBook,
) -> None:
    # The providers' extractors give both the same Usage; the cost depends on nothing else.
    streamed = usage(12_000, 900, cached=3_000, written=1_000, reasoning=400)
    whole = dataclasses.replace(streamed)
    assert streamed is not whole
    for provider, model in (
        ("openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-5"),
        ("gemini", "gemini-2.5-pro"),
    ):
        assert book.cost(provider, model, streamed, AT) == book.cost(provider, model, whole, AT)


def test_inconsistent_usage_is_priced_from_its_parts_without_raising(book: PriceBook) -> None:
    # Cache reads above the prompt total (a provider bug) must not make cost() raise:
    # the parts are what was billed. 600 read at 1.25 + 0 plain → 0.00075.
    cost = book.cost("openai", "gpt-4o", usage(500, 0, cached=600), AT)
    assert cost.input_cost == d("0.00075")
    assert cost.found


def test_fast_path_agrees_with_genai_prices_on_every_model(book: PriceBook) -> None:
    """Our arithmetic equals genai-prices' generic calculation for every openai, anthropic and
    google model, at several dates, for usage with cache reads, writes and reasoning."""
    from genai_prices import Usage as GenaiUsage
    from genai_prices.data import providers

    usages = [
        usage(1_000, 500),
        usage(10_000, 2_000, cached=4_000, written=1_000, reasoning=1_500),
        usage(300_000, 5_000, cached=100_000, written=20_000, reasoning=4_000),
    ]
    dates = [datetime(2024, 6, 1, tzinfo=UTC), AT, datetime(2026, 6, 1, tzinfo=UTC)]
    checked = 0
    for provider in providers:
        if provider.id not in ("openai", "anthropic", "google"):
            continue
        for model in provider.models:
            for at in dates:
                model_price = model.get_prices(at)
                prices = {k: v for k, v in vars(model_price).items() if v is not None}
                for u in usages:
                    theirs = model.calc_price(
                        GenaiUsage(
                            input_tokens=u.input_tokens,
                            output_tokens=u.output_tokens,
                            cache_read_tokens=u.cached_tokens,
                            cache_write_tokens=u.cache_creation_tokens,
                            output_reasoning_tokens=u.reasoning_tokens,
                        ),
                        provider,
                        genai_request_timestamp=at,
                    )
                    ours = pricing_book._token_costs(prices, u)
                    assert ours == (theirs.input_price, theirs.output_price), (model.id, at, u)
                    checked += 1
    assert checked > 1000


# -- model ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", ("gpt-4o",)),
        ("gpt-4o-2024-08-06", ("gpt-4o-2024-08-06", "gpt-4o")),
        ("claude-sonnet-4-5-20250929", ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5")),
        ("Claude-Sonnet-4.5", ("claude-sonnet-4-5",)),
        ("claude-opus-4@20250514", ("claude-opus-4@20250514", "claude-opus-4")),
        ("models/gemini-2.5-flash", ("gemini-2-5-flash",)),
        ("gemini-2.5-flash-preview-09-2025", ("gemini-2-5-flash-preview-09-2025",
                                              "gemini-2-5-flash-preview")),
        ("gemini-2.5-flash-preview-05-20", ("gemini-2-5-flash-preview-05-20",
                                            "gemini-2-5-flash-preview")),
        ("gpt-4-0613", ("gpt-4-0613", "gpt-4")),
        # Not dates: a version number, a size.
        ("gpt-5.4", ("gpt-5-4",)),
        ("llama-3-70b-8192", ("llama-3-70b-8192",)),
    ],
)  # fmt: skip
def test_model_ids_are_normalised_for_matching(model: str, expected: tuple[str, ...]) -> None:
    assert model_id_candidates(model) == expected
    assert normalise_model_id(model) == expected[0]


# -- overrides ------------------------------------------------------------------------------


def test_parse_overrides_reads_prices_per_million_tokens() -> None:
    parsed = parse_overrides(
        {
            "gpt-4o": {"input": 2, "output": 8.5},
            "Anthropic/Claude-Sonnet-4.5": {
                "input": "2.4",
                "output": 12,
                "cache_read": 0.1,
                "cache_write": 3,
            },
        }
    )
    assert parsed == {
        "gpt-4o": ModelPrice(d("2"), d("8.5")),
        # 0.1 stays exactly 0.1 (no binary float noise).
        "anthropic/claude-sonnet-4.5": ModelPrice(d("2.4"), d("12"), d("0.1"), d("3")),
    }
    # The environment variable's form: a JSON object.
    assert parse_overrides('{"gpt-4o": {"input": 2, "output": 8.5}}') == {
        "gpt-4o": ModelPrice(d("2"), d("8.5"))
    }
    assert parse_overrides(None) == {}
    assert parse_overrides({}) == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["gpt-4o"], r"expected a mapping of model id to prices"),
        ("{nope", r"expected a JSON object"),
        ({"gpt-4o": 2.5}, r"expected prices for model 'gpt-4o' as a mapping"),
        ({"gpt-4o": {"input": 2.5}}, r"expected input and output prices for model 'gpt-4o' .*, missing output"),
        ({"gpt-4o": {"input": 1, "output": 2, "cached": 1}}, r"expected only input, output.*cached"),
        ({"gpt-4o": {"input": -1, "output": 2}}, r"expected a price of zero or more for gpt-4o.input"),
        ({"gpt-4o": {"input": True, "output": 2}}, r"expected a number .* gpt-4o.input"),
        ({"gpt-4o": {"input": "cheap", "output": 2}}, r"expected a number .* gpt-4o.input"),
        ({"gpt-4o": {"input": "nan", "output": 2}}, r"expected a price of zero or more"),
        ({"GPT-4o": {"input": 1, "output": 2}, "gpt-4o": {"input": 1, "output": 2}},
         r"expected each model once"),
    ],
)  # fmt: skip
def test_parse_overrides_says_what_is_expected(raw: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides(raw)


def test_an_override_wins_and_the_rest_comes_from_the_next_layer() -> None:
    book = PriceBook({"gpt-4o": ModelPrice(d("2"), d("8"))})
    # Applies to the dated id too; cached input keeps the bundled $1.25:
    # 6000 * 2 + 4000 * 1.25 = 12000 + 5000 → 0.017; 2000 * 8 → 0.016
    cost = book.cost("openai", "gpt-4o-2024-08-06", usage(10_000, 2_000, cached=4_000), AT)
    assert cost == Cost(d("0.017"), d("0.016"), d("0.033"), True, "override")
    resolved = book.resolve("openai", "gpt-4o-2024-08-06", AT)
    assert resolved is not None
    assert (resolved.input.rate, resolved.input.source) == (d("2"), "override")
    assert (resolved.cache_read.rate, resolved.cache_read.source) == (d("1.25"), "bundled")  # type: ignore[union-attr]
    assert resolved.matched[0] == "override 'gpt-4o' in pricing.overrides"


def test_a_full_override_replaces_tiers_too() -> None:
    book = PriceBook({"claude-sonnet-4.5": ModelPrice(d("2.4"), d("12"), d("0.24"), d("3"))})
    # 800 * 2.4 + 500 * 0.24 + 200 * 3 = 1920 + 120 + 600 → 0.00264; 300 * 12 → 0.0036
    cost = book.cost("anthropic", "claude-sonnet-4-5-20250929", usage(1_500, 300, 500, 200), AT)
    assert cost == Cost(d("0.00264"), d("0.0036"), d("0.00624"), True, "override")
    # Over 200k the negotiated flat rate still applies: 250000 * 2.4 → 0.6
    cost = book.cost("anthropic", "claude-sonnet-4-5", usage(250_000, 0), AT)
    assert cost.input_cost == d("0.6")


def test_override_keys_match_by_provider_exact_id_then_normalised_id() -> None:
    book = PriceBook(
        {
            "gpt-4o": ModelPrice(d("1"), d("1")),
            "openai/gpt-4o": ModelPrice(d("2"), d("2")),
            "gpt-4o-2024-05-13": ModelPrice(d("3"), d("3")),
            "my-fine-tune": ModelPrice(d("4"), d("4")),
        }
    )

    def input_rate(provider: str, model: str) -> Decimal:
        return book.cost(provider, model, usage(M, 0), AT).input_cost

    assert input_rate("openai", "gpt-4o") == 2  # the provider-prefixed key wins
    assert input_rate("groq", "gpt-4o") == 1  # another provider: the unprefixed key
    assert input_rate("azure", "gpt-4o") == 2  # Azure is priced as OpenAI: openai/ keys apply
    assert input_rate("openai", "gpt-4o-2024-05-13") == 3  # the exact dated key
    assert input_rate("openai", "gpt-4o-2024-11-20") == 2  # the undated one
    assert input_rate("gemini", "my-fine-tune") == 4  # models no source knows
    assert book.cost("gemini", "my-fine-tune", usage(1, 1), AT).source == "override"


# -- remote tables ----------------------------------------------------------------------------


def llm_prices(updated_at: str, *entries: dict[str, Any]) -> bytes:
    return json.dumps({"updated_at": updated_at, "prices": list(entries)}).encode()


GOOD_LLM_PRICES = llm_prices(
    "2025-06-01",
    {"id": "gpt-4o", "vendor": "openai", "name": "GPT-4o", "input": 3, "output": 12,
     "input_cached": 1.5},
    {"id": "claude-sonnet-4.5", "vendor": "anthropic", "name": "Claude Sonnet 4.5",
     "input": 3.3, "output": 16.5, "input_cached": 0.33},
    {"id": "gpt-9", "vendor": "openai", "name": "GPT-9", "input": 100, "output": 200,
     "input_cached": None},
    {"id": "gemini-2.5-flash", "vendor": "google", "name": "Gemini 2.5 Flash", "input": 0.5,
     "output": 3},
)  # fmt: skip


def test_parse_llm_prices_current_v1() -> None:
    table = parse_remote_table(GOOD_LLM_PRICES)
    assert (table.format, table.updated_at, table.model_count) == ("llm-prices", "2025-06-01", 4)
    assert table.entries[0] == pricing.RemoteEntry(
        "gpt-4o", "openai", "GPT-4o", ModelPrice(d("3"), d("12"), d("1.5"))
    )
    assert table.entries[2].price.cache_read is None
    assert table.skipped == ()


def test_llm_prices_take_precedence_over_bundled_prices_where_they_match() -> None:
    book = PriceBook()
    book.replace_remote(parse_remote_table(GOOD_LLM_PRICES))
    assert (book.remote_updated_at, book.remote_model_count) == ("2025-06-01", 4)
    # gpt-4o-2024-08-06 matches "gpt-4o" once the date is dropped:
    # 6000 * 3 + 4000 * 1.5 = 18000 + 6000 → 0.024; 2000 * 12 → 0.024
    cost = book.cost("openai", "gpt-4o-2024-08-06", usage(10_000, 2_000, cached=4_000), AT)
    assert cost == Cost(d("0.024"), d("0.024"), d("0.048"), True, "remote")
    # "claude-sonnet-4.5" matches the dated API id; llm-prices has no cache-write price, so
    # writes keep the bundled $3.75: 800 * 3.3 + 500 * 0.33 + 200 * 3.75
    # = 2640 + 165 + 750 → 0.003555; 300 * 16.5 → 0.00495
    cost = book.cost("anthropic", "claude-sonnet-4-5-20250929", usage(1_500, 300, 500, 200), AT)
    assert cost == Cost(d("0.003555"), d("0.00495"), d("0.008505"), True, "remote")
    # Vendors map to our providers: google → gemini. 1000 * 0.5 → 0.0005; 1000 * 3 → 0.003
    assert book.cost("gemini", "gemini-2.5-flash", usage(1_000, 1_000), AT).total_cost == d(
        "0.0035"
    )
    # A model only the remote table knows.
    assert book.cost("openai", "gpt-9", usage(M, 0), AT).input_cost == 100
    # Models it does not list keep the bundled prices; vendors do not cross providers.
    assert book.cost("openai", "gpt-4o-mini", usage(M, 0), AT) == Cost(
        d("0.15"), d("0"), d("0.15"), True, "bundled"
    )
    assert not book.cost("gemini", "gpt-9", usage(M, 0), AT).found
    # Overrides still win over the remote table.
    book = PriceBook({"gpt-4o": ModelPrice(d("1"), d("1"))})
    book.replace_remote(parse_remote_table(GOOD_LLM_PRICES))
    assert book.cost("openai", "gpt-4o", usage(M, 0), AT).source == "override"


def genai_table(input_mtok: Any) -> bytes:
    return genai_table_with({"input_mtok": input_mtok, "output_mtok": 20})


def genai_table_with(prices: dict[str, Any]) -> bytes:
    return json.dumps(
        [
            {
                "id": "openai",
                "name": "OpenAI",
                "api_pattern": r"https://api\.openai\.com",
                "models": [
                    {
                        "id": "gpt-4o",
                        "match": {"or": [{"equals": "gpt-4o"}, {"starts_with": "gpt-4o-2024"}]},
                        "prices": prices,
                    }
                ],
            }
        ]
    ).encode()


def test_a_genai_prices_table_stands_in_for_the_bundled_data() -> None:
    table = parse_remote_table(genai_table({"base": 5, "tiers": [{"start": 1000, "price": 7}]}))
    assert (table.format, table.updated_at, table.model_count) == ("genai-prices", None, 1)
    book = PriceBook()
    book.replace_remote(table)
    # Tiers as genai-prices defines them: 1000 tokens is not over 1000 → 1000 * 5 → 0.005 ...
    cost = book.cost("openai", "gpt-4o-2024-08-06", usage(1_000, 1_000), AT)
    assert cost == Cost(d("0.005"), d("0.02"), d("0.025"), True, "remote")
    # ... 2000 is: 2000 * 7 → 0.014
    assert book.cost("openai", "gpt-4o", usage(2_000, 0), AT).input_cost == d("0.014")
    # What the remote table lacks, the bundled data still prices.
    assert book.cost("openai", "gpt-4o-mini", usage(M, 0), AT).source == "bundled"


def test_the_bundled_data_round_trips_as_a_remote_genai_prices_table(book: PriceBook) -> None:
    from genai_prices.data import providers

    data = json.dumps([genai_raw(p) for p in providers]).encode()
    table = parse_remote_table(data)
    assert table.model_count == sum(len(p.models) for p in providers)
    remote = PriceBook()
    remote.replace_remote(table)
    for provider, model, use, at, *_ in CASES:
        expected = dataclasses.replace(book.cost(provider, model, use, at), source="remote")
        assert remote.cost(provider, model, use, at) == expected
    assert describe_changes(table, table).endswith("0 added, 0 removed, 0 with new prices")


def test_layers_that_disagree_still_price_the_tokens_we_report() -> None:
    # Bundled gpt-4o-transcribe has an audio input price but no cached-audio one; a cached
    # rate from llm-prices on top is inconsistent for genai-prices. Text tokens still price:
    # 800 * 2.5 + 200 * 1 = 2000 + 200 → 0.0022; 100 * 10 → 0.001
    book = PriceBook()
    book.replace_remote(
        parse_remote_table(
            llm_prices(
                "2025-06-01",
                {
                    "id": "gpt-4o-transcribe",
                    "vendor": "openai",
                    "input": 2.5,
                    "output": 10,
                    "input_cached": 1,
                },
            )
        )
    )
    cost = book.cost("openai", "gpt-4o-transcribe", usage(1_000, 100, cached=200), AT)
    assert cost == Cost(d("0.0022"), d("0.001"), d("0.0032"), True, "remote")


def test_inconsistent_price_data_costs_nothing_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A cached-input price without an input price: genai-prices refuses to use it.
    book = PriceBook()
    book.replace_remote(parse_remote_table(genai_table_with({"cache_read_mtok": 1})))
    for _ in range(2):
        assert book.cost("openai", "gpt-4o", usage(1_000, 100), AT) == pricing.NO_COST
    [record] = caplog.records
    assert record.getMessage() == "cannot price openai model 'gpt-4o'; recording cost 0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "malformed JSON"),
        (b"\xff\xfe", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"[]", "empty table"),
        (b'{"updated_at": "2025-06-01", "prices": []}', "empty table"),
        (b'[{"id": "openai", "name": "OpenAI", "api_pattern": "x", "models": []}]', "empty table"),
        (b'{"updated_at": "2025-06-01"}', "unrecognised price table"),
        (b'"prices"', "unrecognised price table"),
        (b'[{"id": "openai"}]', "not valid genai-prices data"),
        (b'{"updated_at": 20250601, "prices": [{"id": "a", "input": 1, "output": 1}]}',
         "expected updated_at to be a date string"),
        (b'{"prices": [{"id": "a", "input": "1", "output": 1}, {"input": 1, "output": 1}]}',
         r"empty table: .* \(2 malformed entries\)"),
    ],
)  # fmt: skip
def test_parse_remote_table_refuses_what_is_not_a_table(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_remote_table(data)


def test_malformed_llm_prices_entries_are_skipped_and_named() -> None:
    table = parse_remote_table(
        llm_prices(
            "2025-06-01",
            {"id": "gpt-4o", "vendor": "openai", "input": 3, "output": 12},
            {"id": "broken", "vendor": "openai", "input": None, "output": 12},
            {"id": "negative", "vendor": "openai", "input": -1, "output": 12},
        )
    )
    assert table.model_count == 1
    assert table.skipped == ("broken", "negative")


def test_describe_changes_counts_models_added_removed_and_repriced() -> None:
    old = parse_remote_table(GOOD_LLM_PRICES)
    new = parse_remote_table(
        llm_prices(
            "2025-07-01",
            {"id": "gpt-4o", "vendor": "openai", "input": 2.5, "output": 10},
            {
                "id": "claude-sonnet-4.5",
                "vendor": "anthropic",
                "input": 3.3,
                "output": 16.5,
                "input_cached": 0.33,
            },
            {"id": "o3", "vendor": "openai", "input": 2, "output": 8},
        )
    )
    assert describe_changes(None, new) == "3 models"
    assert describe_changes(old, new) == ("3 models (was 4): 1 added, 2 removed, 1 with new prices")


# -- the refresher against a real HTTP server ---------------------------------------------------

HANG = object()


class PriceServer:
    """A tiny HTTP/1.1 server on 127.0.0.1: each path answers a fixed status and body, or
    never answers at all (`HANG`)."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}
        self.url = ""
        self.requests: list[str] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            head += chunk
        path = head.split(b" ", 2)[1].decode()
        self.requests.append(path)
        route = self.routes.get(path, (404, b"no such table"))
        if route is HANG:
            await trio.sleep_forever()
        status, body = route
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}[status]
        await stream.send_all(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await stream.aclose()


@pytest.fixture
async def price_server(nursery: trio.Nursery) -> PriceServer:
    server = PriceServer()
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    host, port = listeners[0].socket.getsockname()[:2]
    server.url = f"http://{host}:{port}"
    return server


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "majordomo.pricing" and r.levelno == logging.WARNING
    ]


async def test_refresh_swaps_in_a_good_table_and_logs_what_changed(
    price_server: PriceServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="majordomo.pricing")
    price_server.routes["/current-v1.json"] = (200, GOOD_LLM_PRICES)
    book = PriceBook()
    assert book.describe_table() == "the bundled prices (genai-prices 0.2.3)"
    async with httpx.AsyncClient() as http:
        assert await refresh_once(book, http, price_server.url + "/current-v1.json", timeout=5)
    assert book.remote is not None
    assert (book.remote.format, book.remote_updated_at) == ("llm-prices", "2025-06-01")
    assert book.cost("openai", "gpt-4o", usage(M, 0), AT).input_cost == 3
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "prices refreshed from http://127.0.0.1" in line
    assert "llm-prices format, updated_at 2025-06-01): 4 models" in line


@pytest.mark.parametrize(
    ("route", "reason"),
    [
        ((200, b'{"updated_at": "2025-07-01", "prices": [{"id": "gpt-4o",'), "malformed JSON"),
        ((200, b'{"updated_at": "2025-07-01", "prices": []}'), "empty table"),
        ((200, b"[]"), "empty table"),
        ((500, b"oops"), "HTTP 500 Internal Server Error"),
        ((404, b"gone"), "HTTP 404 Not Found"),
        (HANG, "timed out after 0.3s"),
    ],
)
async def test_a_failed_refresh_keeps_the_last_good_table_and_logs_why(
    price_server: PriceServer, caplog: pytest.LogCaptureFixture, route: Any, reason: str
) -> None:
    price_server.routes["/good"] = (200, GOOD_LLM_PRICES)
    price_server.routes["/bad"] = route
    book = PriceBook()
    async with httpx.AsyncClient() as http:
        assert await refresh_once(book, http, price_server.url + "/good", timeout=5)
        good = book.remote
        started = trio.current_time()
        assert not await refresh_once(book, http, price_server.url + "/bad", timeout=0.3)
        elapsed = trio.current_time() - started
    assert book.remote is good
    assert book.cost("openai", "gpt-4o", usage(M, 0), AT).input_cost == 3
    [warning] = warnings_of(caplog)
    assert warning.startswith(
        f"price refresh from {price_server.url}/bad failed, keeping the remote llm-prices "
        f"table (4 models, updated 2025-06-01): {reason}"
    )
    assert elapsed < 3  # a hang is cut at the timeout


async def test_an_unreachable_server_keeps_the_bundled_prices(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A port nothing listens on: bind one, then close it.
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    book = PriceBook()
    async with httpx.AsyncClient() as http:
        assert not await refresh_once(book, http, f"http://127.0.0.1:{port}/x.json", timeout=5)
    assert book.remote is None
    [warning] = warnings_of(caplog)
    assert "keeping the bundled prices (genai-prices 0.2.3): ConnectError" in warning


# -- the refresher task, on a virtual clock ------------------------------------------------------


async def test_the_refresher_never_delays_start_up_and_refreshes_every_interval(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    answers = [
        httpx.Response(200, content=GOOD_LLM_PRICES),
        httpx.Response(500),
        httpx.Response(
            200,
            content=llm_prices(
                "2025-07-01", {"id": "o3", "vendor": "openai", "input": 2, "output": 8}
            ),
        ),
    ]
    fetched_at: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        fetched_at.append(trio.current_time())
        return answers[len(fetched_at) - 1]

    book = PriceBook()
    start = trio.current_time()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(
            partial(refresh_prices, book, http, "https://prices.test/t.json", interval=3600)
        )
        assert trio.current_time() == start  # started at once; the fetch is in the background
        await trio.sleep(1)
        assert book.remote_updated_at == "2025-06-01"
        await trio.sleep(3600)
        assert book.remote_updated_at == "2025-06-01"  # the 500 kept the last good table
        await trio.sleep(3600)
        assert book.remote_updated_at == "2025-07-01"
        nursery.cancel_scope.cancel()
    assert [t - start for t in fetched_at] == [0, 3600, 7200]
    assert warnings_of(caplog) == [
        "price refresh from https://prices.test/t.json failed, keeping the remote llm-prices "
        "table (4 models, updated 2025-06-01): HTTP 500 Internal Server Error"
    ]


async def test_a_hanging_first_fetch_does_not_hold_up_anything(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    book = PriceBook()
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(hang)) as http,
        trio.open_nursery() as nursery,
    ):
        started = trio.current_time()
        await nursery.start(
            partial(
                refresh_prices, book, http, "https://prices.test/t.json", interval=60, timeout=10
            )
        )
        assert trio.current_time() == started
        # Pricing works meanwhile, from the bundled data.
        assert book.cost("openai", "gpt-4o", usage(M, 0), AT).input_cost == d("2.5")
        await trio.sleep(11)
        nursery.cancel_scope.cancel()
    assert warnings_of(caplog) == [
        "price refresh from https://prices.test/t.json failed, keeping the bundled prices "
        "(genai-prices 0.2.3): timed out after 10s"
    ]


async def test_an_empty_url_disables_refreshing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="majordomo.pricing")

    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no fetch expected")

    async with httpx.AsyncClient(transport=httpx.MockTransport(never)) as http:
        await refresh_prices(PriceBook(), http, "", interval=60)
    assert "pricing.remote_url is empty" in caplog.records[-1].getMessage()


# -- resolve (what `pricing show` prints) ---------------------------------------------------------


def test_resolve_reports_rates_tiers_and_sources(book: PriceBook) -> None:
    resolved = book.resolve(None, "claude-sonnet-4-5-20250929", AT)
    assert resolved is not None
    assert (resolved.provider, resolved.source) == ("anthropic", "bundled")
    assert resolved.input == pricing.PriceField(d("3"), "bundled", ((200_000, d("6")),))
    assert resolved.cache_write == pricing.PriceField(d("3.75"), "bundled", ((200_000, d("7.5")),))
    assert resolved.matched == ("bundled genai-prices 0.2.3 'anthropic/claude-sonnet-4-5'",)
    as_json = resolved.as_json()
    assert as_json["input"] == {
        "per_million": "3",
        "source": "bundled",
        "tiers": [{"above_input_tokens": 200000, "per_million": "6"}],
    }
    gemini = book.resolve(None, "gemini-2.5-flash", AT)
    assert gemini is not None
    assert gemini.provider == "gemini"
    assert gemini.cache_write is None  # cache writes are charged as input


def test_remote_table_repr_and_describe() -> None:
    table = RemoteTable("llm-prices", None, 2)
    assert table.describe() == "the remote llm-prices table (2 models, no updated_at)"


# -- helpers ----------------------------------------------------------------------------------


def genai_raw(value: Any) -> Any:
    """genai-prices' objects back to the JSON of its published data.json."""
    from genai_prices import types as gp

    if isinstance(value, gp.ModelPrice):
        return {k: genai_raw(v) for k, v in vars(value).items() if v is not None}
    if isinstance(value, gp.ClauseOr):
        return {"or": [genai_raw(c) for c in value.or_]}
    if isinstance(value, gp.ClauseAnd):
        return {"and": [genai_raw(c) for c in value.and_]}
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return [genai_raw(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: genai_raw(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.name != "extractors" and getattr(value, f.name) is not None
        }
    return value


def test_the_large_price_module_is_compiled_once_whatever_pythondontwritebytecode_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util
    import sys

    from majordomo.pricing import ensure_bytecode

    package = tmp_path / "bigtable_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "data.py").write_text("PRICES = " + repr(list(range(1000))) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # as PYTHONDONTWRITEBYTECODE does
    cached = Path(importlib.util.cache_from_source(str(package / "data.py")))
    assert not cached.exists()
    assert ensure_bytecode("bigtable_pkg.data") is True
    assert cached.exists()
    assert ensure_bytecode("bigtable_pkg.data") is False  # up to date: nothing to do
    assert ensure_bytecode("no_such_module_anywhere") is False
