"""`just bench`: throughput, latency and memory of the gateway against a fast local upstream.

Theory of operation
-------------------
Three kinds of process share the machine, all on loopback:

    loadgen (one process per run) ──▶ majordomo serve (one worker, logging on) ──▶ upstream
        └──────────────── direct runs skip the gateway ─────────────────────────────▲
                                        └─ embedded PostgreSQL (its own processes)

1. Start `benchmarks.upstream` (canned OpenAI answers, raw trio sockets) and
   `majordomo serve` in a fresh temporary directory (so it starts its own embedded
   PostgreSQL there), then create a key with `majordomo keys create`.
2. For each of {non-stream, stream} and {16 connections, 1} run the load generator
   (`benchmarks.loadgen`, its own process) directly against the upstream, then through the
   gateway, each for `--duration` seconds after a one-second warm-up.
3. Soak: `--soak` seconds through the gateway at 16 connections, sampling the gateway's
   VmRSS once a second; its VmHWM is the peak over the whole benchmark.
4. Optionally (`--profile FILE`) sample the gateway with py-spy under the 16-connection
   non-stream load and summarise where its CPU goes (`benchmarks.profile`).
5. Check that `llm_requests` holds one row per request sent through the gateway, stop the
   gateway (SIGTERM: it drains its log queue) and the upstream, and report.

Every run has a deadline; every child process is stopped (SIGTERM, then SIGKILL after a grace
period) and the temporary directory removed, on success, error or Ctrl-C alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import trio

from benchmarks import profile as profiling
from benchmarks.loadgen import LoadConfig, Summary, read_status_kb

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks.md"
# The generated part of the results document lies between these markers; the rest of the
# document (the analysis) is kept when the benchmark rewrites it.
BEGIN_MARK = "<!-- bench:results:begin -->"
END_MARK = "<!-- bench:results:end -->"

# Startup of a child (the embedded PostgreSQL included) and its graceful stop.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 45.0
# Rows reach llm_requests shortly after each response: wait at most this long for the count.
ROWS_TIMEOUT = 30.0
# A load run's own deadline on top of its duration (warm-up, start-up, the last responses).
RUN_SLACK = 60.0

TARGET_RPS = 500.0
TARGET_ADDED_P50_MS = 1.5
TARGET_ADDED_TTFB_MS = 2.0
TARGET_PEAK_RSS_MB = 120.0
# "Flat": RSS at the end of the soak exceeds RSS ten seconds into it by at most this much.
FLAT_RSS_GROWTH_MB = 5.0
FLAT_FROM_SECOND = 10.0
# Processes outside the benchmark using more of the machine than this disturb a run: wait for
# them (`--quiet-wait`) and flag the run in the report.
QUIET_PERCENT = 10.0

# The upstreams to choose from: both print their base URL on stdout.
UPSTREAMS = {"fast": "benchmarks.upstream", "fake": "tests.fakeupstream"}

MODEL = "gpt-4o-mini"
# A chat request as the openai Python SDK sends it (same headers, compact JSON body).
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France, and what is it known for?"},
]
SDK_HEADERS = [
    ("Accept", "application/json"),
    ("Accept-Encoding", "gzip, deflate"),
    ("Connection", "keep-alive"),
    ("Content-Type", "application/json"),
    ("User-Agent", "OpenAI/Python 1.109.1"),
    ("X-Stainless-Arch", "x64"),
    ("X-Stainless-Async", "false"),
    ("X-Stainless-Lang", "python"),
    ("X-Stainless-OS", "Linux"),
    ("X-Stainless-Package-Version", "1.109.1"),
    ("X-Stainless-Retry-Count", "0"),
    ("X-Stainless-Read-Timeout", "600"),
    ("X-Stainless-Runtime", "CPython"),
    ("X-Stainless-Runtime-Version", platform.python_version()),
    ("Authorization", "Bearer sk-bench"),
]


@dataclass(frozen=True)
class Scenario:
    target: str  # "direct" or "gateway"
    stream: bool
    concurrency: int

    @property
    def mode(self) -> str:
        return "stream" if self.stream else "non-stream"

    def __str__(self) -> str:
        return f"{self.target:7} {self.mode:10} c={self.concurrency}"


SCENARIOS = [
    Scenario(target, stream, concurrency)
    for stream in (False, True)
    for concurrency in (16, 1)
    for target in ("direct", "gateway")
]


def build_request(port: int, *, stream: bool, key: str | None) -> bytes:
    payload: dict[str, Any] = {"messages": MESSAGES, "model": MODEL}
    if stream:
        payload["stream"] = True
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [("Host", f"127.0.0.1:{port}"), *SDK_HEADERS, ("Content-Length", str(len(body)))]
    if key is not None:
        headers.append(("X-Majordomo-Key", key))
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment minus any MAJORDOMO_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAJORDOMO_")}
    return env | extra


# ------------------------------------------------------------------------------- processes


async def stop_process(process: trio.Process, *, grace: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM `process`, wait up to `grace` seconds, then SIGKILL it. Shielded."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace):
                await process.wait()
            if process.returncode is None:
                with suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
    return process.returncode


@dataclass
class Child:
    """A long-lived child process whose stdout and stderr lines are collected."""

    name: str
    process: trio.Process
    lines: list[str] = field(default_factory=list)
    listening: trio.Event = field(default_factory=trio.Event)
    url: str = ""

    async def read(self, pipe: trio.abc.ReceiveStream, *, url_from: str) -> None:
        """Collect lines; `url_from` says how the URL shows: "json" log, "line", or ""."""
        buffer = b""
        async for chunk in pipe:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if url_from == "json":
                    with suppress(ValueError, AttributeError):
                        message = str(json.loads(line).get("msg", ""))
                        if message.startswith("listening on "):
                            self.url = message.removeprefix("listening on ").split(",")[0]
                            self.listening.set()
                elif url_from == "line" and not self.url:
                    self.url = line.strip()
                    self.listening.set()
        if url_from:
            self.listening.set()  # it exited: let the waiter look

    def log_entries(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.lines:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"level": "raw", "msg": line}
            entries.append(entry if isinstance(entry, dict) else {"level": "raw", "msg": line})
        return entries


@asynccontextmanager
async def spawned(
    nursery: trio.Nursery,
    name: str,
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    url_on_stderr: bool,
) -> AsyncIterator[Child]:
    """Run a child until the block ends; yield it once it said where it listens.

    The gateway logs JSON on stderr ("listening on URL"); the upstream prints its URL on stdout.
    """
    process = await trio.lowlevel.open_process(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child = Child(name, process)
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        nursery.start_soon(
            partial(child.read, process.stderr, url_from="json" if url_on_stderr else "")
        )
        nursery.start_soon(
            partial(child.read, process.stdout, url_from="" if url_on_stderr else "line")
        )
        with trio.fail_after(START_TIMEOUT):
            await child.listening.wait()
        if not child.url.startswith("http://"):
            await stop_process(process, grace=5)
            tail = "\n".join(child.lines[-20:])
            raise RuntimeError(f"{name} did not start (exit {process.returncode}):\n{tail}")
        yield child
    finally:
        await stop_process(process)


# `--limits`: limits on the bench key far above what a run reaches, so that every request goes
# through the lease machinery and none is refused.
BENCH_LIMITS = ("--rpm", "10000000", "--tpm", "2000000000", "--budget", "1000000/day")


async def set_bench_limits(cwd: Path, env: dict[str, str], key_id: str) -> None:
    with trio.fail_after(START_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "majordomo", "keys", "update", key_id, *BENCH_LIMITS],
            env=env,
            cwd=cwd,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"keys update failed: {result.stderr.decode(errors='replace')}")


def lease_counters(url: str) -> str:
    """What the gateway's /metrics says about its leases, for the results."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("majordomo_limit_") and "{" not in name and value:
            values[name] = float(value)
    taken = values.get("majordomo_limit_leases_taken_total", 0)
    count = values.get("majordomo_limit_lease_seconds_count", 0)
    mean = values.get("majordomo_limit_lease_seconds_sum", 0) / count * 1000 if count else 0
    return (
        f"{taken:.0f} leases taken ({mean:.2f} ms per round trip), "
        f"{values.get('majordomo_limit_leases_returned_total', 0):.0f} returned"
    )


