"""The log writer alone, against an in-memory `RecordStore`, on trio's virtual clock:
batching, retry backoff, the spool behind every failure, quarantine and the drain.

The gateway's real store (`db.requests` on PostgreSQL) is exercised end to end by
`test_durability.py` and `test_every_row.py`; here the store is a stand-in so that time and
failures can be chosen exactly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from majordomo.errors import DatabaseUnavailable, RowsRefused
from majordomo.logwriter import FIRST_RETRY_DELAY, MAX_RETRY_DELAY, LogWriter
from majordomo.metrics import Metrics
from majordomo.records import RequestRecord, RowExtras
from majordomo.spool import QUARANTINE, Spool
from tests.poll import wait_until
from tests.samples import a_record as record

pytestmark = pytest.mark.fast


@dataclass
class MemoryStore:
    """A `RecordStore` whose failures the test chooses."""

    rows: dict[uuid.UUID, RequestRecord] = field(default_factory=dict)
    down: bool = False
    hang: bool = False
    refused: set[uuid.UUID] = field(default_factory=set)
    inserts: list[tuple[float, int]] = field(default_factory=list)  # (when, how many)
    cancelled: list[float] = field(default_factory=list)  # when a hung insert was cut
    pings: list[float] = field(default_factory=list)

    async def insert(self, records: Sequence[RequestRecord], extras: Sequence[RowExtras]) -> int:
        self.inserts.append((trio.current_time(), len(records)))
        assert len(extras) == len(records)
        if self.hang:
            try:
                await trio.sleep_forever()
            finally:
                self.cancelled.append(trio.current_time())
        if self.down:
            raise DatabaseUnavailable("the database is down")
        if any(r.id in self.refused for r in records):
            raise RowsRefused("a row the database refuses")
        new = [r for r in records if r.id not in self.rows]
        self.rows.update((r.id, r) for r in new)
        return len(new)

    async def ping(self) -> None:
        self.pings.append(trio.current_time())
        if self.down or self.hang:
            raise DatabaseUnavailable("the database is down")


@dataclass
class Running:
    writer: LogWriter
    store: MemoryStore
    spool: Spool
    send: trio.MemorySendChannel[RequestRecord]
    metrics: Metrics


@asynccontextmanager
async def running(
    tmp_path: Path, store: MemoryStore | None = None, **options: float
) -> AsyncIterator[Running]:
    store = store or MemoryStore()
    spool = Spool(tmp_path / "spool")
    metrics = Metrics()
    writer = LogWriter(store, spool, metrics, **options)  # type: ignore[arg-type]
    send, receive = trio.open_memory_channel[RequestRecord](10_000)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run, receive)
            async with send:
                yield Running(writer, store, spool, send, metrics)
    finally:
        spool.close()


def spooled_ids(spool: Spool) -> set[str]:
    return {
        json.loads(line)["id"]
        for path in spool.directory.glob("*.jsonl")
        if path.name != QUARANTINE
        for line in path.read_text().splitlines()
    }


async def settled(check: Callable[[], bool], *, deadline: float, what: str) -> None:
    await wait_until(check, deadline=deadline, what=what, every=0.1)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps ahead only once every task has been idle for a moment of real
    time: the writer also waits on worker threads (spool writes), and a clock that jumped
    while a thread worked would run the tests' deadlines out. So the tests time only what
    happens between two calls into the store, never across a spool write."""
    return trio.testing.MockClock(autojump_threshold=0.01)


async def test_records_sent_together_share_one_insert(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, max_batch=500) as r:
        for i in range(1_200):
            r.send.send_nowait(record(i))
        await settled(
            lambda: len(r.store.rows) == 1_200, deadline=5, what="len(r.store.rows) == 1_200"
        )
    assert [n for _, n in r.store.inserts] == [500, 500, 200]
    assert r.metrics.batches_written == 3


