"""Waiting for something another task or process does, with a deadline from the work."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio

# Between two looks: short enough not to slow a test, long enough not to spin.
POLL_INTERVAL = 0.02


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]], *, deadline: float, what: str
) -> None:
    """Return once `check()` is true; fail naming `what` after `deadline` seconds."""
    try:
        with trio.fail_after(deadline):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await trio.sleep(POLL_INTERVAL)
    except trio.TooSlowError:
        raise AssertionError(f"{what} did not happen within {deadline:g}s") from None
