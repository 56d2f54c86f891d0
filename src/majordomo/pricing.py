"""Prices and cost: a pure core, plus the task that keeps the prices fresh.

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

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import trio

from majordomo import providers
from majordomo.records import Usage

if TYPE_CHECKING:
    # genai-prices takes ~0.5 s to import (its data is Python source): it is imported when a
    # PriceBook is built, not when this module is, so `majordomo keys …` does not pay for it.
    from genai_prices import types as gp
    from genai_prices.data_snapshot import DataSnapshot

log = logging.getLogger("majordomo.pricing")

# Our provider names → genai-prices provider ids and llm-prices vendors, as each provider
# module declares them.
GENAI_PROVIDER_IDS = {m.NAME: m.PRICE_PROVIDER for m in providers.MODULES}
LLM_PRICES_VENDORS = {m.NAME: m.LLM_PRICES_VENDOR for m in providers.MODULES}
# Where `resolve(None, model)` looks, in this order.
KNOWN_PROVIDERS = providers.PROVIDER_NAMES

# What `Cost.source` / `ResolvedPrice.source` say.
SOURCE_OVERRIDE = "override"
SOURCE_REMOTE = "remote"
SOURCE_BUNDLED = "bundled"
SOURCE_NONE = "none"

# The fields of an override, USD per 1M tokens.
_OVERRIDE_FIELDS = ("input", "output", "cache_read", "cache_write")
# Model ids come from provider responses; bound the lookup cache against odd ones.
_MAX_CACHED_LOOKUPS = 4096
# Tables at least this large are parsed in a worker thread (genai-prices' full data.json takes
# ~100 ms to validate); smaller ones (llm-prices' is ~30 kB) are parsed on the event loop.
PARSE_IN_THREAD_BYTES = 256 * 1024
# A price table larger than this is refused (genai-prices' full data.json is ~1 MB).
MAX_TABLE_BYTES = 64 * 1024 * 1024

# Date suffixes of model ids: -2024-08-06, -20250929, @20250514, -09-2025, -05-20, -0613.
_DATE_SUFFIX = re.compile(
    r"[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|\d{2}-\d{4}|\d{2}-\d{2}|(?:0[1-9]|1[0-2])(?:[0-2]\d|3[01]))$"
)


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Cost:
    """What one call cost, in USD. `found` is true exactly when some price applied."""

    input_cost: Decimal
    output_cost: Decimal
    total_cost: Decimal
    found: bool
    source: str  # "override" | "remote" | "bundled" | "none": the highest layer that applied


NO_COST = Cost(Decimal(0), Decimal(0), Decimal(0), False, SOURCE_NONE)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Flat prices of one model in USD per 1M tokens (an override or an llm-prices entry).

    A missing `cache_read` / `cache_write` is taken from the next layer down, or else charged
    at the `input` rate.
    """

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None

    def price_keys(self) -> dict[str, Decimal]:
        """These prices under genai-prices' price keys (`input_mtok`, …)."""
        keys = {"input_mtok": self.input, "output_mtok": self.output}
        if self.cache_read is not None:
            keys["cache_read_mtok"] = self.cache_read
        if self.cache_write is not None:
            keys["cache_write_mtok"] = self.cache_write
        return keys


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    """One model of an llm-prices table."""

    id: str
    vendor: str
    name: str
    price: ModelPrice


@dataclass(frozen=True, slots=True)
class RemoteTable:
    """A validated price table fetched from `pricing.remote_url`.

    `format` is "genai-prices" (then `providers` holds genai-prices `Provider`s) or
    "llm-prices" (then `entries` holds the models). `skipped` names llm-prices entries that
    were left out because they were malformed.
    """

    format: str
    updated_at: str | None
    model_count: int
    entries: tuple[RemoteEntry, ...] = ()
    providers: tuple[gp.Provider, ...] = ()
    skipped: tuple[str, ...] = ()

    def describe(self) -> str:
        when = f"updated {self.updated_at}" if self.updated_at else "no updated_at"
        return f"the remote {self.format} table ({self.model_count} models, {when})"


