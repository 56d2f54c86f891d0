"""Prices and cost: a pure core, the task that keeps the prices fresh, and recalculation.

The package: `overrides` (negotiated prices, model ids), `tables` (remote tables, both
formats), `book` (the price book, pure once built), `refresher` (the background task) and
`recalc` (re-pricing stored rows).

Theory of operation
-------------------
The log writer prices every finished request once, off the request path, with
`PriceBook.cost(provider, model, usage, requested_at)`. It never raises: a model with no price
costs 0 with `found=False` (stored as `model_alias_found = false`).

A price is assembled from three layers, highest precedence first:

1. **Overrides** — `pricing.overrides` in majordomo.yaml: negotiated rates per 1M tokens
   (`input`, `output`, optional `cache_read`, `cache_write`), see `parse_overrides`.
2. **The remote table** — fetched from `pricing.remote_url` by `refresh_prices`, in either
   format, told apart by shape (`parse_remote_table`):
   - genai-prices' published `data.json` (a JSON list of providers): a complete table that
     stands in for the bundled one (the bundled one still answers for models it lacks);
   - llm-prices' `current-v1.json` (`{"updated_at": …, "prices": [{"id", "vendor", "name",
     "input", "output", "input_cached"}, …]}`, USD per 1M tokens): flat per-model prices,
     matched by normalised id, which take precedence over the bundled data where they match.
3. **The bundled genai-prices data**, shipped inside the wheel: available offline, at once.

Layers are merged *field by field*: each price (input, output, cache read, cache write, and
whatever else genai-prices knows, tiers included) comes from the highest layer that states it.
So an override of `input` and `output` alone keeps the bundled cache-read rate, and an
llm-prices entry (which has no cache-write price) keeps the bundled cache-write rate. Tokens a
layer has no price for at all are charged at the input rate (cache reads and writes) or output
rate (reasoning) — genai-prices' own rule.

Matching a model id. genai-prices matches ids with its own rules (dated ids such as
`gpt-4o-2024-08-06` or `claude-sonnet-4-5-20250929` resolve), always within the provider that
served the call: our `gemini` is genai-prices' `google`. (The same model id is listed under
several providers there, some at $0 for subscription plans: guessing the provider would be
wrong.) Overrides and llm-prices entries are matched on a *normalised* id: lower-case, a
leading `models/` dropped, `.` and `_` as `-`, and — when the id as given matches nothing — a
date suffix (`-2024-08-06`, `-20250929`, `@20250514`, `-09-2025`, `-05-20`, `-0613`) dropped.
Override keys may be prefixed by the provider (`anthropic/claude-sonnet-4-5`); the prefixed key
wins over the bare one. Lookups, hits and misses alike, are cached per (provider, model).

Usage mapping. Our `Usage` and genai-prices' agree: `input_tokens` counts every prompt token,
cache reads (`cached_tokens`) and writes (`cache_creation_tokens`) included; `output_tokens`
includes reasoning. genai-prices charges the cache reads and writes at their own rates and the
rest of the input at the input rate; tiered ("long context") prices apply when the whole prompt
(`input_tokens`) exceeds the tier's threshold, every token then paying the tier's rate.
`input_cost` is every input-side price, `output_cost` every output-side one, `total_cost` their
sum, all exact `Decimal`s.

Refreshing. `refresh_prices` runs in the supervisor's nursery: it reports itself started at
once (start-up never waits for the network), then fetches the table now and every
`interval` seconds with the shared httpx client, each attempt bounded by `timeout`. A table
is swapped in whole, and only once it parsed and validated; any failure (HTTP error, timeout,
malformed JSON, an empty table) keeps the last good table and logs why.
"""

from majordomo.pricing.book import (
    GENAI_PROVIDER_IDS,
    LLM_PRICES_VENDORS,
    NO_COST,
    Cost,
    PriceBook,
    PriceField,
    ResolvedPrice,
    ensure_bytecode,
)
from majordomo.pricing.overrides import (
    ModelPrice,
    model_id_candidates,
    normalise_model_id,
    parse_overrides,
)
from majordomo.pricing.refresher import (
    PriceRefreshError,
    fetch_remote_table,
    refresh_once,
    refresh_prices,
)
from majordomo.pricing.tables import RemoteEntry, RemoteTable, describe_changes, parse_remote_table

__all__ = [
    "GENAI_PROVIDER_IDS",
    "LLM_PRICES_VENDORS",
    "NO_COST",
    "Cost",
    "ModelPrice",
    "PriceBook",
    "PriceField",
    "PriceRefreshError",
    "RemoteEntry",
    "RemoteTable",
    "ResolvedPrice",
    "describe_changes",
    "ensure_bytecode",
    "fetch_remote_table",
    "model_id_candidates",
    "normalise_model_id",
    "parse_overrides",
    "parse_remote_table",
    "refresh_once",
    "refresh_prices",
]
