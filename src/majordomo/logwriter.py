"""The log writer: the one consumer of the usage-record channel.

Request handlers `send_nowait` finished `RequestRecord`s into a bounded memory channel; this
task takes them in batches and inserts them. It returns once every send side is closed and the
channel is empty, which is how the supervisor drains it on shutdown: close the send side after
`serve()` returns, then wait for this task (under a deadline, `logging.drain_timeout`).
While the database is unreachable it retries with backoff. If it is cancelled (the drain
deadline passed) it reports, in one error line, how many records it could not write.
"""

from __future__ import annotations

import logging

import trio

from majordomo.db import Database
from majordomo.errors import DatabaseUnavailable
from majordomo.records import RequestRecord

log = logging.getLogger("majordomo.logwriter")

# One round trip writes at most this many rows.
MAX_BATCH = 500
# Retry delays while the database is unreachable: doubling up to a ceiling.
FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0


async def run_log_writer(
    db: Database,
    records: trio.MemoryReceiveChannel[RequestRecord],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write records until the channel is closed and empty."""
    task_status.started()
    written = 0
    batch: list[RequestRecord] = []
    async with records:
        try:
            async for first in records:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(records.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await _write(db, batch)
                written += len(batch)
                batch = []
        finally:
            # Counted before the channel closes: closing the last receiver drops its buffer.
            unwritten = len(batch) + records.statistics().current_buffer_used
            if unwritten:
                log.error(
                    "%d usage records were not written before the log writer stopped",
                    unwritten,
                    extra={"unwritten": unwritten, "written": written},
                )
            else:
                log.info("log writer stopped; every record written", extra={"written": written})


async def _write(db: Database, batch: list[RequestRecord]) -> None:
    delay = FIRST_RETRY_DELAY
    while True:
        try:
            await db.insert_records(batch)
            return
        except DatabaseUnavailable as exc:
            log.warning(
                "cannot write %d usage records, retrying in %.1fs: %s", len(batch), delay, exc
            )
        await trio.sleep(delay)
        delay = min(delay * 2, MAX_RETRY_DELAY)
