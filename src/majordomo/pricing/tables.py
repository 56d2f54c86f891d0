"""Remote price tables, in either format, told apart by shape (see `majordomo.pricing`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from majordomo.pricing.overrides import ModelPrice

if TYPE_CHECKING:
    from genai_prices import types as gp


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

    # Private, on purpose: genai-prices has no public parser for its published data.json; its
    # own updater (update_prices.py) reads the file with this very helper. The dependency is
    # pinned below 0.3 in pyproject.toml for that reason, and a test parses a real table.
    from genai_prices.types import _providers_from_raw

    if not raw:
        raise ValueError("empty table: the genai-prices provider list has no providers")
    try:
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