async def create_key(cwd: Path, env: dict[str, str]) -> tuple[str, str]:
    with trio.fail_after(START_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "majordomo", "keys", "create", "--name", "bench", "--json"],
            env=env,
            cwd=cwd,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"keys create failed: {result.stderr.decode(errors='replace')}")
    created = json.loads(result.stdout)
    return str(created["key"]), str(created["id"])


async def run_load(config: LoadConfig) -> Summary:
    """Run the load generator in its own process and return its summary."""
    with trio.fail_after(config.warmup + config.duration + RUN_SLACK):
        result = await trio.run_process(
            [sys.executable, "-m", "benchmarks.loadgen", json.dumps(asdict(config))],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed: {result.stderr.decode(errors='replace')}")
    summary = Summary(**json.loads(result.stdout))
    summary.rss = [tuple(sample) for sample in summary.rss]  # type: ignore[misc]
    return summary


# ------------------------------------------------------------------------------- the database


@dataclass(frozen=True)
class RowCounts:
    total: int
    by_status: dict[int, int]
    with_tokens: int  # rows with input_tokens set: usage was extracted
    with_cost: int  # rows with total_cost set: the model was priced


def _query_rows(pgdata: Path) -> RowCounts:
    import asyncpg  # only here: asyncio stays out of the trio side

    async def query() -> RowCounts:
        connection = await asyncpg.connect(
            host=str(pgdata), port=5432, user="postgres", database="majordomo"
        )
        try:
            rows = await connection.fetch(
                "SELECT status_code, count(*) AS n, count(input_tokens) AS tokens,"
                " count(total_cost) AS cost FROM llm_requests GROUP BY status_code"
            )
        finally:
            await connection.close()
        return RowCounts(
            total=sum(r["n"] for r in rows),
            by_status={r["status_code"]: r["n"] for r in rows},
            with_tokens=sum(r["tokens"] for r in rows),
            with_cost=sum(r["cost"] for r in rows),
        )

    return asyncio.run(query())


async def count_rows(pgdata: Path, expected: int) -> RowCounts:
    """The rows in llm_requests once they reach `expected` or stop growing for 3 s."""
    counts = await trio.to_thread.run_sync(_query_rows, pgdata)
    unchanged_since = trio.current_time()
    with trio.move_on_after(ROWS_TIMEOUT):
        while counts.total < expected and trio.current_time() - unchanged_since < 3:
            await trio.sleep(0.5)
            latest = await trio.to_thread.run_sync(_query_rows, pgdata)
            if latest.total != counts.total:
                unchanged_since = trio.current_time()
            counts = latest
    return counts


def stop_leftover_postgres(pgdata: Path) -> None:
    """Stop the embedded PostgreSQL if the gateway died without stopping it."""
    pid_file = pgdata / "postmaster.pid"
    with suppress(OSError, ValueError, IndexError, ProcessLookupError):
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)  # raises ProcessLookupError once it is gone
            time.sleep(0.1)


