"""Budgets and rate limits per key, held across replicas with PostgreSQL leases.

Theory of operation
-------------------
A key may have a spend budget (`budget_usd` per UTC `day` or `month`), a request rate (`rpm`)
and a token rate (`tpm`: input + output as logged), each optional. Every limit has fixed UTC
windows (the calendar minute, day or month), and each (key, kind, window) has one row in
`limit_windows` shared by every gateway: its `capacity` (the limit) and `granted`, how much of
it gateways have taken as leases.

A gateway never asks the database per request. It takes a *lease* — a slice of what is left
— with one conditional `UPDATE … RETURNING` that can never grant past `capacity`, keeps it in
memory (`_Bucket.balance`) and spends from it. When the balance falls under half of the last
lease, a background task renews it; the lease is sized to the rate observed
(`LEASE_HORIZON` seconds of it), never under the request at hand and never over a tenth of the
capacity, so that one replica cannot take what the others will need. Only when a balance is
empty does a request wait for a lease (one round trip), and only when the shared row has
nothing left is it refused: 429 in the provider's error shape, `Retry-After` the seconds until
the window rolls over.

Requests are counted at admission, exactly. Tokens and dollars are known only once the answer
is in, so a request *reserves* an estimate (`estimate_tokens`: the prompt's bytes / 3 plus the
output limit it asked for, else `DEFAULT_OUTPUT_ESTIMATE`; dollars: that usage priced) and
*settles* at its end: the balance gets back the estimate and pays the exact figure (cut-short
streams pay what they used; errors pay nothing). A balance may go negative (a debt), which the
next lease pays first. Unused balances go back to the shared row when the window rolls over
and when the gateway stops.

Worst-case overshoot
~~~~~~~~~~~~~~~~~~~~
Leases never exceed capacity, so what is admitted against the leases is bounded; what can pass
is what was settled above its estimate. With R replicas and F(r) the requests in flight on
replica r when the window's capacity ran out:

    requests:  0 (counted at admission, exactly)
    tokens:    sum over r of F(r) * max(0, actual_tokens - estimate)   per in-flight request
    dollars:   sum over r of F(r) * max(0, actual_cost - estimated_cost)

The estimate covers the prompt (bytes / 3 >= tokens for every tokenizer in use) and the output
limit the request asked for, so a request that sets `max_tokens` never overshoots; one that
sets none can overshoot by at most its output beyond `DEFAULT_OUTPUT_ESTIMATE` tokens. Leases
held by other replicas and not spent make the opposite error (an early refusal), bounded by
R * the largest lease (a tenth of capacity each).

When PostgreSQL is away, a gateway serves from the balance it holds; once that is spent,
`limits.fail_open` admits (with a warning) or refuses with 503. Settlement needs no database:
it is in-memory accounting, and the usage row (kept by the spool if need be) is the record.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import trio

from majordomo.errors import DatabaseUnavailable
from majordomo.metrics import Metrics

log = logging.getLogger("majordomo.limits")

KINDS = ("requests", "tokens", "usd")
# Output tokens reserved for a request that sets no output limit.
DEFAULT_OUTPUT_ESTIMATE = 4096
# A lease covers this many seconds of the observed rate.
LEASE_HORIZON = 2.0
# No lease takes more than this share of a window's capacity.
MAX_LEASE_SHARE = Decimal("0.1")
_BUDGET = re.compile(r"^\s*\$?(\d+(?:\.\d+)?)\s*/\s*(day|month)\s*$")
_OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens", "maxTokens")


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits; None means unset."""

    budget_usd: Decimal | None = None
    budget_period: str | None = None  # "day" | "month"
    rpm: int | None = None
    tpm: int | None = None

    @property
    def any(self) -> bool:
        return self.budget_usd is not None or self.rpm is not None or self.tpm is not None

    def capacities(self) -> list[tuple[str, Decimal, str]]:
        """(kind, capacity, period) of each limit set."""
        out: list[tuple[str, Decimal, str]] = []
        if self.rpm is not None:
            out.append(("requests", Decimal(self.rpm), "minute"))
        if self.tpm is not None:
            out.append(("tokens", Decimal(self.tpm), "minute"))
        if self.budget_usd is not None:
            out.append(("usd", self.budget_usd, self.budget_period or "day"))
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "budget_usd": float(self.budget_usd) if self.budget_usd is not None else None,
            "budget_period": self.budget_period if self.budget_usd is not None else None,
            "rpm": self.rpm,
            "tpm": self.tpm,
        }


