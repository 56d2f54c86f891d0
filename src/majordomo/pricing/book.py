"""The price book: prices per model from overrides, the remote table and the bundled data,
and the cost of a call (pure once built; see `majordomo.pricing`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from majordomo import providers
from majordomo.pricing.overrides import ModelPrice, model_id_candidates, normalise_model_id
from majordomo.pricing.tables import RemoteEntry, RemoteTable
from majordomo.records import Usage

if TYPE_CHECKING:
    # genai-prices takes ~0.5 s to import (its data is Python source): it is imported when a
    # PriceBook is built, not when this module is, so `majordomo keys …` does not pay for it.
    from genai_prices import types as gp
    from genai_prices.data_snapshot import DataSnapshot

    from majordomo.config import Settings

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

# Model ids come from provider responses; bound the lookup cache against odd ones.
_MAX_CACHED_LOOKUPS = 4096


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

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        *,
        priced_as: Mapping[str, str] | None = None,
    ) -> None:
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
        # Providers added by configuration that are priced as another (providers.extra).
        self._priced_as = dict(priced_as or {})

    @classmethod
    def for_settings(cls, settings: Settings) -> PriceBook:
        """The book these settings call for: the overrides, and what `providers.extra`
        providers are priced as."""
        extras = settings.providers.extra
        return cls(
            settings.pricing.overrides,
            priced_as={n: e.pricing_provider for n, e in extras.items() if e.pricing_provider},
        )

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
        provider = self._priced_as.get(provider, provider)
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