# ------------------------------------------------------------------------------- CPU time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` in seconds (0 when it is gone)."""
    with suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return 0.0


def children_of(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, ValueError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    pids.append(int(entry.name))
    return pids


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    machine: float
    gateway: float
    ours: float  # gateway, upstream, PostgreSQL, this process and its finished children


@dataclass(frozen=True)
class CpuUse:
    """CPU used during one run: the gateway's, and everybody else's outside the benchmark."""

    wall: float
    gateway_seconds: float
    foreign_percent: float  # of the whole machine: other processes (e.g. a test run)

    @property
    def gateway_percent(self) -> float:
        """Of one core."""
        return 100 * self.gateway_seconds / self.wall

    def per_request_ms(self, requests: int) -> float:
        return 1000 * self.gateway_seconds / max(requests, 1)


class CpuMeter:
    def __init__(self, gateway: int, upstream: int, pgdata: Path) -> None:
        self.gateway, self.upstream, self.pgdata = gateway, upstream, pgdata

    def snapshot(self) -> CpuSnapshot:
        postgres: list[int] = []
        with suppress(OSError, ValueError, IndexError):
            postmaster = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            postgres = [postmaster, *children_of(postmaster)]
        mine = os.times()
        gateway = process_cpu_seconds(self.gateway)
        ours = (
            gateway
            + process_cpu_seconds(self.upstream)
            + sum(process_cpu_seconds(pid) for pid in postgres)
            + mine.user
            + mine.system
            + mine.children_user
            + mine.children_system
        )
        return CpuSnapshot(time.monotonic(), machine_busy_seconds(), gateway, ours)

    @staticmethod
    def use(before: CpuSnapshot, after: CpuSnapshot) -> CpuUse:
        wall = max(after.wall - before.wall, 1e-9)
        foreign = (after.machine - before.machine) - (after.ours - before.ours)
        return CpuUse(
            wall=wall,
            gateway_seconds=after.gateway - before.gateway,
            foreign_percent=max(0.0, 100 * foreign / wall / (os.cpu_count() or 1)),
        )


async def wait_for_quiet(meter: CpuMeter, max_wait: float) -> None:
    """Wait (at most `max_wait` s) until processes outside the benchmark use < QUIET_PERCENT."""
    waited = 0.0
    while waited < max_wait:
        before = meter.snapshot()
        await trio.sleep(1.0)
        waited += 1.0
        foreign = meter.use(before, meter.snapshot()).foreign_percent
        if foreign < QUIET_PERCENT:
            return
        if waited == 1.0:
            print(f"  waiting for the machine to quieten ({foreign:.0f} % busy) ...", flush=True)
    if max_wait > 0:
        print(f"  still busy after {max_wait:g} s; measuring anyway", flush=True)


# ------------------------------------------------------------------------------- profiling


def find_py_spy() -> str:
    found = shutil.which("py-spy")
    if found is None:
        raise SystemExit(
            "--profile needs py-spy: run `uv run --with py-spy python -m benchmarks.bench "
            "--profile FILE`"
        )
    return found


async def profile_gateway(
    gateway_pid: int, config: LoadConfig, output: Path, seconds: float
) -> tuple[Summary, str]:
    """Sample the gateway with py-spy for `seconds` under `config`'s load."""
    py_spy = find_py_spy()
    summaries: list[Summary] = []

    async def load() -> None:
        summaries.append(await run_load(config))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load)
        await trio.sleep(config.warmup + 0.5)
        with trio.fail_after(seconds + RUN_SLACK):
            result = await trio.run_process(
                [
                    py_spy,
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "100",
                    "--duration",
                    str(round(seconds)),
                    "--pid",
                    str(gateway_pid),
                    "--output",
                    str(output),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    if result.returncode != 0:
        raise RuntimeError(f"py-spy failed: {result.stderr.decode(errors='replace')}")
    return summaries[0], profiling.summarise(output)


# ------------------------------------------------------------------------------- reporting


def machine_description() -> dict[str, str]:
    cpu = "unknown"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = read_meminfo_mb("MemTotal")
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("trio", "hypercorn", "h11", "httpx", "httpcore", "asyncpg", "trio-asyncio")
    )
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} (nproc {len(os.sched_getaffinity(0))})",
        "cpu": cpu,
        "memory": f"{memory / 1024:.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": versions,
    }


