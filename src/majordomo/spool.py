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
import json
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from majordomo.records import Exchange, RequestRecord, Usage
from majordomo.redact import scrub_bytes

log = logging.getLogger("majordomo.spool")

PENDING = "pending.jsonl"
QUARANTINE = "quarantine.jsonl"
REPLAY_PREFIX = "replay-"


# -- records as JSON --------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def record_to_json(r: RequestRecord) -> dict[str, Any]:
    u = r.usage
    out: dict[str, Any] = {
        "id": str(r.id),
        "api_key_id": str(r.api_key_id) if r.api_key_id else None,
        "provider": r.provider,
        "model": r.model,
        "request_path": r.request_path,
        "request_method": r.request_method,
        "requested_at": r.requested_at.isoformat(),
        "responded_at": r.responded_at.isoformat(),
        "status_code": r.status_code,
        "usage": [
            u.input_tokens,
            u.output_tokens,
            u.cached_tokens,
            u.cache_creation_tokens,
            u.reasoning_tokens,
        ],
        "response_time_ms": r.response_time_ms,
        "time_to_first_byte_ms": r.time_to_first_byte_ms,
        "streamed": r.streamed,
        "provider_api_key_hash": r.provider_api_key_hash,
        "provider_api_key_alias": r.provider_api_key_alias,
        "error_message": r.error_message,
        "usage_error": r.usage_error,
        "raw_metadata": r.raw_metadata,
    }
    if r.exchange is not None:
        e = r.exchange
        out["exchange"] = {
            "method": e.method,
            "path": e.path,
            "query": e.query,
            "request_headers": e.request_headers,
            "request_body": _b64(e.request_body),
            "response_status": e.response_status,
            "response_headers": e.response_headers,
            "response_body": _b64(e.response_body),
            "request_truncated": e.request_truncated,
            "response_truncated": e.response_truncated,
        }
    return out


def record_from_json(d: dict[str, Any]) -> RequestRecord:
    """The record `record_to_json` wrote; raises KeyError/ValueError/TypeError if malformed."""
    exchange = None
    if d.get("exchange") is not None:
        e = d["exchange"]
        exchange = Exchange(
            method=e["method"],
            path=e["path"],
            query=e["query"],
            request_headers=tuple((str(k), str(v)) for k, v in e["request_headers"]),
            request_body=base64.b64decode(e["request_body"]),
            response_status=int(e["response_status"]),
            response_headers=tuple((str(k), str(v)) for k, v in e["response_headers"]),
            response_body=base64.b64decode(e["response_body"]),
            request_truncated=bool(e["request_truncated"]),
            response_truncated=bool(e["response_truncated"]),
        )
    metadata = d["raw_metadata"]
    if not isinstance(metadata, dict):
        raise TypeError("raw_metadata is not an object")
    return RequestRecord(
        id=uuid.UUID(d["id"]),
        api_key_id=uuid.UUID(d["api_key_id"]) if d["api_key_id"] else None,
        provider=str(d["provider"]),
        model=str(d["model"]),
        request_path=str(d["request_path"]),
        request_method=str(d["request_method"]),
        requested_at=datetime.fromisoformat(d["requested_at"]),
        responded_at=datetime.fromisoformat(d["responded_at"]),
        status_code=int(d["status_code"]),
        usage=Usage(*(int(n) for n in d["usage"])),
        response_time_ms=int(d["response_time_ms"]),
        time_to_first_byte_ms=d["time_to_first_byte_ms"],
        streamed=bool(d["streamed"]),
        provider_api_key_hash=d["provider_api_key_hash"],
        provider_api_key_alias=d["provider_api_key_alias"],
        error_message=d["error_message"],
        usage_error=d.get("usage_error"),  # absent from lines older versions wrote
        raw_metadata=metadata,
        exchange=exchange,
    )


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

    def read(self, path: Path, batch_size: int) -> Iterator[list[RequestRecord]]:
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