@dataclass(frozen=True, slots=True)
class PriceField:
    """One resolved price per 1M tokens: a base rate, maybe tiers, and where it came from.

    `tiers` are (threshold, rate): when the prompt has more than `threshold` input tokens,
    every token of this kind is charged `rate`.
    """

    rate: Decimal
    source: str
    tiers: tuple[tuple[int, Decimal], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "per_million": str(self.rate),
            "source": self.source,
            "tiers": [{"above_input_tokens": t, "per_million": str(r)} for t, r in self.tiers],
        }


@dataclass(frozen=True, slots=True)
class ResolvedPrice:
    """The prices that apply to one model at one time, and where each came from.

    `cache_read` / `cache_write` are None when no layer prices them: such tokens are charged
    at the input rate. `matched` lists each layer that matched, e.g. `override 'gpt-4o'`.
    """

    provider: str
    model: str
    at: datetime
    source: str
    matched: tuple[str, ...]
    input: PriceField
    output: PriceField
    cache_read: PriceField | None
    cache_write: PriceField | None
    other: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        def price(p: PriceField | None) -> dict[str, Any] | None:
            return p.as_json() if p is not None else None

        return {
            "provider": self.provider,
            "model": self.model,
            "at": self.at.isoformat(),
            "source": self.source,
            "matched": list(self.matched),
            "input": price(self.input),
            "output": price(self.output),
            "cache_read": price(self.cache_read),
            "cache_write": price(self.cache_write),
            "other": list(self.other),
        }


# ---------------------------------------------------------------------------------------------
# Model ids


def normalise_model_id(model: str) -> str:
    """`models/Gemini-2.5_Flash` → `gemini-2-5-flash`: how overrides and llm-prices match."""
    text = model.strip().lower().removeprefix("models/")
    return text.replace(".", "-").replace("_", "-")


def model_id_candidates(model: str) -> tuple[str, ...]:
    """The normalised id, then (if it has one) the same without its date suffix."""
    norm = normalise_model_id(model)
    undated = _DATE_SUFFIX.sub("", norm)
    return (norm, undated) if undated and undated != norm else (norm,)


# ---------------------------------------------------------------------------------------------
# Overrides


def _price_number(raw: Any, what: str) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str | Decimal):
        raise ValueError(f"expected a number of USD per 1M tokens for {what}, got {raw!r}")
    try:
        # str() first: 0.1 stays 0.1, not 0.1000000000000000055511151231257827.
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ValueError(
            f"expected a number of USD per 1M tokens for {what}, got {raw!r}"
        ) from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"expected a price of zero or more for {what}, got {raw!r}")
    return value


def parse_overrides(raw: Any) -> dict[str, ModelPrice]:
    """Validate `pricing.overrides`: `{model: {input, output, cache_read?, cache_write?}}`.

    Prices are USD per 1M tokens. `raw` is the YAML mapping, or a JSON object in a string (the
    environment variable's form); None or empty means no overrides. Keys are model ids, matched
    exactly and by normalised id, optionally prefixed by a provider (`anthropic/claude-…`).
    Raises ValueError starting "expected …" naming the model and field at fault.
    """
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(
                'expected a JSON object such as {"gpt-4o": {"input": 2.5, "output": 10}} '
                f"({exc.msg} at character {exc.pos})"
            ) from None
    if not isinstance(raw, Mapping):
        raise ValueError(
            "expected a mapping of model id to prices, such as "
            "gpt-4o: {input: 2.5, output: 10, cache_read: 1.25}"
        )
    overrides: dict[str, ModelPrice] = {}
    for model, fields in raw.items():
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"expected model ids as keys, got {model!r}")
        key = model.strip().lower()
        if not isinstance(fields, Mapping):
            raise ValueError(
                f"expected prices for model '{model}' as a mapping "
                "{input: …, output: …, cache_read: …, cache_write: …}, got " + repr(fields)
            )
        unknown = sorted(str(k) for k in fields if k not in _OVERRIDE_FIELDS)
        if unknown:
            raise ValueError(
                f"expected only input, output, cache_read, cache_write for model '{model}', "
                f"got {', '.join(unknown)}"
            )
        missing = [k for k in ("input", "output") if fields.get(k) is None]
        if missing:
            raise ValueError(
                f"expected input and output prices for model '{model}' (USD per 1M tokens), "
                f"missing {' and '.join(missing)}"
            )
        values = {
            name: _price_number(value, f"{model}.{name}")
            for name, value in fields.items()
            if value is not None
        }
        if key in overrides:
            raise ValueError(f"expected each model once, got '{model}' twice (case ignored)")
        overrides[key] = ModelPrice(**values)
    return overrides