async def test_a_lone_record_waits_at_most_max_delay_for_company(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with running(tmp_path, max_delay=0.2) as r:
        start = trio.current_time()
        r.send.send_nowait(record())
        await trio.sleep(0.1)
        r.send.send_nowait(record())  # within the first one's wait: same insert
        await trio.sleep(0.5)
        r.send.send_nowait(record())  # after it: its own insert
        await settled(lambda: len(r.store.rows) == 3, deadline=5, what="len(r.store.rows) == 3")
    (first_at, first_n), (second_at, second_n) = r.store.inserts
    assert (first_n, second_n) == (2, 1)
    assert first_at - start == pytest.approx(0.2)
    assert second_at - start == pytest.approx(0.8)


async def test_an_unreachable_store_is_retried_with_doubling_pauses_and_nothing_is_lost(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    store = MemoryStore(down=True)
    async with running(tmp_path, store) as r:
        sent = [record(i) for i in range(3)]
        r.send.send_nowait(sent[0])
        await settled(lambda: len(store.pings) >= 7, deadline=60, what="len(store.pings) >= 7")
        # Meanwhile records go straight to the spool; nothing waits in memory.
        r.send.send_nowait(sent[1])
        r.send.send_nowait(sent[2])
        await settled(
            lambda: r.metrics.records_spooled == 3,
            deadline=5,
            what="r.metrics.records_spooled == 3",
        )
        assert spooled_ids(r.spool) == {str(x.id) for x in sent}
        # After the failed insert (announced: next attempt in FIRST_RETRY_DELAY) each failed
        # ping doubles the pause, up to the ceiling.
        assert store.pings[0] - store.inserts[0][0] >= FIRST_RETRY_DELAY
        pauses = [b - a for a, b in zip(store.pings, store.pings[1:], strict=False)]
        expected = [FIRST_RETRY_DELAY * 2**i for i in range(1, 5)] + [MAX_RETRY_DELAY] * 2
        assert pauses[:6] == pytest.approx(expected)

        store.down = False  # the idle writer notices at its next ping and replays
        await settled(
            lambda: len(store.rows) == 3, deadline=MAX_RETRY_DELAY * 2, what="len(store.rows) == 3"
        )
        await settled(
            lambda: not r.spool.has_pending(), deadline=5, what="not r.spool.has_pending()"
        )
    assert set(store.rows) == {x.id for x in sent}
    assert r.metrics.records_replayed == 3
    assert not spooled_ids(r.spool)


async def test_a_write_past_its_deadline_is_spooled_and_replayed_later(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    store = MemoryStore(hang=True)
    async with running(tmp_path, store, write_timeout=5.0) as r:
        late = record()
        r.send.send_nowait(late)
        await settled(
            lambda: r.metrics.records_spooled == 1,
            deadline=10,
            what="r.metrics.records_spooled == 1",
        )
        assert store.cancelled[0] - store.inserts[0][0] == pytest.approx(5.0)
        assert spooled_ids(r.spool) == {str(late.id)}
        store.hang = False
        await settled(lambda: late.id in store.rows, deadline=30, what="late.id in store.rows")


async def test_a_row_the_store_refuses_is_quarantined_and_the_others_written(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bad = record()
    good = [record(i) for i in range(4)]
    store = MemoryStore(refused={bad.id})
    async with running(tmp_path, store) as r:
        for x in [good[0], good[1], bad, good[2], good[3]]:
            r.send.send_nowait(x)
        await settled(
            lambda: r.metrics.records_quarantined == 1,
            deadline=5,
            what="r.metrics.records_quarantined == 1",
        )
    assert set(store.rows) == {x.id for x in good}
    quarantine = (r.spool.directory / QUARANTINE).read_text()
    assert str(bad.id) in quarantine
    assert all(str(x.id) not in quarantine for x in good)
    assert r.metrics.rows_written == 4


async def test_closing_the_channel_drains_every_queued_record(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    sent = [record(i) for i in range(1_234)]
    async with running(tmp_path) as r:
        for x in sent:
            r.send.send_nowait(x)
    # Leaving `running` closed the channel and waited for the writer to return.
    assert set(r.store.rows) == {x.id for x in sent}
    assert not r.spool.has_pending()


async def test_a_drain_cut_short_leaves_the_rest_in_the_spool(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    store = MemoryStore(hang=True)
    sent = [record(i) for i in range(700)]
    with trio.move_on_after(1.0):  # the supervisor's drain deadline
        async with running(tmp_path, store, write_timeout=60) as r:
            for x in sent:
                r.send.send_nowait(x)
    assert spooled_ids(r.spool) == {str(x.id) for x in sent}
    assert not store.rows


async def test_records_left_in_the_spool_are_replayed_at_start(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    earlier = [record(i) for i in range(3)]
    previous = Spool(tmp_path / "spool")
    previous.append(earlier)
    previous.close()
    store = MemoryStore()
    async with running(tmp_path, store) as r:
        await settled(lambda: len(store.rows) == 3, deadline=5, what="len(store.rows) == 3")
    assert r.metrics.records_replayed == 3
    assert not spooled_ids(r.spool)
