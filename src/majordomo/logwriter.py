"""The log writer: the one consumer of the usage-record channel, and its durability.

Theory of operation
-------------------
Request handlers `send_nowait` finished `RequestRecord`s into a bounded memory channel (and,
when it is full, append them to the local spool: see `spool.py`). This task takes records in
batches — up to `MAX_BATCH` rows, or whatever arrived within `MAX_DELAY` of the first — prices
them (`pricing.PriceBook`, off the request path), stores their bodies, and inserts each batch
in one round trip through its `RecordStore` (`db.requests` in the gateway, whose insert also
moves the key and metadata counters, exactly once per row; an in-memory store in the unit
tests, `tests/test_logwriter.py`).

Every write has a deadline (`logging.write_timeout`): a statement stuck behind a lock or a
saturated server is cancelled past it and treated like an unreachable database. When
PostgreSQL is unreachable, the batch goes to the spool (fsync'ed) and the writer stops
trying for a while (doubling from `FIRST_RETRY_DELAY` to `MAX_RETRY_DELAY`); batches arriving
meanwhile go straight to the spool, so the channel never backs up behind a dead database. The
first successful insert after that replays the spool. The spool is also replayed at start-up:
a previous process may have left records there.

A batch the database refuses for its content (not a connection problem) is retried row by
row; a row refused on its own is set aside in the spool's quarantine file with an error log.

It returns once every send side is closed and the channel is empty; the supervisor closes the
channel after `serve()` returns and gives the writer `logging.drain_timeout`. If that deadline
cancels it, whatever is still queued goes to the spool (shielded), for the next start. The
spool itself belongs to the supervisor, which opens it before the writer starts and closes it
after the writer has returned.

Spool files are read on a worker thread (`trio.to_thread`), batch by batch: replaying a large
spool never stalls the requests served meanwhile.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator, Sequence
from decimal import Decimal
from typing import Protocol

import trio

from majordomo.bodystore import BodyStore, NoBodyStore, StoredBodies
from majordomo.errors import DatabaseUnavailable, RowsRefused
from majordomo.metrics import Metrics
from majordomo.pricing import Cost, PriceBook
from majordomo.records import RequestRecord, RowExtras
from majordomo.spool import Spool

log = logging.getLogger("majordomo.logwriter")
# One line per proxied request (logging.access_log).
access = logging.getLogger("majordomo.access")

NO_BODIES = StoredBodies()
NO_COST = Cost(Decimal(0), Decimal(0), Decimal(0), found=False, source="none")

# One round trip writes at most this many rows...
MAX_BATCH = 500
# ...and a row waits at most this long (seconds) for others to share its round trip.
MAX_DELAY = 0.2
# Pauses between attempts while the database is unreachable: doubling up to a ceiling.
FIRST_RETRY_DELAY = 0.2
MAX_RETRY_DELAY = 5.0
# Longest one batch write may take (seconds): a lock held on api_keys, a saturated server. Past
# it the batch is spooled as if the database were down, so the writer never stalls unbounded.
WRITE_TIMEOUT = 5.0
# How long the idle writer's check that the database is back may take (seconds).
PING_TIMEOUT = 5.0


class RecordStore(Protocol):
    """Where the writer puts rows: `db.requests` in the gateway."""

    async def insert(self, records: Sequence[RequestRecord], extras: Sequence[RowExtras]) -> int:
        """Insert the rows not yet stored (by id), in one statement; raise
        `DatabaseUnavailable` if the store cannot be reached, `RowsRefused` if it refuses
        the content."""
        ...

    async def ping(self) -> None:
        """Return if the store answers; raise `DatabaseUnavailable` if not."""
        ...


class LogWriter:
    def __init__(
        self,
        store: RecordStore,
        spool: Spool,
        metrics: Metrics,
        *,
        bodies: BodyStore | None = None,
        prices: PriceBook | None = None,
        max_batch: int = MAX_BATCH,
        max_delay: float = MAX_DELAY,
        write_timeout: float = WRITE_TIMEOUT,
        access_log: bool = False,
    ) -> None:
        self.rows = store
        self.spool = spool
        self.metrics = metrics
        self.bodies = bodies or NoBodyStore()
        self.prices = prices
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.write_timeout = write_timeout
        self.access_log = access_log
        self._down_until = 0.0  # while the database is unreachable: when to try it again
        self._retry_delay = FIRST_RETRY_DELAY

    # -- the task -------------------------------------------------------------------------

    async def run(
        self,
        records: trio.MemoryReceiveChannel[RequestRecord],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write records until the channel is closed and empty; spool what cannot be written."""
        task_status.started()
        batch: list[RequestRecord] = []
        async with records:
            try:
                await self.replay()
                while True:
                    next_batch = await self._next_batch(records)
                    if next_batch is None:  # idle with records waiting in the spool
                        await self._retry_spool()
                        continue
                    batch = next_batch
                    if not batch:
                        break
                    await self.store(batch)
                    batch = []
            finally:
                # Counted and saved before the channel closes: closing the last receiver
                # drops its buffer.
                leftover = batch + _drain(records)
                with trio.CancelScope(shield=True):
                    if leftover:
                        await self._spool(leftover)
                        log.warning(
                            "%d usage records could not be written before the writer stopped; "
                            "they are in the spool and will be written at the next start",
                            len(leftover),
                            extra={"spooled": len(leftover), "spool": str(self.spool.directory)},
                        )
                    else:
                        log.info(
                            "log writer stopped; every record written",
                            extra={"written": self.metrics.rows_written},
                        )

    async def _next_batch(
        self, records: trio.MemoryReceiveChannel[RequestRecord]
    ) -> list[RequestRecord] | None:
        """The next batch; [] once the channel is closed and empty; None when nothing came
        before it is time to retry the spool (an idle gateway after an outage must not keep
        its records on disk until the next request)."""
        now = trio.current_time()
        if not self.spool.has_pending():
            wait = math.inf
        elif self._down_until > now:  # the next attempt, as announced when the last failed
            wait = self._down_until
        else:
            wait = now + self._retry_delay
        batch: list[RequestRecord] = []
        with trio.move_on_at(wait):
            try:
                batch = [await records.receive()]
            except trio.EndOfChannel:
                return []
        if not batch:
            return None
        deadline = trio.current_time() + self.max_delay
        with trio.move_on_at(deadline):
            while len(batch) < self.max_batch:
                try:
                    batch.append(records.receive_nowait())  # what is there, without yielding
                    continue
                except trio.WouldBlock:
                    pass
                except trio.EndOfChannel:
                    break
                try:
                    batch.append(await records.receive())
                except trio.EndOfChannel:
                    break
        return batch

    # -- storing --------------------------------------------------------------------------

    async def store(self, batch: list[RequestRecord]) -> None:
        """Insert a batch, or spool it if the database is unreachable."""
        if self.access_log:
            self._log_access(batch)
        if trio.current_time() < self._down_until:
            await self._spool(batch)
            return
        if await self._insert(batch):
            if self._retry_delay != FIRST_RETRY_DELAY:
                log.info("database reachable again; writing spooled records")
            self._retry_delay = FIRST_RETRY_DELAY
            if self.spool.has_pending():
                await self.replay()
        else:
            await self._spool(batch)

    async def _insert(self, batch: list[RequestRecord]) -> bool:
        """True once the batch is in the database; False if the database is unreachable."""
        try:
            extras = await self.enrich(batch)
            started = time.perf_counter()
            await self._write(batch, extras)
        except DatabaseUnavailable as exc:
            self._down_until = trio.current_time() + self._retry_delay
            log.warning(
                "cannot write usage records, spooling them; next attempt in %.1fs: %s",
                self._retry_delay,
                exc,
                extra={"records": len(batch)},
            )
            self._retry_delay = min(self._retry_delay * 2, MAX_RETRY_DELAY)
            return False
        except RowsRefused as exc:
            # The content, not the connection: find the row(s) the database refuses.
            log.error("a batch of usage records was refused (%s); retrying row by row", exc)
            return await self._insert_one_by_one(batch)
        self.metrics.write_latency.observe(time.perf_counter() - started)
        self.metrics.batches_written += 1
        self.metrics.rows_written += len(batch)
        return True

    async def _insert_one_by_one(self, batch: list[RequestRecord]) -> bool:
        for record in batch:
            try:
                await self._write([record], await self.enrich([record]))
            except DatabaseUnavailable:
                return False  # the whole batch is spooled; rows already in are skipped later
            except RowsRefused as exc:
                self.metrics.records_quarantined += 1
                log.error(
                    "usage record %s was refused by the database and set aside in %s: %s",
                    record.id,
                    self.spool.directory,
                    exc,
                )
                await trio.to_thread.run_sync(self.spool.quarantine_records, [record], str(exc))
            else:
                self.metrics.rows_written += 1
        return True

    async def _write(self, batch: list[RequestRecord], extras: list[RowExtras]) -> None:
        """One insert, within `write_timeout` (cancelling the statement past it)."""
        try:
            with trio.fail_after(self.write_timeout):
                await self.rows.insert(batch, extras)
        except trio.TooSlowError:
            raise DatabaseUnavailable(
                f"writing {len(batch)} usage records took more than {self.write_timeout:g}s "
                "(logging.write_timeout)"
            ) from None

    async def enrich(self, batch: list[RequestRecord]) -> list[RowExtras]:
        """What each row adds to its record: its cost and its stored bodies."""
        stored = [NO_BODIES] * len(batch)
        if not isinstance(self.bodies, NoBodyStore):
            # One task per record: uploads run side by side in the store's worker threads.
            async def store(i: int, record: RequestRecord) -> None:
                stored[i] = await self.bodies.store(record)

            async with trio.open_nursery() as nursery:
                for i, record in enumerate(batch):
                    if record.exchange is not None:
                        nursery.start_soon(store, i, record)
        extras = []
        for record, b in zip(batch, stored, strict=True):
            cost = self._cost(record)
            extras.append(
                RowExtras(
                    input_cost=cost.input_cost,
                    output_cost=cost.output_cost,
                    total_cost=cost.total_cost,
                    model_alias_found=cost.found,
                    request_body=b.request_body,
                    response_body=b.response_body,
                    body_s3_key=b.s3_key,
                )
            )
        return extras

    async def _retry_spool(self) -> None:
        """Replay the spool if the database looks reachable again (a ping first: a replay
        that fails would only be counted and logged as such)."""
        try:
            with trio.fail_after(PING_TIMEOUT):
                await self.rows.ping()
        except (DatabaseUnavailable, trio.TooSlowError):
            self._down_until = trio.current_time() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, MAX_RETRY_DELAY)
            return
        log.info("database reachable again; writing spooled records")
        self._retry_delay = FIRST_RETRY_DELAY
        self._down_until = 0.0
        await self.replay()

    def _cost(self, record: RequestRecord) -> Cost:
        if self.prices is None:
            return NO_COST
        return self.prices.cost(record.provider, record.model, record.usage, record.requested_at)

    def _log_access(self, batch: list[RequestRecord]) -> None:
        """One line per request (`logging.access_log`), written as its record is taken: after
        the answer, off the request path, with its cost (prices are cached: microseconds)."""
        for r in batch:
            cost = self._cost(r)
            access.info(
                "%s %s %s %s %d %d+%d tokens $%s %dms",
                r.request_method,
                r.request_path,
                r.provider,
                r.model,
                r.status_code,
                r.usage.input_tokens,
                r.usage.output_tokens,
                _plain(cost.total_cost),
                r.response_time_ms,
                extra={
                    "request_id": str(r.id),
                    "method": r.request_method,
                    "path": r.request_path,
                    "provider": r.provider,
                    "model": r.model,
                    "status": r.status_code,
                    "input_tokens": r.usage.input_tokens,
                    "output_tokens": r.usage.output_tokens,
                    "cost": _plain(cost.total_cost),
                    "ms": r.response_time_ms,
                },
            )

    async def _spool(self, batch: list[RequestRecord]) -> None:
        self.spool.append(batch, sync=False)
        await trio.to_thread.run_sync(self.spool.sync)
        self.metrics.records_spooled += len(batch)

    async def replay(self) -> None:
        """Write every spooled record to the database, oldest file first."""
        files = self.spool.take_for_replay()
        for path in files:
            count = 0
            quarantined = self.spool.quarantined
            batches = self.spool.read(path, self.max_batch)
            while (batch := await trio.to_thread.run_sync(_next_batch, batches)) is not None:
                if not await self._insert(batch):
                    batches.close()
                    return  # still unreachable: the file stays for the next replay
                count += len(batch)
            self.metrics.records_quarantined += self.spool.quarantined - quarantined
            self.spool.done(path)
            self.metrics.records_replayed += count
            if count:
                log.info("replayed %d spooled usage records from %s", count, path.name)


def _plain(value: Decimal) -> str:
    """A cost without exponent or trailing zeros: 0.0000125, 0."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _next_batch(batches: Generator[list[RequestRecord]]) -> list[RequestRecord] | None:
    return next(batches, None)


def _drain(records: trio.MemoryReceiveChannel[RequestRecord]) -> list[RequestRecord]:
    drained = []
    while True:
        try:
            drained.append(records.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return drained
