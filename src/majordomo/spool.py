"""The local spool: usage records that could not reach PostgreSQL yet, as JSON lines on disk.

Theory of operation
-------------------
Records go to the spool in three cases: the log channel is full (a request handler appends
one record: a buffered write, no waiting), the database is unreachable (the writer appends a
whole batch), and shutdown arrives before the queue is drained (the writer appends what is
left). Every append by the writer is flushed and fsync'ed before the writer moves on.

Appends go to `pending.jsonl` in the spool directory. To replay, the writer first renames it
to `replay-<n>.jsonl` (so new appends start a fresh file), then inserts its lines in batches
and deletes the file once every line is in the database. Insertion ignores ids already present,
so a replay cut short by a crash or another outage simply runs again: nothing is counted twice.
A line that does not parse (a torn write, a disk error) is moved to `quarantine.jsonl` with a
warning; the rest replays.

Records arrive already redacted (`redact.py`); a line quarantined unparsed is scrubbed of
key-shaped text on its way. Every file is created 0600 in a 0700 directory.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import types
import typing
import uuid
from collections.abc import Generator
from datetime import datetime
from pathlib import Path
from typing import Any

from majordomo.records import RequestRecord, Usage
from majordomo.redact import scrub_bytes

log = logging.getLogger("majordomo.spool")

PENDING = "pending.jsonl"
QUARANTINE = "quarantine.jsonl"
REPLAY_PREFIX = "replay-"


# -- records as JSON --------------------------------------------------------------------------
#
# Derived from the record dataclasses' own fields and types (records.py), so a field added
# there is spooled with no change here: a UUID or a datetime as a string, bytes as base64,
# `Usage` as the list of its counts in field order, other dataclasses as objects. A field
# missing from a line (written by an older version) takes its default.


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Usage):
        return [getattr(value, f.name) for f in dataclasses.fields(Usage)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return value  # metadata: JSON already
    raise TypeError(f"cannot spool a {type(value).__name__}")


def _decode(raw: Any, hint: Any) -> Any:
    """`raw` as the type `hint` names (raises ValueError, TypeError or KeyError if it is not)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if raw is None:
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        origin = typing.get_origin(hint)
    if hint is uuid.UUID:
        return uuid.UUID(raw)
    if hint is datetime:
        return datetime.fromisoformat(raw)
    if hint is bytes:
        return base64.b64decode(raw, validate=True)
    if hint is Usage:
        return Usage(*(_decode(n, int) for n in raw))
    if dataclasses.is_dataclass(hint):
        return _decode_dataclass(raw, hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_decode(v, item) for v in raw)
    if hint is int:
        if type(raw) is not int:
            raise TypeError(f"expected a whole number, got {raw!r}")
        return raw
    if hint is bool:
        return bool(raw)
    if hint is str:
        if not isinstance(raw, str):
            raise TypeError(f"expected text, got {raw!r}")
        return raw
    if origin is dict:
        if not isinstance(raw, dict):
            raise TypeError(f"expected an object, got {raw!r}")
        return raw
    raise TypeError(f"cannot read a {hint!r} from the spool")


def _decode_dataclass(raw: Any, cls: Any) -> Any:
    if not isinstance(raw, dict):
        raise TypeError(f"expected an object for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            values[f.name] = _decode(raw[f.name], hints[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise KeyError(f.name)
    return cls(**values)


def record_to_json(r: RequestRecord) -> dict[str, Any]:
    out: dict[str, Any] = _encode(r)
    return out


def record_from_json(d: dict[str, Any]) -> RequestRecord:
    """The record `record_to_json` wrote; raises KeyError/ValueError/TypeError if malformed."""
    record: RequestRecord = _decode_dataclass(d, RequestRecord)
    return record


def encode(record: RequestRecord) -> bytes:
    return json.dumps(record_to_json(record), separators=(",", ":")).encode() + b"\n"


# -- the spool directory ----------------------------------------------------------------------


class Spool:
    """Append-only JSON-lines files in `directory` (created on first use)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pending: Any = None  # the open pending file, appended to in binary mode
        self.quarantined = 0  # unreadable lines set aside since start
        # Whether anything may be waiting for replay: checked on every batch, so it is kept
        # in memory rather than asked of the disk.
        self._dirty = (directory / PENDING).exists() or bool(self._replay_files())

    def _open(self) -> Any:
        if self._pending is None:
            self._pending = _open_private(self.directory, PENDING)
        return self._pending

    def append(self, records: list[RequestRecord], *, sync: bool = True) -> None:
        """Append records; with `sync`, they are on disk when this returns."""
        f = self._open()
        f.write(b"".join(encode(r) for r in records))
        self._dirty = True
        if sync:
            self.sync()

    def sync(self) -> None:
        if self._pending is not None:
            self._pending.flush()
            os.fsync(self._pending.fileno())

    def close(self) -> None:
        if self._pending is not None:
            self.sync()
            self._pending.close()
            self._pending = None

    def has_pending(self) -> bool:
        return self._dirty

    def _replay_files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(REPLAY_PREFIX + "*.jsonl"))

    def take_for_replay(self) -> list[Path]:
        """Close the pending file and hand over every file waiting to be replayed."""
        pending = self.directory / PENDING
        if self._pending is not None:
            self.close()
        if pending.exists() and pending.stat().st_size > 0:
            n = len(self._replay_files())
            target = self.directory / f"{REPLAY_PREFIX}{n:06d}-{uuid.uuid4().hex[:8]}.jsonl"
            pending.rename(target)
        elif pending.exists():
            pending.unlink()
        files = self._replay_files()
        self._dirty = bool(files)  # appends from now on set it again
        return files

    def read(self, path: Path, batch_size: int) -> Generator[list[RequestRecord]]:
        """The records of a replay file in batches; bad lines go to quarantine."""
        batch: list[RequestRecord] = []
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    batch.append(record_from_json(json.loads(line)))
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    self._quarantine(line, f"{path.name}:{number}: {exc}")
                    continue
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def done(self, path: Path) -> None:
        """Every record of `path` is in the database."""
        path.unlink(missing_ok=True)
        self._dirty = (self.directory / PENDING).exists() or bool(self._replay_files())

    def quarantine_records(self, records: list[RequestRecord], why: str) -> None:
        """Set aside records the database refuses, for a person to look at."""
        self._write_quarantine(b"".join(encode(r) for r in records))
        log.warning("set aside %d usage records in %s: %s", len(records), self._q(), why)

    def _quarantine(self, line: bytes, why: str) -> None:
        self.quarantined += 1
        log.warning("spool line does not parse; moved to %s: %s", self._q(), why)
        line = scrub_bytes(line)  # unparsed, hence not redacted by anyone yet
        self._write_quarantine(line if line.endswith(b"\n") else line + b"\n")

    def _q(self) -> Path:
        return self.directory / QUARANTINE

    def _write_quarantine(self, data: bytes) -> None:
        with _open_private(self.directory, QUARANTINE) as q:
            q.write(data)
            q.flush()
            os.fsync(q.fileno())


def _open_private(directory: Path, name: str) -> Any:
    """Open `directory/name` for appending, readable by its owner only (0600, in a 0700
    directory): records are redacted, but what callers sent and got back is still theirs."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours to change: the files are private anyway
        directory.chmod(0o700)
    fd = os.open(directory / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # a file an older version created more openly
    return os.fdopen(fd, "ab")
