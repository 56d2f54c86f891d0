"""Fenced blocks of a Markdown document, with their info strings (`python title=NAME`), for
the tests that run the docs' examples (`test_docs.py`, `test_docs_credentials.py`)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass

RUNNABLE_LANGUAGES = {"bash", "python", "sql"}


@dataclass(frozen=True)
class Block:
    language: str
    options: dict[str, str]
    flags: frozenset[str]
    code: str
    line: int  # of the opening fence, 1-based

    @property
    def title(self) -> str | None:
        return self.options.get("title")

    @property
    def runs(self) -> bool:
        return (
            self.language in RUNNABLE_LANGUAGES
            and self.title is not None
            and "no-run" not in self.flags
        )

    @property
    def missing_module(self) -> str | None:
        module = self.options.get("requires")
        if module is not None and importlib.util.find_spec(module) is None:
            return module
        return None

    def __str__(self) -> str:
        return f"{self.title or self.language} (line {self.line})"


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block (```` ``` ```` at the start of a line) with its info string."""
    blocks: list[Block] = []
    opening: tuple[str, int] | None = None
    body: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.startswith("```"):
            if opening is not None:
                body.append(line)
            continue
        if opening is None:
            opening, body = (line[3:].strip(), number), []
            continue
        assert line.strip() == "```", f"line {number}: a fence closes with a bare ```"
        info, start = opening
        language, *words = info.split() or ["text"]  # a bare fence shows text
        options = dict(w.split("=", 1) for w in words if "=" in w)
        flags = frozenset(w for w in words if "=" not in w)
        blocks.append(Block(language, options, flags, "\n".join(body) + "\n", start))
        opening = None
    assert opening is None, f"line {opening[1]}: the block is never closed"
    return blocks


def script(blocks: list[Block]) -> str:
    """A page's runnable blocks as one bash script: python blocks as here-documents, each
    started with a marker line so the output can be told apart."""
    parts = ["set -euo pipefail"]
    for block in blocks:
        if not block.runs:
            continue
        parts.append(f"echo '=== {block.title}'")
        if block.language == "python":
            parts.append(f"python3 - <<'PYTHON'\n{block.code}PYTHON")
        else:
            parts.append(block.code)
        parts.append("echo")  # curl prints no final newline
    return "\n".join(parts) + "\n"


def outputs(text: str) -> dict[str, str]:
    return dict(re.findall(r"^=== (\S+)\n(.*?)(?=^=== |\Z)", text, flags=re.M | re.S))
