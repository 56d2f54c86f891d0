"""Summarise a py-spy profile (`py-spy record --format raw`): where the CPU goes.

The raw format is one collapsed stack per line, root first, frames separated by `;`, then a
space and the number of samples: `<module> (majordomo/__main__.py:3);run (trio/_core/_run.py:
2301);... 12`. py-spy leaves idle threads out by default, so samples are CPU-active time.

Two views:

* **self time** by leaf frame, grouped by package (`httpx`, `h11`, `majordomo.proxy`, the
  standard library's `json`...) and by function: where the interpreter actually was;
* **inclusive time** of the gateway's stages: the share of samples whose stack passes
  through a given function (e.g. everything under httpx's `AsyncClient.send`).

Run `python -m benchmarks.profile FILE` to print the summary of a saved profile.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_STDLIB = re.compile(r"/lib/python3\.\d+/(?P<rest>.*)$")

# Stages of a proxied request, as (label, substring of a frame). A sample counts towards a
# stage when any frame of its stack contains the substring; stages may overlap (nesting).
STAGES: list[tuple[str, str]] = [
    ("our ASGI proxy handler (majordomo.proxy, everything under it)", "handle_proxy ("),
    ("httpx AsyncClient.send (request to the upstream)", "send (httpx/_client.py"),
    ("httpx response body iteration (aiter_raw / aiter_bytes)", "aiter_raw (httpx/_models.py"),
    ("httpcore connection pool", "httpcore/_async/connection_pool.py"),
    ("h11 (both sides)", "h11/"),
    ("log writer task (majordomo.logwriter)", "majordomo/logwriter.py"),
    ("asyncpg / trio-asyncio (database writes)", "asyncpg/"),
    ("trio-asyncio loop", "trio_asyncio/"),
    ("provider parsing (majordomo.providers, majordomo.sse)", "majordomo/providers/"),
    ("the tee: decompress, parse, capture (majordomo.proxy.tee)", "majordomo/proxy/tee.py"),
    ("record building (RequestRecord)", "build_record (majordomo/proxy/outcome.py"),
    ("auth (majordomo.auth)", "majordomo/auth.py"),
    ("building the httpx.Request (URL parsing, headers)", "Request.__init__ (httpx/_models.py"),
    ("httpcore pool: expiry checks of idle connections", "_assign_requests_to_connections ("),
    (
        "writing the response: proxy._write and hypercorn/h11 below it",
        "_write (majordomo/proxy/handler.py",
    ),
    ("logging module", " (logging/"),
    ("json (encode/decode)", " (json/"),
]


# Packages that own work (see `Profile.owner_shares`), by their package prefix.
OWNERS = ("h11", "httpcore", "httpx", "hypercorn", "asyncpg", "trio_asyncio", "quart", "majordomo")


# The process's root frames (`majordomo serve` calling trio.run) own nothing.
NOT_OWNERS = ("majordomo.cli", "majordomo.__main__")


def _owner(package: str) -> str | None:
    if package in NOT_OWNERS:
        return None
    for owner in OWNERS:
        if package == owner or package.startswith(owner + "."):
            return package if owner == "majordomo" else owner
    return None


@dataclass(frozen=True)
class Frame:
    function: str
    file: str

    @property
    def package(self) -> str:
        """`httpx`, `majordomo.proxy`, `json`, `trio._core` … (the frame's owner)."""
        path = self.file.replace("\\", "/")
        if "site-packages/" in path:
            rest = path.rsplit("site-packages/", 1)[1]
        elif (match := _STDLIB.search(path)) is not None:
            rest = match.group("rest")
        elif "/src/majordomo/" in path:
            rest = "majordomo/" + path.rsplit("/src/majordomo/", 1)[1]
        else:
            rest = path.lstrip("/")
        parts = rest.split("/")
        if parts[0] == "majordomo" and len(parts) > 1:
            return "majordomo." + parts[1].removesuffix(".py")
        if parts[0] == "trio" and len(parts) > 1 and parts[1].startswith("_core"):
            return "trio._core"
        return parts[0].removesuffix(".py") or "?"

    def short(self) -> str:
        path = self.file
        for marker in ("site-packages/", "/src/"):
            if marker in path:
                path = path.rsplit(marker, 1)[1]
        if (match := _STDLIB.search(path)) is not None:
            path = match.group("rest")
        return f"{self.function} ({path})"


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text.strip())
    if match is None:
        return Frame(text.strip(), "")
    return Frame(match.group("function"), match.group("file"))


