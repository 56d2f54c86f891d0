"""`pricing.overrides`: negotiated prices per model, and how model ids are matched.

Overrides and llm-prices entries are matched on a *normalised* id: lower-case, a leading
`models/` dropped, `.` and `_` as `-`, and — when the id as given matches nothing — a date
suffix (`-2024-08-06`, `-20250929`, `@20250514`, `-09-2025`, `-05-20`, `-0613`) dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

# The fields of an override, USD per 1M tokens.
_OVERRIDE_FIELDS = ("input", "output", "cache_read", "cache_write")
# Date suffixes of model ids: -2024-08-06, -20250929, @20250514, -09-2025, -05-20, -0613.
_DATE_SUFFIX = re.compile(
    r"[-@](?:\d{4}-\d{2}-\d{2}|\d{8}|\d{2}-\d{4}|\d{2}-\d{2}|(?:0[1-9]|1[0-2])(?:[0-2]\d|3[01]))$"
)


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


def normalise_model_id(model: str) -> str:
    """`models/Gemini-2.5_Flash` → `gemini-2-5-flash`: how overrides and llm-prices match."""
    text = model.strip().lower().removeprefix("models/")
    return text.replace(".", "-").replace("_", "-")


def model_id_candidates(model: str) -> tuple[str, ...]:
    """The normalised id, then (if it has one) the same without its date suffix."""
    norm = normalise_model_id(model)
    undated = _DATE_SUFFIX.sub("", norm)
    return (norm, undated) if undated and undated != norm else (norm,)


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
