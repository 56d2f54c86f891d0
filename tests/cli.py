"""Running the real `majordomo` command in a child process, as a person or a script would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment minus any MAJORDOMO_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAJORDOMO_")}
    env.update(extra or {})
    return env


def majordomo(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60, stdin: str | None = None
) -> Result:
    """Run `majordomo ARGS` (with `stdin` piped in, if given) and collect what it printed."""
    proc = subprocess.run(
        [sys.executable, "-m", "majordomo", *args],
        env=child_env(env),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, message: str) -> None:
    """Exit status 1, nothing on stdout, and one `majordomo: …` line matching `message`."""
    assert result.code == 1, result
    assert result.out == ""
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("majordomo: ")
    assert re.search(message, lines[0]), lines[0]
