"""Secrets the gateway generates for itself when none is configured (zero setup with the
embedded database): created once, mode 0600, beside the data directory, race-free."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def load_or_create(directory: Path, name: str) -> str:
    """The secret kept in `directory/name` (32 random bytes as hex), created on first use.

    Processes starting together agree on one value: each writes its own temporary file and
    links it into place; the link fails for all but the first, which then read the winner's.
    """
    path = directory / name
    with contextlib.suppress(FileNotFoundError):
        return path.read_text(encoding="ascii").strip()
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_hex(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_text(encoding="ascii").strip()


def beside_embedded_data(data_dir: str) -> Path:
    """Where generated secrets live: the directory holding the embedded data directory."""
    return Path(data_dir).expanduser().resolve().parent
