"""The shared state of the limits (`limits.py`): one `limit_windows` row per (key, kind,
window), and each key's limits in its `api_keys` row.

`lease` is the one statement on the way to a lease: a conditional `UPDATE … RETURNING` that
locks the row (`FOR UPDATE` in its subquery, so concurrent leases queue on the row and each
sees what the one before left), grants at most what is left and says how much that was. A
row is created by the first lease of its window (`INSERT … ON CONFLICT DO NOTHING`, then the
same update again).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from majordomo.limits import LIMIT_NAMES, Limits, window

if TYPE_CHECKING:
    import asyncpg

    from majordomo.db import Database

_LEASE = """
UPDATE limit_windows AS w
   SET capacity = $4,
       granted = GREATEST(before.granted, LEAST($4, before.granted + $5))
  FROM (SELECT granted FROM limit_windows
         WHERE owner_id = $1 AND kind = $2 AND window_start = $3 FOR UPDATE) AS before
 WHERE w.owner_id = $1 AND w.kind = $2 AND w.window_start = $3
RETURNING w.granted - before.granted AS got, GREATEST(w.capacity - w.granted, 0) AS left
"""
_CREATE = """
INSERT INTO limit_windows (owner_id, kind, window_start, capacity) VALUES ($1, $2, $3, $4)
ON CONFLICT (owner_id, kind, window_start) DO NOTHING
"""
_GIVE_BACK = """
UPDATE limit_windows SET granted = GREATEST(granted - $4, 0)
 WHERE owner_id = $1 AND kind = $2 AND window_start = $3
"""


def limits_from_row(row: asyncpg.Record) -> Limits:
    """A key's limits from its `api_keys` columns."""
    return Limits(
        budget_usd=row["budget_usd"],
        budget_period=row["budget_period"],
        rpm=row["rpm"],
        tpm=row["tpm"],
    )


class LimitQueries:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def lease(
        self, owner_id: uuid.UUID, kind: str, start: datetime, capacity: Decimal, want: Decimal
    ) -> tuple[Decimal, Decimal]:
        """Take up to `want` of what is left in a window: (granted, left after)."""
        row = await self._db.fetchrow(_LEASE, owner_id, kind, start, capacity, want)
        if row is None:
            await self._db.execute(_CREATE, owner_id, kind, start, capacity)
            row = await self._db.fetchrow(_LEASE, owner_id, kind, start, capacity, want)
            assert row is not None
        return Decimal(row["got"]), Decimal(row["left"])

    async def give_back(
        self, owner_id: uuid.UUID, kind: str, start: datetime, amount: Decimal
    ) -> None:
        """Return an unused part of a lease."""
        await self._db.execute(_GIVE_BACK, owner_id, kind, start, amount)

    async def windows(
        self, key_id: uuid.UUID, limits: Limits, now: datetime, *, proxy_key: bool = False
    ) -> list[dict[str, Any]]:
        """Each limit of a key with what its current window used (from the usage rows) and
        when it resets: what `keys get` and the admin API show."""
        out: list[dict[str, Any]] = []
        for kind, capacity, period in limits.capacities():
            start, end = window(period, now)
            requests, tokens, spend = await self.usage(key_id, start, end, proxy_key=proxy_key)
            used = spend if kind == "usd" else Decimal(requests if kind == "requests" else tokens)
            out.append(
                {
                    "limit": LIMIT_NAMES[kind],
                    "value": float(capacity) if kind == "usd" else int(capacity),
                    "used": float(used) if kind == "usd" else int(used),
                    "window_start": start.isoformat(),
                    "resets_at": end.isoformat(),
                }
            )
        return out

    async def usage(
        self, key_id: uuid.UUID, since: datetime, until: datetime, *, proxy_key: bool = False
    ) -> tuple[int, int, Decimal]:
        """Requests, tokens and spend of a key (or proxy key) in a window, from its rows."""
        column = "proxy_key_id" if proxy_key else "majordomo_api_key_id"
        row = await self._db.fetchrow(
            "SELECT count(*) AS requests, "
            "coalesce(sum(input_tokens + output_tokens), 0) AS tokens, "
            "coalesce(sum(total_cost), 0) AS spend "
            f"FROM llm_requests WHERE {column} = $1 AND requested_at >= $2 "
            "AND requested_at < $3 AND status_code <> 429",
            key_id,
            since,
            until,
        )
        assert row is not None
        return int(row["requests"]), int(row["tokens"]), Decimal(row["spend"])