NO_LIMITS = Limits()
# The largest rpm or tpm (a PostgreSQL integer).
MAX_RATE = 2**31 - 1


def parse_rate(text: str, name: str) -> int | None:
    """`600` → 600; `none` → None; ValueError naming the option otherwise."""
    if text.strip().lower() in ("none", "off", ""):
        return None
    if not text.strip().isdigit() or not 0 < int(text) <= MAX_RATE:
        raise ValueError(
            f"expected --{name} as a whole number from 1 to {MAX_RATE}, or none; got {text!r}"
        )
    return int(text)


def parse_budget(text: str) -> tuple[Decimal, str] | None:
    """`25/day`, `$100/month` → (amount, period); `none` → None; ValueError otherwise."""
    if text.strip().lower() in ("none", "off", ""):
        return None
    found = _BUDGET.fullmatch(text.lower())
    if found is None:
        raise ValueError(f"expected a budget such as 25/day or 100/month, or none; got {text!r}")
    return Decimal(found[1]), found[2]


def updated(current: Limits, budget: str | None, rpm: str | None, tpm: str | None) -> Limits:
    """`current` with the limits given as command-line text (`25/day`, `600`, `none`)
    replaced; ValueError names a malformed one."""
    new_budget = parse_budget(budget) if budget is not None else None
    return Limits(
        budget_usd=(new_budget[0] if new_budget else None)
        if budget is not None
        else current.budget_usd,
        budget_period=(new_budget[1] if new_budget else None)
        if budget is not None
        else current.budget_period,
        rpm=parse_rate(rpm, "rpm") if rpm is not None else current.rpm,
        tpm=parse_rate(tpm, "tpm") if tpm is not None else current.tpm,
    )


