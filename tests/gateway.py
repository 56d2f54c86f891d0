"""`majordomo serve` as a child process: start it, find where it listens, stop it by signal."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from tests.cli import child_env


class GatewayProcess:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log: list[dict[str, Any]] = []
        self.url = ""
        self._listening = trio.Event()

    async def _read_log(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:
                    entry = {"msg": line.decode(errors="replace"), "level": "raw"}
                self.log.append(entry)
                if entry.get("msg", "").startswith("listening on "):
                    self.url = entry["msg"].removeprefix("listening on ").split(",")[0]
                    self._listening.set()
        self._listening.set()  # exited before listening: let the waiter see it

    async def terminate(self, deadline: float = 60) -> int:
        """Send SIGTERM and wait for the exit status."""
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(deadline):
            return await self.process.wait()

    def messages(self) -> list[str]:
        return [str(e.get("msg", "")) for e in self.log]


async def start_gateway(
    nursery: trio.Nursery, *, env: dict[str, str], cwd: Path, deadline: float = 60
) -> GatewayProcess:
    """Start `majordomo serve` on a free loopback port and wait until it listens."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "majordomo", "serve"],
        env=child_env(
            {
                "MAJORDOMO_SERVER_HOST": "127.0.0.1",
                "MAJORDOMO_SERVER_PORT": "0",
                "MAJORDOMO_LOGGING_FORMAT": "json",
                # Tests never reach the internet: prices come from the bundled table.
                "MAJORDOMO_PRICING_REMOTE_URL": "",
                **env,
            }
        ),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    gateway = GatewayProcess(process)
    nursery.start_soon(gateway._read_log)
    with trio.fail_after(deadline):
        await gateway._listening.wait()
    if not gateway.url:
        await process.wait()
        raise AssertionError(f"serve exited with {process.returncode}: {gateway.messages()}")
    return gateway
