"""Waiting for something another task or process does, with a deadline from the work."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio

# Between two looks: short enough not to slow a test, long enough not to spin.
POLL_INTERVAL = 0.02


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    deadline: float,
    what: str,
    every: float = POLL_INTERVAL,
) -> None:
    """Return once `check()` is true; fail naming `what` after `deadline` seconds. `every`
    is the pause between two looks (longer on a virtual clock: each look is a clock jump)."""
    try:
        with trio.fail_after(deadline):
            while True:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await trio.sleep(every)
    except trio.TooSlowError:
        raise AssertionError(f"{what} did not happen within {deadline:g}s") from None