def describe_code(gateway_src: Path | None) -> str:
    """Which gateway code ran: a given source directory, or this checkout's commit."""
    if gateway_src is not None:
        return f"`{gateway_src}` (given with --gateway-src)"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # --no-optional-locks: only read, never refresh the index of a shared checkout.
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "this checkout (not a git repository)"
    return f"this checkout at {commit}" + (" with uncommitted changes under src/" if dirty else "")


def read_meminfo_mb(name: str) -> float:
    with suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Results:
    args: argparse.Namespace
    machine: dict[str, str]
    runs: dict[Scenario, Summary] = field(default_factory=dict)
    cpu: dict[Scenario | str, CpuUse] = field(default_factory=dict)
    soak: Summary | None = None
    profile_run: Summary | None = None
    profile_summary: str = ""
    peak_rss_kb: int = 0
    start_rss_kb: int = 0
    rows: RowCounts | None = None
    sent_via_gateway: int = 0
    gateway_warnings: list[str] = field(default_factory=list)
    gateway_exit: int | None = None
    writer_report: str = ""
    leases: str = ""  # with --limits: the gateway's lease counters at the end

    def pair(self, stream: bool, concurrency: int) -> tuple[Summary, Summary]:
        return (
            self.runs[Scenario("direct", stream, concurrency)],
            self.runs[Scenario("gateway", stream, concurrency)],
        )