# ---------------------------------------------------------------------------------------------
# Remote tables


def parse_remote_table(data: bytes) -> RemoteTable:
    """Parse and validate a fetched price table, telling the two formats apart by shape.

    A JSON list is genai-prices' published data (a list of providers); an object with a
    `prices` list is llm-prices' `current-v1.json`. Raises ValueError saying what is wrong
    (malformed JSON, an unknown shape, an empty table, invalid genai-prices data).
    """
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed JSON: {exc}") from None
    if isinstance(raw, list):
        return _parse_genai_prices(raw)
    if isinstance(raw, dict) and isinstance(raw.get("prices"), list):
        return _parse_llm_prices(raw)
    shape = type(raw).__name__ if not isinstance(raw, dict) else "object without a 'prices' list"
    raise ValueError(
        f"unrecognised price table ({shape}): expected genai-prices' data.json (a list of "
        "providers) or llm-prices' current-v1.json (an object with a 'prices' list)"
    )


def _parse_genai_prices(raw: list[Any]) -> RemoteTable:
    import pydantic
    from genai_prices.types import _providers_from_raw

    if not raw:
        raise ValueError("empty table: the genai-prices provider list has no providers")
    try:
        # The function genai-prices' own updater uses to read this very file.
        providers = _providers_from_raw(raw)
    except (pydantic.ValidationError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"not valid genai-prices data: {' '.join(first[:3])[:300]}") from None
    count = sum(len(p.models) for p in providers)
    if count == 0:
        raise ValueError("empty table: the genai-prices providers list no models")
    return RemoteTable("genai-prices", None, count, providers=tuple(providers))


def _parse_llm_prices(raw: dict[str, Any]) -> RemoteTable:
    updated_at = raw.get("updated_at")
    if updated_at is not None and not isinstance(updated_at, str):
        raise ValueError(f"expected updated_at to be a date string, got {updated_at!r}")
    entries: list[RemoteEntry] = []
    skipped: list[str] = []
    for item in raw["prices"]:
        entry = _llm_prices_entry(item)
        if entry is None:
            skipped.append(str(item.get("id")) if isinstance(item, dict) else repr(item)[:40])
        else:
            entries.append(entry)
    if not entries:
        detail = f" ({len(skipped)} malformed entries)" if skipped else ""
        raise ValueError(f"empty table: the llm-prices table lists no usable prices{detail}")
    return RemoteTable(
        "llm-prices", updated_at, len(entries), entries=tuple(entries), skipped=tuple(skipped)
    )


def _llm_prices_entry(item: Any) -> RemoteEntry | None:
    if not isinstance(item, dict):
        return None
    model_id, vendor = item.get("id"), item.get("vendor", "")
    if not isinstance(model_id, str) or not model_id.strip() or not isinstance(vendor, str):
        return None
    prices = [_llm_prices_number(item.get(name)) for name in ("input", "output")]
    cached = item.get("input_cached")
    cache_read = _llm_prices_number(cached) if cached is not None else None
    if prices[0] is None or prices[1] is None or (cached is not None and cache_read is None):
        return None
    display_name = item.get("name")
    return RemoteEntry(
        id=model_id.strip(),
        vendor=vendor.strip().lower(),
        name=display_name if isinstance(display_name, str) else model_id,
        price=ModelPrice(input=prices[0], output=prices[1], cache_read=cache_read),
    )