@dataclass
class Profile:
    stacks: list[tuple[list[str], int]]

    @classmethod
    def read(cls, path: Path) -> Profile:
        stacks = []
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
        return cls(stacks)

    @property
    def total(self) -> int:
        return sum(count for _, count in self.stacks)

    def self_by_package(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for frames, count in self.stacks:
            counts[parse_frame(frames[-1]).package] += count
        return counts

    def self_by_function(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for frames, count in self.stacks:
            counts[parse_frame(frames[-1]).short()] += count
        return counts

    def inclusive_by_function(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for frames, count in self.stacks:
            for name in {parse_frame(frame).short() for frame in frames}:
                counts[name] += count
        return counts

    def owner_shares(self) -> Counter[str]:
        """Each sample charged to the innermost library that asked for the work.

        Walking from the leaf towards the root, the first frame of an `OWNERS` package takes
        the sample, so trio's socket and scheduling calls count for whoever made them
        (hypercorn, httpcore, our proxy); h11 is split by the side that drives it. Samples with
        no owner are trio's run loop itself (scheduling, epoll).
        """
        counts: Counter[str] = Counter()
        for frames, count in self.stacks:
            packages = [parse_frame(frame).package for frame in reversed(frames)]
            label = "trio run loop (scheduling, epoll, no caller above)"
            for index, package in enumerate(packages):
                owner = _owner(package)
                if owner is None:
                    continue
                label = owner
                if owner == "h11":
                    caller = next(
                        (o for p in packages[index + 1 :] if (o := _owner(p)) not in (None, "h11")),
                        "?",
                    )
                    label = f"h11 (driven by {caller})"
                break
            counts[label] += count
        return counts

    def stage_shares(self) -> list[tuple[str, int]]:
        result = []
        for label, needle in STAGES:
            hits = sum(count for frames, count in self.stacks if any(needle in f for f in frames))
            result.append((label, hits))
        return result


def summarise(path: Path, *, top: int = 25) -> str:
    """A Markdown summary of the profile at `path`."""
    profile = Profile.read(path)
    total = profile.total
    if not total:
        return f"(no samples in {path})\n"

    def pct(count: int) -> str:
        return f"{100 * count / total:5.1f} %"

    lines = [f"{total} CPU samples.", "", "Self time by package:", ""]
    lines += ["| package | share |", "|---|---|"]
    for package, count in profile.self_by_package().most_common(top):
        lines.append(f"| `{package}` | {pct(count)} |")
    lines += ["", "Owner of the work (innermost library up the stack; see owner_shares):", ""]
    lines += ["| owner | share |", "|---|---|"]
    for owner, count in profile.owner_shares().most_common():
        lines.append(f"| {owner} | {pct(count)} |")
    lines += ["", "Inclusive time by stage (stages nest, shares overlap):", ""]
    lines += ["| stage | share |", "|---|---|"]
    for label, count in profile.stage_shares():
        lines.append(f"| {label} | {pct(count)} |")
    lines += ["", "Self time, top functions:", ""]
    lines += ["| function | share |", "|---|---|"]
    for name, count in profile.self_by_function().most_common(top):
        lines.append(f"| `{name}` | {pct(count)} |")
    lines += ["", "Inclusive time, top functions:", ""]
    lines += ["| function | share |", "|---|---|"]
    for name, count in profile.inclusive_by_function().most_common(top + 15):
        lines.append(f"| `{name}` | {pct(count)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.profile FILE`: print the summary of a raw py-spy profile."""
    args = sys.argv[1:] if argv is None else argv
    print(summarise(Path(args[0])))


if __name__ == "__main__":
    main()
