"""The load generator: N keep-alive HTTP/1.1 connections sending one pre-built request in a loop.

Each connection sends the same request bytes, waits for the whole response (framed by
`content-length` or by chunked encoding; nothing else is parsed), and starts over, until the
deadline. The first `--warmup` seconds are not measured (connections, caches and httpx's pool
warm up). A request in flight at the deadline is finished, never cut, so every request sent
gets a response and the gateway logs exactly `sent` rows.

Per request it records the latency (request written → last body byte) and the time to first
byte (request written → first body byte: the first bytes after the head).

Run as `python -m benchmarks.loadgen CONFIG_JSON` (the benchmark does): prints one JSON object,
the `Summary`. Running in its own process keeps its CPU apart from the orchestrator's.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import asdict, dataclass, field

import trio

RECEIVE_SIZE = 64 * 1024
CONNECT_TIMEOUT = 10.0
# A response that takes longer than this is an error: the run stops rather than hangs.
RESPONSE_TIMEOUT = 30.0


@dataclass(frozen=True)
class LoadConfig:
    host: str
    port: int
    request: str  # latin-1 text of the request bytes (JSON-friendly)
    concurrency: int
    duration: float
    warmup: float = 1.0
    # A process whose VmRSS is sampled once a second while measuring (0: none).
    rss_pid: int = 0


@dataclass
class Summary:
    """What one run measured; times in milliseconds."""

    sent: int = 0  # every request written, warm-up included
    ok: int = 0  # 2xx answers, warm-up included
    errors: int = 0
    first_error: str = ""
    measured: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    ttfb_p50: float = 0.0
    ttfb_p99: float = 0.0
    bytes_per_response: int = 0
    # (seconds since measuring began, VmRSS kB) once a second, when rss_pid is set
    rss: list[tuple[float, int]] = field(default_factory=list)
    rss_hwm_kb: int = 0


class ResponseError(Exception):
    pass


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted `values` (0 when empty)."""
    if not values:
        return 0.0
    index = min(len(values) - 1, max(0, round(fraction * len(values) + 0.5) - 1))
    return values[index]


def read_status_kb(pid: int, field_name: str) -> int:
    """A `kB` field (VmRSS, VmHWM) of /proc/PID/status, 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Connection:
    """One keep-alive connection with the minimal response framing the benchmark needs."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(stream)

    async def _fill(self) -> float:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise ResponseError("connection closed by the server")
        self.buffer += data
        return time.perf_counter()

    async def exchange(self, request: bytes) -> tuple[int, float, float, int, bool]:
        """Send `request`, read one response: (status, ttfb, latency, size, keep_alive)."""
        buffer = self.buffer
        started = time.perf_counter()
        await self.stream.send_all(request)
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            await self._fill()
        first_byte = time.perf_counter()
        head = bytes(buffer[:end]).lower()
        status = int(head[9:12])
        del buffer[: end + 4]
        keep_alive = b"\r\nconnection: close" not in head
        size = 0
        if b"\r\ntransfer-encoding: chunked" in head:
            if not buffer:
                first_byte = await self._fill()
            while True:
                while (line_end := buffer.find(b"\r\n")) < 0:
                    await self._fill()
                chunk_size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
                needed = line_end + 2 + chunk_size + 2
                while len(buffer) < needed:
                    await self._fill()
                del buffer[:needed]
                size += chunk_size
                if chunk_size == 0:  # no trailers: the last chunk ends with CRLF CRLF
                    break
        else:
            marker = head.find(b"\r\ncontent-length:")
            length = int(head[marker + 17 : head.index(b"\r\n", marker + 2)]) if marker >= 0 else 0
            if length and not buffer:
                first_byte = await self._fill()
            while len(buffer) < length:
                await self._fill()
            del buffer[:length]
            size = length
        done = time.perf_counter()
        return status, first_byte - started, done - started, size, keep_alive

    async def aclose(self) -> None:
        await self.stream.aclose()


async def run_load(config: LoadConfig) -> Summary:
    request = config.request.encode("latin-1")
    summary = Summary()
    latencies: list[float] = []
    ttfbs: list[float] = []
    sizes: list[int] = []
    now = trio.current_time()
    measure_from = now + config.warmup
    deadline = measure_from + config.duration
    started_wall = time.perf_counter() + config.warmup
    last_done = [started_wall]

    async def client() -> None:
        connection = await Connection.open(config.host, config.port)
        try:
            while trio.current_time() < deadline:
                measuring = trio.current_time() >= measure_from
                summary.sent += 1
                try:
                    with trio.fail_after(RESPONSE_TIMEOUT):
                        status, ttfb, latency, size, keep_alive = await connection.exchange(request)
                except (ResponseError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                    summary.errors += 1
                    summary.first_error = summary.first_error or f"{type(exc).__name__}: {exc}"
                    await connection.aclose()
                    connection = await Connection.open(config.host, config.port)
                    continue
                if 200 <= status < 300:
                    summary.ok += 1
                else:
                    summary.errors += 1
                    summary.first_error = summary.first_error or f"HTTP {status}"
                if measuring:
                    latencies.append(latency)
                    ttfbs.append(ttfb)
                    sizes.append(size)
                    last_done[0] = time.perf_counter()
                if not keep_alive:
                    await connection.aclose()
                    connection = await Connection.open(config.host, config.port)
        finally:
            await connection.aclose()

    async def sample_rss() -> None:
        await trio.sleep_until(measure_from)
        while True:
            summary.rss.append(
                (
                    round(trio.current_time() - measure_from, 1),
                    read_status_kb(config.rss_pid, "VmRSS"),
                )
            )
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        if config.rss_pid:
            nursery.start_soon(sample_rss)
        async with trio.open_nursery() as clients:
            for _ in range(config.concurrency):
                clients.start_soon(client)
        nursery.cancel_scope.cancel()
    if config.rss_pid:
        summary.rss.append(
            (round(trio.current_time() - measure_from, 1), read_status_kb(config.rss_pid, "VmRSS"))
        )
        summary.rss_hwm_kb = read_status_kb(config.rss_pid, "VmHWM")

    latencies.sort()
    ttfbs.sort()
    summary.measured = len(latencies)
    summary.seconds = max(last_done[0] - started_wall, 1e-9)
    summary.rps = summary.measured / summary.seconds
    summary.p50 = percentile(latencies, 0.50) * 1000
    summary.p99 = percentile(latencies, 0.99) * 1000
    summary.ttfb_p50 = percentile(ttfbs, 0.50) * 1000
    summary.ttfb_p99 = percentile(ttfbs, 0.99) * 1000
    summary.bytes_per_response = sizes[len(sizes) // 2] if sizes else 0
    return summary


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.loadgen CONFIG_JSON`: run the load, print the summary as JSON."""
    args = sys.argv[1:] if argv is None else argv
    config = LoadConfig(**json.loads(args[0]))
    summary = trio.run(run_load, config)
    print(json.dumps(asdict(summary)), flush=True)


if __name__ == "__main__":
    main()
