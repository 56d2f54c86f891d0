"""The task that keeps the remote price table fresh (see `majordomo.pricing`)."""

from __future__ import annotations

import logging

import httpx
import trio

from majordomo.pricing.book import PriceBook
from majordomo.pricing.tables import RemoteTable, describe_changes, parse_remote_table

log = logging.getLogger("majordomo.pricing")

# Tables at least this large are parsed in a worker thread (genai-prices' full data.json takes
# ~100 ms to validate); smaller ones (llm-prices' is ~30 kB) are parsed on the event loop.
PARSE_IN_THREAD_BYTES = 256 * 1024
# A price table larger than this is refused (genai-prices' full data.json is ~1 MB).
MAX_TABLE_BYTES = 64 * 1024 * 1024


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