def _ms(value: float) -> str:
    return f"{value:.2f}"


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def rss_flat(soak: Summary | None) -> tuple[bool | None, str]:
    if soak is None or len(soak.rss) < 3:
        return None, "no soak run"
    samples = [kb for second, kb in soak.rss if second >= FLAT_FROM_SECOND] or [soak.rss[-1][1]]
    growth = (soak.rss[-1][1] - samples[0]) / 1024
    spread = (max(kb for _, kb in soak.rss) - min(kb for _, kb in soak.rss)) / 1024
    return (
        growth <= FLAT_RSS_GROWTH_MB,
        f"{growth:+.1f} MB from {FLAT_FROM_SECOND:g} s to the end (min to max spread {spread:.1f} MB)",
    )


def targets(results: Results) -> list[tuple[str, str, str]]:
    gateway16 = results.pair(False, 16)[1]
    direct1, gateway1 = results.pair(False, 1)
    sdirect1, sgateway1 = results.pair(True, 1)
    added_p50 = gateway1.p50 - direct1.p50
    added_ttfb = sgateway1.ttfb_p50 - sdirect1.ttfb_p50
    peak_mb = results.peak_rss_kb / 1024
    flat, flat_text = rss_flat(results.soak)
    return [
        (
            f"≥ {TARGET_RPS:g} proxied non-stream req/s at 16 connections",
            f"{gateway16.rps:.0f} req/s",
            _verdict(gateway16.rps >= TARGET_RPS),
        ),
        (
            f"added p50 ≤ {TARGET_ADDED_P50_MS:g} ms at concurrency 1 (non-stream)",
            f"{added_p50:.2f} ms",
            _verdict(added_p50 <= TARGET_ADDED_P50_MS),
        ),
        (
            f"stream adds ≤ {TARGET_ADDED_TTFB_MS:g} ms to TTFB p50 at concurrency 1",
            f"{added_ttfb:.2f} ms",
            _verdict(added_ttfb <= TARGET_ADDED_TTFB_MS),
        ),
        (
            f"peak RSS ≤ {TARGET_PEAK_RSS_MB:g} MB",
            f"{peak_mb:.1f} MB",
            _verdict(peak_mb <= TARGET_PEAK_RSS_MB),
        ),
        (
            f"RSS flat across the {results.args.soak:g} s soak (growth ≤ {FLAT_RSS_GROWTH_MB:g} MB)",
            flat_text,
            _verdict(flat),
        ),
    ]