def _llm_prices_number(value: Any) -> Decimal | None:
    """A price per 1M tokens from llm-prices' JSON, or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return Decimal(str(value))


def describe_changes(old: RemoteTable | None, new: RemoteTable) -> str:
    """A one-line summary of what a new table changes: model counts, added/removed/changed."""
    if old is None:
        return f"{new.model_count} models"
    new_prices, old_prices = _comparable(new), _comparable(old)
    added = len(new_prices.keys() - old_prices.keys())
    removed = len(old_prices.keys() - new_prices.keys())
    changed = sum(
        1 for k in new_prices.keys() & old_prices.keys() if new_prices[k] != old_prices[k]
    )
    return (
        f"{new.model_count} models (was {old.model_count}): {added} added, {removed} removed, "
        f"{changed} with new prices"
    )


def _comparable(table: RemoteTable) -> dict[tuple[str, str], str]:
    if table.format == "llm-prices":
        return {(e.vendor, e.id): repr(e.price) for e in table.entries}
    return {(p.id, m.id): repr(m.prices) for p in table.providers for m in p.models}


# ---------------------------------------------------------------------------------------------
# The price book

# genai-prices price key (`input_mtok`, …) → a rate per unit, maybe tiered.
_Prices = dict[str, "Decimal | gp.TieredPrices"]
# The price keys of the kinds of tokens a `Usage` reports; `_token_costs` reads no others.
_REPORTED_PRICE_KEYS = frozenset(
    {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "output_reasoning_mtok"}
)


@dataclass(frozen=True, slots=True)
class _GenaiMatch:
    model: gp.ModelInfo
    provider_id: str
    source: str  # SOURCE_REMOTE or SOURCE_BUNDLED


@dataclass(slots=True)
class _Lookup:
    """Every layer's match for one (provider, model), and merged prices per conditional price."""

    override: tuple[str, ModelPrice] | None
    remote: RemoteEntry | None
    genai: _GenaiMatch | None
    # id(genai-prices ModelPrice in force) → (that object, merged prices, source per key). The
    # object is kept so its id cannot be reused while the entry lives.
    merged: dict[int, tuple[object, _Prices, dict[str, str]]] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.override is not None or self.remote is not None or self.genai is not None

    @property
    def source(self) -> str:
        if self.override is not None:
            return SOURCE_OVERRIDE
        if self.remote is not None:
            return SOURCE_REMOTE
        if self.genai is not None:
            return self.genai.source
        return SOURCE_NONE


@dataclass(frozen=True, slots=True)
class _State:
    """Everything `replace_remote` swaps at once: the remote table, its indexes, the cache."""

    remote: RemoteTable | None
    remote_snapshot: DataSnapshot | None
    llm_exact: Mapping[tuple[str, str], RemoteEntry]
    llm_undated: Mapping[tuple[str, str], RemoteEntry]
    cache: dict[tuple[str, str], _Lookup]


def ensure_bytecode(module: str) -> bool:
    """Compile `module` to its cached bytecode file if that is missing or stale; True if it
    compiled.

    genai-prices ships its price table as a 1.6 MB Python module. Where
    PYTHONDONTWRITEBYTECODE is set (containers, some CI images) Python never caches it, and
    every start compiles it again (≈ 1 s, 60 MB of peak memory). Writing the cache file
    explicitly is allowed (the variable only stops the import system from doing it), and the
    next import reads it. A read-only installation is left as it is.
    """
    import importlib.util
    import py_compile

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return False
    cached = Path(importlib.util.cache_from_source(spec.origin))
    source = Path(spec.origin)
    try:
        if cached.exists() and cached.stat().st_mtime >= source.stat().st_mtime:
            return False
        log.info("compiling %s once, for faster starts (about a second)", module)
        py_compile.compile(str(source), cfile=str(cached), doraise=True)
    except (OSError, py_compile.PyCompileError) as exc:
        log.debug("cannot cache the bytecode of %s: %s", module, exc)
        return False
    return True