def window(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The UTC window (start, end) of `period` ("minute", "day", "month") holding `now`."""
    now = now.astimezone(UTC)
    if period == "minute":
        start = now.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def estimate_tokens(payload: dict[str, Any] | None, body_size: int) -> tuple[int, int]:
    """(input, output) tokens to reserve for a request before it is forwarded."""
    output = DEFAULT_OUTPUT_ESTIMATE
    if payload is not None:
        sources = [payload, payload.get("generationConfig"), payload.get("inferenceConfig")]
        for source in sources:
            if isinstance(source, dict):
                for name in (*_OUTPUT_FIELDS, "maxOutputTokens"):
                    value = source.get(name)
                    if type(value) is int and value > 0:
                        output = value
                        break
                else:
                    continue
                break
    return math.ceil(body_size / 3), output


# -- the leases ------------------------------------------------------------------------------

Lease = Callable[[uuid.UUID, str, datetime, Decimal, Decimal], Awaitable[tuple[Decimal, Decimal]]]
GiveBack = Callable[[uuid.UUID, str, datetime, Decimal], Awaitable[None]]


@dataclass(slots=True)
class _Bucket:
    """This gateway's share of one (key, kind, window)."""

    owner_id: uuid.UUID
    kind: str
    start: datetime
    end: datetime
    capacity: Decimal
    balance: Decimal = Decimal(0)  # leased and not yet spent; negative: a debt
    left: Decimal | None = None  # what the shared row had left after our last lease
    last_lease: Decimal = Decimal(0)
    spent: Decimal = Decimal(0)  # this gateway's spending in this window
    renewing: bool = False
    renewed: trio.Event = field(default_factory=trio.Event)  # set when a renewal ends
    opened_at: float = field(default_factory=trio.current_time)

    def remaining(self) -> Decimal:
        """What this gateway believes is left in the window (ours plus the shared rest)."""
        return max(Decimal(0), self.balance) + (self.left if self.left is not None else 0)

    def lease_size(self, need: Decimal, now: float) -> Decimal:
        elapsed = max(now - self.opened_at, 1.0)
        rate = self.spent / Decimal(elapsed)
        size = max(need, rate * Decimal(LEASE_HORIZON), self.capacity * MAX_LEASE_SHARE / 4)
        cap = max(need, self.capacity * MAX_LEASE_SHARE)
        size = min(size, cap)
        if self.kind == "requests" or self.kind == "tokens":
            size = Decimal(math.ceil(size))
        return size - min(self.balance, Decimal(0))  # a debt is paid first


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is over a limit: the message, and the seconds until the window has room."""

    kind: str
    message: str
    retry_after: int


@dataclass(slots=True)
class Reservation:
    """What one admitted request holds, to settle when it ends."""

    held: list[tuple[_Bucket, Decimal]]
    headers: list[tuple[bytes, bytes]]


LIMIT_NAMES = _NAMES = {"requests": "rpm", "tokens": "tpm", "usd": "budget_usd"}
_HEADERS = {
    "requests": b"x-majordomo-limit-remaining-requests",
    "tokens": b"x-majordomo-limit-remaining-tokens",
    "usd": b"x-majordomo-limit-remaining-budget",
}


class LimitsExceeded(Exception):
    """A request over a limit: why, and the `X-Majordomo-Limit-*` headers of the key."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal
        self.headers: list[tuple[bytes, bytes]] = []


class LeaseManager:
    """Admits requests against the limits of their key (see the module doc). Trio only."""

    def __init__(
        self,
        lease: Lease,
        give_back: GiveBack,
        *,
        fail_open: bool,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._lease = lease
        self._give_back = give_back
        self._fail_open = fail_open
        self._clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self._buckets: dict[tuple[uuid.UUID, str], _Bucket] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the renewals until cancelled; then give every unused balance back."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.give_back_all()

    async def admit(
        self,
        owner_id: uuid.UUID,
        limits: Limits,
        tokens: int,
        cost: Decimal,
        *,
        at: datetime | None = None,
        subject: str = "Majordomo key",
    ) -> Reservation:
        """Reserve what one request (arrived `at`) needs under each limit; raises
        `LimitsExceeded`, or `DatabaseUnavailable` when no lease can be had and
        `fail_open` is off."""
        now = at if at is not None else self._clock()
        held: list[tuple[_Bucket, Decimal]] = []
        buckets: list[_Bucket] = []
        try:
            for kind, capacity, period in limits.capacities():
                need = {"requests": Decimal(1), "tokens": Decimal(tokens), "usd": cost}[kind]
                bucket = await self._bucket(owner_id, kind, capacity, period, now)
                buckets.append(bucket)
                await self._take(bucket, need, now, subject)
                held.append((bucket, need))
        except BaseException as exc:
            for bucket, amount in held:
                bucket.balance += amount
                bucket.spent -= amount
            if isinstance(exc, LimitsExceeded):
                exc.headers = _headers(buckets)
            raise
        return Reservation(held, _headers(buckets))

    def release(self, reservation: Reservation) -> None:
        """A request admitted here was refused by another limit: give back all it held."""
        for bucket, amount in reservation.held:
            bucket.balance += amount
            bucket.spent -= amount

    def settle(self, reservation: Reservation, tokens: int, cost: Decimal) -> None:
        """A request ended: give back its estimates, pay its exact tokens and cost."""
        for bucket, amount in reservation.held:
            actual = {"requests": amount, "tokens": Decimal(tokens), "usd": cost}[bucket.kind]
            bucket.balance += amount - actual
            bucket.spent += actual - amount
            self._maybe_renew(bucket)

    async def _bucket(
        self, owner_id: uuid.UUID, kind: str, capacity: Decimal, period: str, now: datetime
    ) -> _Bucket:
        start, end = window(period, now)
        bucket = self._buckets.get((owner_id, kind))
        if bucket is not None and bucket.start == start:
            bucket.capacity = capacity
            return bucket
        fresh = _Bucket(owner_id, kind, start, end, capacity)
        self._buckets[(owner_id, kind)] = fresh
        if bucket is not None and bucket.balance > 0:  # the window rolled over
            self._spawn(self._return, bucket, bucket.balance)
            bucket.balance = Decimal(0)
        return fresh

    async def _take(self, bucket: _Bucket, need: Decimal, now: datetime, subject: str) -> None:
        if bucket.balance < need and bucket.renewing:
            # A lease is in flight (the window just rolled over, or a renewal ran late): wait
            # for it rather than send one more; what it grants may be enough.
            await bucket.renewed.wait()
        if bucket.balance < need:
            try:
                await self._renew(bucket, need - max(bucket.balance, Decimal(0)))
            except DatabaseUnavailable as exc:
                if not self._fail_open:
                    raise
                self.metrics.limit_admitted_open += 1
                log.warning("admitting over an unknown %s limit: %s", _NAMES[bucket.kind], exc)
                return
            if bucket.balance < need:
                refusals = self.metrics.limit_refusals
                refusals[bucket.kind] = refusals.get(bucket.kind, 0) + 1
                raise LimitsExceeded(self._refusal(bucket, now, subject))
        bucket.balance -= need
        bucket.spent += need
        self._maybe_renew(bucket)

    def _maybe_renew(self, bucket: _Bucket) -> None:
        low = bucket.last_lease / 2
        if (
            not bucket.renewing
            and bucket.balance < low
            and (bucket.left is None or bucket.left > 0)
            and self._nursery is not None
        ):
            self._mark(bucket)  # one renewal at a time
            self._nursery.start_soon(self._background_renew, bucket)

    async def _background_renew(self, bucket: _Bucket) -> None:
        try:
            await self._renew(bucket, Decimal(0), marked=True)
        except DatabaseUnavailable as exc:
            log.warning("cannot renew a %s lease: %s", _NAMES[bucket.kind], exc)

    @staticmethod
    def _mark(bucket: _Bucket) -> None:
        bucket.renewing = True
        bucket.renewed = trio.Event()

    async def _renew(self, bucket: _Bucket, need: Decimal, *, marked: bool = False) -> None:
        if not marked:
            self._mark(bucket)
        done = bucket.renewed
        started = time.perf_counter()
        try:
            want = bucket.lease_size(need, trio.current_time())
            got, left = await self._lease(
                bucket.owner_id, bucket.kind, bucket.start, bucket.capacity, want
            )
        finally:
            bucket.renewing = False
            done.set()
            self.metrics.limit_lease_latency.observe(time.perf_counter() - started)
        self.metrics.limit_leases_taken += 1
        if self._buckets.get((bucket.owner_id, bucket.kind)) is not bucket:
            if got > 0:  # the window rolled over meanwhile
                self._spawn(self._return, bucket, got)
            return
        bucket.balance += got
        bucket.left = left
        bucket.last_lease = got

    async def _return(self, bucket: _Bucket, amount: Decimal) -> None:
        try:
            await self._give_back(bucket.owner_id, bucket.kind, bucket.start, amount)
            self.metrics.limit_leases_returned += 1
        except DatabaseUnavailable as exc:
            log.warning("cannot return an unused %s lease: %s", _NAMES[bucket.kind], exc)

    async def give_back_all(self) -> None:
        """Return every unused balance (the gateway is stopping)."""
        for bucket in list(self._buckets.values()):
            if bucket.balance > 0:
                amount, bucket.balance = bucket.balance, Decimal(0)
                await self._return(bucket, amount)
        self._buckets.clear()

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    def _refusal(self, bucket: _Bucket, now: datetime, subject: str) -> Refusal:
        name = _NAMES[bucket.kind]
        used = bucket.capacity - bucket.remaining()
        wait = max(1, math.ceil((bucket.end - now).total_seconds()))
        if bucket.kind == "usd":
            value, spent = f"${bucket.capacity:.2f}", f"${max(used, Decimal(0)):.4f}"
        else:
            value, spent = f"{bucket.capacity:.0f}", f"{max(used, Decimal(0)):.0f}"
        resets = bucket.end.strftime("%Y-%m-%dT%H:%M:%SZ")
        return Refusal(
            bucket.kind,
            f"this {subject} is over its {name} limit of {value}: {spent} used in the "
            f"window that resets at {resets} (in {wait}s); retry then, or raise the limit "
            f"with 'majordomo {'proxy-keys' if subject == 'proxy key' else 'keys'} update'",
            wait,
        )

    def snapshot(self) -> Iterable[_Bucket]:
        return list(self._buckets.values())


def _headers(buckets: list[_Bucket]) -> list[tuple[bytes, bytes]]:
    return [(_HEADERS[b.kind], _format(b.kind, b.remaining())) for b in buckets]


def _format(kind: str, value: Decimal) -> bytes:
    if kind == "usd":
        return f"{value:.6f}".encode()
    return f"{value:.0f}".encode()