def render(results: Results) -> str:
    args = results.args
    out = [f"Run: `{' '.join(['just bench', *args.argv])}` on {results.machine['date']}.", ""]
    out += ["| machine | |", "|---|---|"]
    out += [f"| {name} | {value} |" for name, value in results.machine.items() if name != "date"]
    out += [
        "",
        f"Upstream: `{UPSTREAMS[args.upstream]}`. Each run: {args.duration:g} s measured after "
        "a 1 s warm-up; times in ms.",
        "",
    ]

    out += [
        "**Non-stream** (`POST /v1/chat/completions`, "
        f"{results.pair(False, 1)[0].bytes_per_response} B JSON answer)",
        "",
    ]
    out += [
        "| conns | req/s direct | req/s gateway | gateway/direct | p50 direct | p50 gateway "
        "| added p50 | p99 direct | p99 gateway | added p99 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for concurrency in (16, 1):
        d, g = results.pair(False, concurrency)
        out.append(
            f"| {concurrency} | {d.rps:.0f} | {g.rps:.0f} | {g.rps / d.rps:.2f} | {_ms(d.p50)} | "
            f"{_ms(g.p50)} | {_ms(g.p50 - d.p50)} | {_ms(d.p99)} | {_ms(g.p99)} | {_ms(g.p99 - d.p99)} |"
        )
    out += [
        "",
        '**Stream** (`"stream": true`, '
        f"{results.pair(True, 1)[0].bytes_per_response} B of SSE in 8 events; "
        "TTFB = first body byte, total = last byte)",
        "",
    ]
    out += [
        "| conns | req/s direct | req/s gateway | gateway/direct | TTFB p50 direct | TTFB p50 gateway "
        "| added TTFB p50 | TTFB p99 direct | TTFB p99 gateway | total p50 direct | total p50 gateway "
        "| added total p50 | total p99 direct | total p99 gateway |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for concurrency in (16, 1):
        d, g = results.pair(True, concurrency)
        out.append(
            f"| {concurrency} | {d.rps:.0f} | {g.rps:.0f} | {g.rps / d.rps:.2f} | {_ms(d.ttfb_p50)} | "
            f"{_ms(g.ttfb_p50)} | {_ms(g.ttfb_p50 - d.ttfb_p50)} | {_ms(d.ttfb_p99)} | {_ms(g.ttfb_p99)} | "
            f"{_ms(d.p50)} | {_ms(g.p50)} | {_ms(g.p50 - d.p50)} | {_ms(d.p99)} | {_ms(g.p99)} |"
        )
    errors = {str(s): (r.errors, r.first_error) for s, r in results.runs.items() if r.errors}
    out += ["", f"Errors: {errors or 'none'}.", ""]
    out += [
        "**CPU** during each run (warm-up and load-generator start-up included): the gateway's "
        "use of one core, its CPU time per request, and the load of processes outside the "
        "benchmark (anything above a few % disturbs the numbers).",
        "",
        "| run | gateway CPU | gateway CPU per request | other load on the machine |",
        "|---|---|---|---|",
    ]
    for key, use in results.cpu.items():
        run = results.soak if key == "soak" else results.runs.get(key)  # type: ignore[arg-type]
        if run is not None:
            label = "soak (gateway non-stream c=16)" if key == "soak" else str(key)
            out.append(
                f"| {label} | {use.gateway_percent:.0f} % | {use.per_request_ms(run.sent):.2f} ms "
                f"| {use.foreign_percent:.0f} % |"
            )
    disturbed = [str(k) for k, use in results.cpu.items() if use.foreign_percent >= QUIET_PERCENT]
    if disturbed:
        out.append(
            f"\n**Disturbed:** processes outside the benchmark used ≥ {QUIET_PERCENT:g} % of the "
            f"machine during: {', '.join(disturbed)}. Their numbers understate the gateway; "
            "rerun on a quiet machine."
        )
    out.append("")

    out += ["**Memory and logging**", "", "| | |", "|---|---|"]
    out.append(
        f"| gateway RSS after start-up (key created, before load) | {results.start_rss_kb / 1024:.1f} MB |"
    )
    if results.soak is not None:
        soak = results.soak
        out.append(
            f"| soak: {args.soak:g} s via the gateway, non-stream, 16 conns | {soak.rps:.0f} req/s, p50 {_ms(soak.p50)}, p99 {_ms(soak.p99)}, {soak.errors} errors |"
        )
        out.append(f"| RSS at the start of the soak | {soak.rss[0][1] / 1024:.1f} MB |")
        out.append(f"| RSS at the end of the soak | {soak.rss[-1][1] / 1024:.1f} MB |")
        series = " ".join(f"{kb / 1024:.1f}" for _, kb in soak.rss[:: max(1, len(soak.rss) // 12)])
        out.append(f"| RSS samples through the soak (MB) | {series} |")
    out.append(f"| peak RSS of the gateway process (VmHWM) | {results.peak_rss_kb / 1024:.1f} MB |")
    if results.rows is not None:
        rows = results.rows
        match = "match" if rows.total == results.sent_via_gateway else "**MISMATCH**"
        out.append(f"| requests sent through the gateway | {results.sent_via_gateway} |")
        if results.leases:
            out.append(f"| limits on the bench key (`--limits`) | {results.leases} |")
        out.append(
            f"| rows in `llm_requests` | {rows.total} ({match}); by status {rows.by_status}; with tokens {rows.with_tokens}, priced {rows.with_cost} |"
        )
    out.append(
        f"| gateway exit | {results.gateway_exit}; {results.writer_report or 'no log-writer report'} |"
    )
    warnings = results.gateway_warnings
    out.append(
        f"| warnings/errors in the gateway log | {len(warnings)}{': ' + '; '.join(warnings[:5]) if warnings else ''} |"
    )

    out += [
        "",
        "**Targets** (2-core machine, one worker, logging on)",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    out += [
        f"| {target} | {measured} | {verdict} |" for target, measured, verdict in targets(results)
    ]
    if results.profile_summary:
        run = results.profile_run
        assert run is not None
        out += [
            "",
            f"**Profile** (py-spy, 100 Hz, {args.profile_seconds:g} s, gateway under 16-connection non-stream load: "
            f"{run.rps:.0f} req/s while sampled)",
            "",
            results.profile_summary,
        ]
    return "\n".join(out) + "\n"


DOC_HEAD = f"""# Benchmarks

`just bench` measures the gateway against a fast local upstream; see `benchmarks/bench.py`.
The section between the markers below is rewritten by each run.

{BEGIN_MARK}
{END_MARK}
"""


def write_document(path: Path, generated: str) -> None:
    text = path.read_text() if path.exists() else DOC_HEAD
    if BEGIN_MARK not in text or END_MARK not in text:
        text = text.rstrip("\n") + "\n\n" + BEGIN_MARK + "\n" + END_MARK + "\n"
    before, rest = text.split(BEGIN_MARK, 1)
    _, after = rest.split(END_MARK, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{before}{BEGIN_MARK}\n{generated}{END_MARK}{after}")


# ------------------------------------------------------------------------------- the run


async def benchmark(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results(args, machine_description())
    results.machine["gateway code"] = describe_code(args.gateway_src)
    env = child_env({})

    async def stop_on_sigterm() -> None:
        # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C: every child is stopped.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    # The gateway's own children (keys create) see the same code through PYTHONPATH.
    code = {"PYTHONPATH": str(args.gateway_src.resolve())} if args.gateway_src else {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_sigterm)
        upstream_cm = spawned(
            nursery,
            "upstream",
            [sys.executable, "-m", UPSTREAMS[args.upstream], "--port", "0"],
            env=env,
            cwd=ROOT,
            url_on_stderr=False,
        )
        async with upstream_cm as upstream:
            upstream_port = int(upstream.url.rpartition(":")[2])
            gateway_env = child_env(
                {
                    "MAJORDOMO_SERVER_HOST": "127.0.0.1",
                    "MAJORDOMO_SERVER_PORT": "0",
                    "MAJORDOMO_LOGGING_FORMAT": "json",
                    "MAJORDOMO_PROVIDERS_OPENAI_BASE_URL": upstream.url,
                    # Loopback only: prices come from the bundled table, never fetched.
                    "MAJORDOMO_PRICING_REMOTE_URL": "",
                    **code,
                }
            )
            gateway_cm = spawned(
                nursery,
                "gateway",
                [sys.executable, "-m", "majordomo", "serve"],
                env=gateway_env,
                cwd=workdir,
                url_on_stderr=True,
            )
            async with gateway_cm as gateway:
                gateway_port = int(gateway.url.rpartition(":")[2])
                key, key_id = await create_key(workdir, gateway_env)
                if args.limits:
                    await set_bench_limits(workdir, gateway_env, key_id)
                pid = gateway.process.pid
                results.start_rss_kb = read_status_kb(pid, "VmRSS")
                print(
                    f"upstream {upstream.url}, gateway {gateway.url} (pid {pid}), "
                    f"{results.start_rss_kb / 1024:.1f} MB RSS",
                    flush=True,
                )

                def config(scenario: Scenario, **extra: Any) -> LoadConfig:
                    via = scenario.target == "gateway"
                    port = gateway_port if via else upstream_port
                    request = build_request(port, stream=scenario.stream, key=key if via else None)
                    return LoadConfig(
                        host="127.0.0.1",
                        port=port,
                        request=request.decode("latin-1"),
                        concurrency=scenario.concurrency,
                        duration=args.duration,
                        **extra,
                    )

                meter = CpuMeter(pid, upstream.process.pid, workdir / ".majordomo" / "pgdata")

                async def measured(key: Scenario | str, load: LoadConfig) -> Summary:
                    await wait_for_quiet(meter, args.quiet_wait)
                    before = meter.snapshot()
                    summary = await run_load(load)
                    results.cpu[key] = meter.use(before, meter.snapshot())
                    return summary

                for scenario in SCENARIOS:
                    summary = await measured(scenario, config(scenario))
                    results.runs[scenario] = summary
                    if scenario.target == "gateway":
                        results.sent_via_gateway += summary.sent
                    extra = f", TTFB p50 {summary.ttfb_p50:.2f} ms" if scenario.stream else ""
                    cpu = results.cpu[scenario]
                    print(
                        f"{scenario}: {summary.rps:8.0f} req/s, p50 {summary.p50:.2f} ms, "
                        f"p99 {summary.p99:.2f} ms{extra}, {summary.errors} errors; gateway CPU "
                        f"{cpu.gateway_percent:.0f} %, other load {cpu.foreign_percent:.0f} %",
                        flush=True,
                    )

                if args.soak > 0:
                    soak = Scenario("gateway", False, 16)
                    print(f"soak: {args.soak:g} s via the gateway ...", flush=True)
                    results.soak = await measured(
                        "soak", dataclasses_replace(config(soak), duration=args.soak, rss_pid=pid)
                    )
                    results.sent_via_gateway += results.soak.sent
                    flat = rss_flat(results.soak)[1]
                    print(f"soak: {results.soak.rps:.0f} req/s, RSS {flat}", flush=True)

                if args.profile is not None:
                    print(f"profiling the gateway for {args.profile_seconds:g} s ...", flush=True)
                    run_config = dataclasses_replace(
                        config(Scenario("gateway", False, 16)), duration=args.profile_seconds + 3
                    )
                    await wait_for_quiet(meter, args.quiet_wait)
                    results.profile_run, results.profile_summary = await profile_gateway(
                        pid, run_config, args.profile, args.profile_seconds
                    )
                    results.sent_via_gateway += results.profile_run.sent
                    print(results.profile_summary, flush=True)

                if args.limits:
                    results.leases = await trio.to_thread.run_sync(lease_counters, gateway.url)
                    print(f"limits: {results.leases}", flush=True)

                results.peak_rss_kb = read_status_kb(pid, "VmHWM")
                results.rows = await count_rows(
                    workdir / ".majordomo" / "pgdata", results.sent_via_gateway
                )
                results.gateway_exit = await stop_process(gateway.process)
            # The gateway's log is complete once it exited.
            for entry in gateway.log_entries():
                level = str(entry.get("level", ""))
                message = str(entry.get("msg", ""))
                if level in ("warning", "error", "critical", "raw") and message.strip():
                    results.gateway_warnings.append(f"{level}: {message[:200]}")
                if message.startswith("log writer stopped") or "were not written" in message:
                    results.writer_report = message
        nursery.cancel_scope.cancel()
    return results


def dataclasses_replace(config: LoadConfig, **changes: Any) -> LoadConfig:
    return LoadConfig(**(asdict(config) | changes))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="just bench", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--soak", type=float, default=60.0, help="soak seconds, 0 for none (60)")
    parser.add_argument(
        "--upstream",
        choices=sorted(UPSTREAMS),
        default="fast",
        help="fast: benchmarks.upstream (canned bytes); fake: tests.fakeupstream (hypercorn)",
    )
    parser.add_argument(
        "--gateway-src",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the gateway from DIR/majordomo (e.g. `git archive HEAD src` extracted) "
        "instead of this checkout",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        metavar="S",
        help=f"before each run wait up to S s for other processes to use < {QUIET_PERCENT:g} %% "
        "of the machine (120; 0: do not wait)",
    )
    parser.add_argument("--quick", action="store_true", help="2 s runs, no soak: a smoke check")
    parser.add_argument(
        "--limits",
        action="store_true",
        help="give the bench key rpm, tpm and budget limits it never reaches (docs/limits.md)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results document")
    parser.add_argument("--no-write", action="store_true", help="print only, write no document")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="also sample the gateway with py-spy (raw collapsed stacks to FILE)",
    )
    parser.add_argument("--profile-seconds", type=float, default=15.0, help="(15)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.duration, args.soak = 2.0, 0.0
    return args


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.bench [--duration S] [--soak S] [--quick] [--profile FILE]`."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.profile is not None:
        find_py_spy()
    # Short: PostgreSQL's unix socket lives under it (socket paths are limited to ~100 bytes).
    workdir = Path(tempfile.mkdtemp(prefix="mdmb-", dir="/tmp"))
    # A background job of a non-interactive shell starts with SIGINT ignored: take it back,
    # so that Ctrl-C (or kill -INT) always unwinds through the clean-up below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        results = trio.run(benchmark, args, workdir)
    finally:
        stop_leftover_postgres(workdir / ".majordomo" / "pgdata")
        shutil.rmtree(workdir, ignore_errors=True)
    generated = render(results)
    print()
    print(generated)
    if not args.no_write:
        write_document(args.output, generated)
        print(f"written to {args.output}")


if __name__ == "__main__":
    main()