class PriceBook:
    """Prices per model, from overrides, the remote table and the bundled data; see the module.

    Build one at start-up (it loads the bundled data, ~0.5 s, no network); `cost` is then
    pure and cached, and `replace_remote` swaps in a new remote table atomically.
    """

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        ensure_bytecode("genai_prices.data")
        from genai_prices import Usage as GenaiUsage
        from genai_prices import __version__ as genai_version
        from genai_prices import data as genai_data
        from genai_prices.data_snapshot import DataSnapshot

        self._snapshot_type = DataSnapshot
        self._usage_type = GenaiUsage
        # Our own snapshot of the bundled data: genai-prices' global one can be replaced by
        # its auto-updater (which we never start), ours cannot.
        self._bundled = DataSnapshot(providers=genai_data.providers, from_auto_update=False)
        self.bundled_version = genai_version
        self._overrides = {k.strip().lower(): v for k, v in (overrides or {}).items()}
        self._overrides_normalised = {
            _normalise_override_key(k): v for k, v in self._overrides.items()
        }
        self._override_names = {_normalise_override_key(k): k for k in self._overrides}
        self._state = _State(None, None, {}, {}, {})
        self._broken: set[tuple[str, str]] = set()

    # -- the remote table -----------------------------------------------------------------

    @property
    def remote(self) -> RemoteTable | None:
        """The remote table in use, or None while only bundled data (and overrides) apply."""
        return self._state.remote

    @property
    def remote_updated_at(self) -> str | None:
        remote = self._state.remote
        return remote.updated_at if remote is not None else None

    @property
    def remote_model_count(self) -> int:
        remote = self._state.remote
        return remote.model_count if remote is not None else 0

    def describe_table(self) -> str:
        """What prices are in use, for log lines: the remote table or the bundled data."""
        remote = self._state.remote
        if remote is not None:
            return remote.describe()
        return f"the bundled prices (genai-prices {self.bundled_version})"

    def replace_remote(self, table: RemoteTable) -> None:
        """Use `table` from now on, in place of the previous remote table (one assignment)."""
        snapshot = None
        exact: dict[tuple[str, str], RemoteEntry] = {}
        undated: dict[tuple[str, str], RemoteEntry] = {}
        if table.format == "genai-prices":
            snapshot = self._snapshot_type(providers=list(table.providers), from_auto_update=True)
        else:
            for entry in table.entries:
                norm, *rest = model_id_candidates(entry.id)
                exact.setdefault((entry.vendor, norm), entry)
                for stripped in rest:
                    undated.setdefault((entry.vendor, stripped), entry)
        self._state = _State(table, snapshot, exact, undated, {})

    # -- pricing --------------------------------------------------------------------------

    def cost(self, provider: str, model: str, usage: Usage, at: datetime) -> Cost:
        """What a call cost: pure, cached per (provider, model), never raises."""
        lookup = self._lookup(self._state, provider, model)
        if not lookup.found:
            return NO_COST
        try:
            prices, _ = self._merged(lookup, at)
            input_cost, output_cost = _token_costs(prices, usage)
        except Exception:
            # Inconsistent price data; say so once per model rather than on every row.
            if (provider, model) not in self._broken:
                self._broken.add((provider, model))
                log.exception("cannot price %s model %r; recording cost 0", provider, model)
            return NO_COST
        return Cost(input_cost, output_cost, input_cost + output_cost, True, lookup.source)

    def resolve(
        self, provider: str | None, model: str, at: datetime | None = None
    ) -> ResolvedPrice | None:
        """The prices that apply to `model` (for `majordomo pricing show`), or None.

        Without a provider, tries openai, anthropic and gemini in turn.
        """
        at = at or datetime.now(UTC)
        state = self._state
        for candidate in (provider,) if provider else KNOWN_PROVIDERS:
            lookup = self._lookup(state, candidate, model)
            if lookup.found:
                return self._resolved(state, lookup, candidate, model, at)
        return None

    # -- internals ------------------------------------------------------------------------

    def _lookup(self, state: _State, provider: str, model: str) -> _Lookup:
        key = (provider, model)
        lookup = state.cache.get(key)
        if lookup is None:
            lookup = _Lookup(
                override=self._find_override(provider, model),
                remote=self._find_llm_price(state, provider, model),
                genai=self._find_genai(state, provider, model),
            )
            if len(state.cache) >= _MAX_CACHED_LOOKUPS:
                state.cache.clear()
            state.cache[key] = lookup
        return lookup

    def _find_override(self, provider: str, model: str) -> tuple[str, ModelPrice] | None:
        if not self._overrides:
            return None
        prefixes = _provider_prefixes(provider)
        exact = model.strip().lower()
        for key in (*(p + exact for p in prefixes), exact):
            if key in self._overrides:
                return key, self._overrides[key]
        for candidate in model_id_candidates(model):
            for key in (*(p + candidate for p in prefixes), candidate):
                if key in self._overrides_normalised:
                    return self._override_names[key], self._overrides_normalised[key]
        return None

    @staticmethod
    def _find_llm_price(state: _State, provider: str, model: str) -> RemoteEntry | None:
        if not state.llm_exact:
            return None
        vendor = LLM_PRICES_VENDORS.get(provider, provider)
        candidates = model_id_candidates(model)
        for index in (state.llm_exact, state.llm_undated):
            for candidate in candidates:
                entry = index.get((vendor, candidate))
                if entry is not None:
                    return entry
        return None

    def _find_genai(self, state: _State, provider: str, model: str) -> _GenaiMatch | None:
        provider_id = GENAI_PROVIDER_IDS.get(provider, provider)
        refs = dict.fromkeys((model.strip(), model.strip().removeprefix("models/")))
        snapshots = [(self._bundled, SOURCE_BUNDLED)]
        if state.remote_snapshot is not None:
            snapshots.insert(0, (state.remote_snapshot, SOURCE_REMOTE))
        for snapshot, source in snapshots:
            try:
                found_provider = snapshot.find_provider(None, provider_id, None)
            except LookupError:
                continue
            for ref in refs:
                # Not `snapshot.find_provider_model`: it caches every id it matched, without
                # bound; our own cache is bounded.
                info = (
                    found_provider.find_model(ref, all_providers=snapshot.providers)
                    if ref
                    else None
                )
                if info is not None:
                    return _GenaiMatch(info, found_provider.id, source)
        return None

    def _merged(self, lookup: _Lookup, at: datetime) -> tuple[_Prices, dict[str, str]]:
        """The layers' prices in force at `at`, merged key by key, validated once."""
        from genai_prices.types import ModelPrice as GenaiModelPrice

        base = lookup.genai.model.get_prices(at) if lookup.genai is not None else None
        cached = lookup.merged.get(id(base))
        if cached is not None:
            return cached[1], cached[2]
        prices: _Prices = {}
        sources: dict[str, str] = {}
        if base is not None and lookup.genai is not None:
            for key, value in vars(base).items():
                if value is not None and not key.startswith("_"):
                    prices[key] = value
                    sources[key] = lookup.genai.source
        layers = (
            (lookup.remote.price if lookup.remote else None, SOURCE_REMOTE),
            (lookup.override[1] if lookup.override else None, SOURCE_OVERRIDE),
        )
        for layer, source in layers:
            if layer is not None:
                for key, value in layer.price_keys().items():
                    prices[key] = value
                    sources[key] = source
        # genai-prices checks a price set's consistency (every priced kind of token has its
        # parent priced, …) on each calculation; we check once, here, with no usage.
        try:
            GenaiModelPrice(**prices).calc_price(self._usage_type(input_tokens=0))
        except ValueError:
            # Layers can disagree: a cached-input price laid over bundled audio prices that
            # have no cached-audio price, say. Keep the kinds of tokens Majordomo reports (the
            # only ones that cost anything here); if those are inconsistent, `cost` says so.
            prices = {k: v for k, v in prices.items() if k in _REPORTED_PRICE_KEYS}
            sources = {k: v for k, v in sources.items() if k in _REPORTED_PRICE_KEYS}
            GenaiModelPrice(**prices).calc_price(self._usage_type(input_tokens=0))
        lookup.merged[id(base)] = (base, prices, sources)
        return prices, sources

    def _resolved(
        self, state: _State, lookup: _Lookup, provider: str, model: str, at: datetime
    ) -> ResolvedPrice:
        from genai_prices.types import TieredPrices

        prices, sources = self._merged(lookup, at)

        def price_field(key: str) -> PriceField | None:
            value = prices.get(key)
            if value is None:
                return None
            if isinstance(value, TieredPrices):
                tiers = tuple((t.start, t.price) for t in value.tiers)
                return PriceField(value.base, sources[key], tiers)
            return PriceField(value, sources[key])

        matched: list[str] = []
        if lookup.override is not None:
            matched.append(f"override '{lookup.override[0]}' in pricing.overrides")
        if lookup.remote is not None:
            remote = state.remote
            when = f", updated {remote.updated_at}" if remote and remote.updated_at else ""
            matched.append(f"llm-prices '{lookup.remote.vendor}/{lookup.remote.id}'{when}")
        if lookup.genai is not None:
            which = (
                "remote genai-prices table"
                if lookup.genai.source == SOURCE_REMOTE
                else f"bundled genai-prices {self.bundled_version}"
            )
            matched.append(f"{which} '{lookup.genai.provider_id}/{lookup.genai.model.id}'")
        zero = PriceField(Decimal(0), SOURCE_NONE)
        main = {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"}
        other = tuple(sorted(f"{key} ({sources[key]})" for key in sources if key not in main))
        return ResolvedPrice(
            provider=provider,
            model=model,
            at=at,
            source=lookup.source,
            matched=tuple(matched),
            input=price_field("input_mtok") or zero,
            output=price_field("output_mtok") or zero,
            cache_read=price_field("cache_read_mtok"),
            cache_write=price_field("cache_write_mtok"),
            other=other,
        )


def _normalise_override_key(key: str) -> str:
    provider, slash, model = key.rpartition("/")
    return f"{provider}/{normalise_model_id(model)}" if slash else normalise_model_id(key)


def _provider_prefixes(provider: str) -> tuple[str, ...]:
    genai_id = GENAI_PROVIDER_IDS.get(provider, provider)
    return tuple(dict.fromkeys((f"{provider}/", f"{genai_id}/")))


_PER_MILLION = 1_000_000


def _token_costs(prices: _Prices, usage: Usage) -> tuple[Decimal, Decimal]:
    """(input cost, output cost) of `usage` at `prices`, as genai-prices computes them.

    genai-prices' generic calculation splits usage into disjoint parts ("leaves"): each kind
    of token with a price of its own is charged at it and taken out of its parent's count.
    For the kinds we report that is: cache reads and writes out of the input (when priced),
    reasoning out of the output (when priced); every other priced kind counts 0. Doing just
    that here is ~10x faster than the generic path (tests check both agree on every model);
    the tier rule is genai-prices' own `calc_unit_price`.
    """
    from genai_prices.types import calc_unit_price

    # A provider reporting parts larger than the whole would make a leaf negative; the parts
    # are what was billed, so the whole is at least their sum.
    cache_read = max(usage.cached_tokens, 0)
    cache_write = max(usage.cache_creation_tokens, 0)
    reasoning = max(usage.reasoning_tokens, 0)
    input_tokens = max(usage.input_tokens, cache_read + cache_write)
    output_tokens = max(usage.output_tokens, reasoning)

    input_cost = Decimal(0)
    output_cost = Decimal(0)
    plain_input = input_tokens
    for key, count in (("cache_read_mtok", cache_read), ("cache_write_mtok", cache_write)):
        price = prices.get(key)
        if price is not None:
            plain_input -= count
            input_cost += calc_unit_price(price, count, input_tokens, _PER_MILLION)
    input_cost += calc_unit_price(prices.get("input_mtok"), plain_input, input_tokens, _PER_MILLION)
    plain_output = output_tokens
    price = prices.get("output_reasoning_mtok")
    if price is not None:
        plain_output -= reasoning
        output_cost += calc_unit_price(price, reasoning, input_tokens, _PER_MILLION)
    output_cost += calc_unit_price(
        prices.get("output_mtok"), plain_output, input_tokens, _PER_MILLION
    )
    return input_cost, output_cost


# ---------------------------------------------------------------------------------------------
# The refresher


class PriceRefreshError(Exception):
    """A price table could not be fetched (HTTP error, timeout, too large)."""


async def fetch_remote_table(
    http: httpx.AsyncClient,
    url: str,
    *,
    timeout: float,  # noqa: ASYNC109 - becomes the failure's message, not just a cancel scope
) -> RemoteTable:
    """GET `url` and parse it, all within `timeout` seconds.

    Raises PriceRefreshError when the fetch fails, ValueError when the answer is no table.
    """
    body = bytearray()
    with trio.move_on_after(timeout) as deadline:
        try:
            async with http.stream(
                "GET",
                url,
                headers={"Accept": "application/json"},
                timeout=timeout,
                follow_redirects=True,
            ) as response:
                if not response.is_success:
                    raise PriceRefreshError(f"HTTP {response.status_code} {response.reason_phrase}")
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_TABLE_BYTES:
                        raise PriceRefreshError(f"table larger than {MAX_TABLE_BYTES} bytes")
        except httpx.TimeoutException:
            raise PriceRefreshError(f"timed out after {timeout:g}s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise PriceRefreshError(f"{type(exc).__name__}: {exc}") from None
    if deadline.cancelled_caught:
        raise PriceRefreshError(f"timed out after {timeout:g}s")
    if len(body) < PARSE_IN_THREAD_BYTES:
        return parse_remote_table(bytes(body))
    # Validating genai-prices' full table takes a while: keep it off the event loop.
    return await trio.to_thread.run_sync(parse_remote_table, bytes(body))


async def refresh_once(
    book: PriceBook,
    http: httpx.AsyncClient,
    url: str,
    *,
    timeout: float = 30,  # noqa: ASYNC109 - bounds the fetch; a timeout is logged, not raised
) -> bool:
    """Fetch the table once and swap it in; on failure keep the current one and log why."""
    try:
        table = await fetch_remote_table(http, url, timeout=timeout)
    except (PriceRefreshError, ValueError) as exc:
        log.warning("price refresh from %s failed, keeping %s: %s", url, book.describe_table(), exc)
        return False
    if table.skipped:
        log.warning(
            "price table from %s: skipped %d malformed entries (%s)",
            url,
            len(table.skipped),
            ", ".join(table.skipped[:5]),
        )
    old = book.remote
    changes = describe_changes(old, table)
    book.replace_remote(table)
    log.info(
        "prices refreshed from %s (%s format, updated_at %s): %s",
        url,
        table.format,
        table.updated_at or "not stated",
        changes,
        extra={"models": table.model_count, "updated_at": table.updated_at},
    )
    return True


async def refresh_prices(
    book: PriceBook,
    http: httpx.AsyncClient,
    url: str,
    *,
    interval: float,
    timeout: float = 30,  # noqa: ASYNC109 - bounds each attempt, not the (endless) task
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep `book`'s remote table fresh until cancelled (the supervisor's background task).

    Reports itself started at once: the first fetch happens in the background, and until it
    succeeds the bundled data (and overrides) apply. An empty `url` disables refreshing; an
    `interval` of 0 fetches once. Never raises: a failed attempt is logged and retried at the
    next interval.
    """
    task_status.started()
    if not url:
        log.info("pricing.remote_url is empty: using %s only", book.describe_table())
        return
    while True:
        try:
            await refresh_once(book, http, url, timeout=timeout)
        except Exception:
            # A bug here must not take the gateway down with it.
            log.exception("price refresh from %s failed unexpectedly", url)
        if interval <= 0:
            return
        await trio.sleep(interval)
