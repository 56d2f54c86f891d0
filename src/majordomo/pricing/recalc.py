"""Re-pricing stored rows after a price correction (`majordomo pricing recalc`).

Rows are walked in `(requested_at, id)` order, one page per round trip; each is priced again
from its stored tokens with the current `PriceBook`, and only rows whose cost or
`model_alias_found` changes are rewritten, in one statement per page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from majordomo.pricing.book import PriceBook
from majordomo.records import Usage

if TYPE_CHECKING:
    from majordomo.db import Database

# Rows read, repriced and written per round trip.
RECALC_BATCH = 1000


@dataclass
class ModelChange:
    """What recalculation did to the rows of one (provider, model)."""

    provider: str
    model: str
    rows: int = 0
    changed: int = 0
    unpriced_kept: int = 0
    before: Decimal = Decimal(0)
    after: Decimal = Decimal(0)

    def as_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "rows": self.rows,
            "changed": self.changed,
            "unpriced_kept": self.unpriced_kept,
            "total_cost_before": str(self.before),
            "total_cost_after": str(self.after),
        }


@dataclass
class RecalcReport:
    """What `pricing recalc` did: row counts and total cost before and after, per model too."""

    since: datetime
    model: str | None
    dry_run: bool
    by_model: dict[tuple[str, str], ModelChange] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(m.rows for m in self.by_model.values())

    @property
    def changed(self) -> int:
        return sum(m.changed for m in self.by_model.values())

    @property
    def unpriced_kept(self) -> int:
        return sum(m.unpriced_kept for m in self.by_model.values())

    @property
    def before(self) -> Decimal:
        return sum((m.before for m in self.by_model.values()), Decimal(0))

    @property
    def after(self) -> Decimal:
        return sum((m.after for m in self.by_model.values()), Decimal(0))

    def as_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "model": self.model,
            "dry_run": self.dry_run,
            "rows": self.rows,
            "changed": self.changed,
            "unpriced_kept": self.unpriced_kept,
            "total_cost_before": str(self.before),
            "total_cost_after": str(self.after),
            "models": [m.as_json() for m in self.by_model.values() if m.changed or m.unpriced_kept],
        }


async def recalculate_costs(
    db: Database,
    book: PriceBook,
    since: datetime,
    *,
    model: str | None = None,
    dry_run: bool = False,
    batch_size: int = RECALC_BATCH,
) -> RecalcReport:
    """Reprice every row requested at or after `since` (of `model`, if given), in batches.

    A row is rewritten only when its cost or `model_alias_found` changes. A row that had a
    price but finds none now (a model known only to the remote table, say) keeps its cost and
    is counted in `unpriced_kept`.
    """
    report = RecalcReport(since, model, dry_run)
    after = None
    while True:
        rows = await db.requests.rows_to_reprice(since, model, after, batch_size)
        if not rows:
            return report
        updates = []
        for row in rows:
            change = report.by_model.get((row["provider"], row["model"]))
            if change is None:
                change = ModelChange(row["provider"], row["model"])
                report.by_model[(row["provider"], row["model"])] = change
            usage = Usage(
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                cached_tokens=row["cached_tokens"],
                cache_creation_tokens=row["cache_creation_tokens"],
                reasoning_tokens=row["reasoning_tokens"],
            )
            cost = book.cost(row["provider"], row["model"], usage, row["requested_at"])
            stored: Decimal = row["total_cost"]
            change.rows += 1
            change.before += stored
            if not cost.found and row["model_alias_found"]:
                change.unpriced_kept += 1
                change.after += stored
                continue
            new = (cost.input_cost, cost.output_cost, cost.total_cost, cost.found)
            old = (row["input_cost"], row["output_cost"], stored, row["model_alias_found"])
            if _same_stored(new, old):
                change.after += stored
                continue
            change.changed += 1
            change.after += cost.total_cost
            updates.append((row["id"], *new))
        if updates and not dry_run:
            await db.requests.update_costs(updates)
        last = rows[-1]
        after = (last["requested_at"], last["id"])


def _same_stored(new: tuple[Any, ...], old: tuple[Any, ...]) -> bool:
    """Whether storing `new` would leave the row as it is. The cost columns are `numeric`
    without a scale (schema version 3): a cost is stored exactly, so compared exactly."""
    return new == old
