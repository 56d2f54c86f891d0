"""Where full request/response bodies go: nowhere, PostgreSQL columns, or one S3 object each.

Theory of operation
-------------------
The log writer hands every finished `RequestRecord` to a `BodyStore` and writes what comes
back (`StoredBodies`) into the record's row: `request_body`/`response_body` in postgres mode,
`body_s3_key` in s3 mode. `logging.body_storage` picks the store once, at start-up
(`open_body_store`):

- `none`: nothing is kept; `store()` returns at once.
- `postgres`: the bodies become text for two `text` columns. PostgreSQL rejects invalid UTF-8
  and NUL characters in `text`, and a rejected body would lose the whole usage row (the Go
  gateway's bug), so bodies are cut on a character boundary (`truncate_utf8`), undecodable bytes
  and NULs become U+FFFD, and a visible marker says how much was cut.
- `s3`: one gzip-compressed JSON document per request (method, path, redacted query and
  headers, both bodies, status, truncation flags) at
  `<prefix>/<api-key-id>/<yyyy-mm-dd>/<request-id>.json.gz`. boto3 is blocking, so the encoding
  (gzip is CPU work) and the upload run in worker threads behind one `trio.CapacityLimiter`
  (`UPLOAD_THREADS`), never on the trio thread. A failed upload is retried a few times with
  backoff; then it is given up, logged once and counted in `failed_uploads` (for /metrics),
  and the row gets no `body_s3_key`: a key in the database always names an object that exists.

Secrets are never stored. The proxy already redacted the exchange when it built it
(`redact.py`); what is written here goes through the same functions once more: credential
headers and `key=` query parameters become `[REDACTED]`, and anything shaped like a Majordomo
key or proxy key is masked in every stored text, bodies included.
Storage failures never raise out of `store()`: losing a body must not lose the usage row.

boto3 lives in this module alone (STYLE.md, "contain the foreign").
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Protocol

import trio

from majordomo.config import Settings
from majordomo.errors import ConfigError
from majordomo.records import RequestRecord
from majordomo.redact import redact_headers, redact_query, scrub_bytes, scrub_text

log = logging.getLogger("majordomo.bodystore")

# Parallel S3 uploads per gateway process. Each holds one worker thread, one pooled HTTP
# connection and one encoded object (up to about twice logging.max_body_size) in memory.
UPLOAD_THREADS = 8
# Waits between upload attempts (so len + 1 attempts): long enough to ride out a brief S3
# hiccup, short enough that a record's bodies are settled well within logging.drain_timeout.
DEFAULT_RETRY_DELAYS: tuple[float, ...] = (0.5, 2.0)
# botocore's own timeouts, in seconds: an upload attempt is bounded by about their sum.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0


# ---------------------------------------------------------------------------------------------
# Pure helpers: redaction and UTF-8-safe truncation.


def truncate_utf8(data: bytes, limit: int) -> tuple[str, bool]:
    """`data` as text PostgreSQL accepts, cut to at most `limit` bytes; and whether it was cut.

    The cut falls on a character boundary (never mid-character); a cut text ends with
    `…[truncated N bytes]` (N = bytes dropped). Invalid UTF-8 and NUL become U+FFFD. The text
    has at most `limit` characters before the marker; for valid UTF-8 input (NUL-free), its
    UTF-8 encoding is at most `limit` bytes before the marker.
    """
    limit = max(limit, 0)
    if len(data) <= limit:
        return _text(data), False
    end = _char_boundary(data, limit)
    return _text(data[:end]) + truncation_marker(len(data) - end), True


def truncation_marker(dropped: int | None) -> str:
    """The visible marker appended to a cut text (`dropped` None: size unknown)."""
    if dropped is None:
        return "…[truncated]"
    return f"…[truncated {dropped} bytes]"


def _char_boundary(data: bytes, end: int) -> int:
    """The largest index ≤ `end` at which `data` can be cut without splitting a character.

    Only a character whose lead byte is among the last 4 bytes before `end` can be split
    (4-byte sequences are the longest); bytes that are not UTF-8 anyway are left to the
    decoder's replacement.
    """
    end = max(0, min(end, len(data)))
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: the lead byte is further back
        if byte >= 0xC0:
            # A lead byte: the length its sequence should have, against what is before `end`.
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end - back if needed > back else end
        return end  # ASCII: no character straddles `end`
    return end


def _text(data: bytes) -> str:
    # PostgreSQL text rejects NUL; U+FFFD is what invalid bytes become too.
    return data.decode("utf-8", "replace").replace("\x00", "\ufffd")


# ---------------------------------------------------------------------------------------------
# The stores.


@dataclass(frozen=True, slots=True)
class StoredBodies:
    """What a store kept, for the record's row (all None: nothing kept)."""

    request_body: str | None = None  # llm_requests.request_body (postgres mode)
    response_body: str | None = None  # llm_requests.response_body (postgres mode)
    s3_key: str | None = None  # llm_requests.body_s3_key, only once the object exists


class BodyStore(Protocol):
    """Keeps the bodies of finished requests; one per gateway process."""

    failed_uploads: int
    """Bodies given up on after retries (s3 mode), for /metrics."""

    async def store(self, record: RequestRecord) -> StoredBodies:
        """Keep `record`'s bodies; never raises for storage failures (they are counted)."""
        ...

    async def fetch(self, key: str) -> dict[str, Any] | None:
        """The stored document at `key` (an S3 object key), or None: only S3 stores have one."""
        ...

    async def aclose(self) -> None:
        """Release connections; call after the last `store()` returned."""
        ...


class NoBodyStore:
    """`logging.body_storage: none`: nothing is kept."""

    def __init__(self) -> None:
        self.failed_uploads = 0

    async def store(self, record: RequestRecord) -> StoredBodies:
        return StoredBodies()

    async def fetch(self, key: str) -> dict[str, Any] | None:
        return None

    async def aclose(self) -> None:
        pass


class PostgresBodyStore:
    """`logging.body_storage: postgres`: bodies as text for the row's body columns."""

    def __init__(
        self, *, max_body_size: int, store_request_body: bool, store_response_body: bool
    ) -> None:
        self.failed_uploads = 0
        self._max = max_body_size
        self._keep_request = store_request_body
        self._keep_response = store_response_body

    async def store(self, record: RequestRecord) -> StoredBodies:
        ex = record.exchange
        if ex is None:
            return StoredBodies()
        return StoredBodies(
            request_body=(
                body_text(ex.request_body, self._max, ex.request_truncated)
                if self._keep_request
                else None
            ),
            response_body=(
                body_text(ex.response_body, self._max, ex.response_truncated)
                if self._keep_response
                else None
            ),
        )

    async def fetch(self, key: str) -> dict[str, Any] | None:
        return None  # the bodies are in the row's columns

    async def aclose(self) -> None:
        pass


def body_text(data: bytes, limit: int, already_cut: bool = False) -> str:
    """A body as storable text: `truncate_utf8`, and a marker on a body the proxy already cut.

    A body cut during capture (`already_cut`) may end mid-character: that partial character
    is dropped rather than shown as U+FFFD, and the marker does not count the dropped bytes
    (only the proxy saw them). Majordomo keys are scrubbed.
    """
    if already_cut:
        end = _char_boundary(data, min(len(data), max(limit, 0)))
        text = _text(data[:end]) + truncation_marker(None)
    else:
        text, _ = truncate_utf8(data, limit)
    return scrub_text(text)


# Largest stored document the admin API reads back from S3 (decompressed).
MAX_FETCHED = 64 * 1024**2


class S3BodyStore:
    """`logging.body_storage: s3`: one gzip JSON object per request, uploaded from threads.

    `client` is a boto3 S3 client (thread-safe); `open_body_store` builds it from settings.
    `retry_delays` are the waits between attempts, in seconds (tests pass tiny ones).
    """

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        prefix: str = "",
        max_body_size: int,
        store_request_body: bool = True,
        store_response_body: bool = True,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.failed_uploads = 0
        self._max = max_body_size
        self._keep_request = store_request_body
        self._keep_response = store_response_body
        self._retry_delays = tuple(retry_delays)
        # One limiter per store, shared by encoding and uploads: it bounds the threads, the
        # pooled connections and the encoded objects held in memory at once. A store shared
        # by several trio runs (tests) may be given one.
        self.upload_threads = limiter or trio.CapacityLimiter(UPLOAD_THREADS)

    def object_key(self, record: RequestRecord) -> str:
        """`<prefix>/<api-key-id>/<yyyy-mm-dd>/<request-id>.json.gz` (date of requested_at, UTC)."""
        at = record.requested_at
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        key_id = str(record.api_key_id) if record.api_key_id is not None else "no-key"
        key = f"{key_id}/{at:%Y-%m-%d}/{record.id}.json.gz"
        return f"{self.prefix}/{key}" if self.prefix else key

    async def store(self, record: RequestRecord) -> StoredBodies:
        if record.exchange is None:
            return StoredBodies()
        key = self.object_key(record)
        try:
            # Encoding (JSON + gzip of up to a few MB) is CPU work: off the trio thread too.
            payload = await trio.to_thread.run_sync(
                self.encode, record, limiter=self.upload_threads
            )
        except Exception:  # a bug; it must not take the log writer (and usage rows) down
            self.failed_uploads += 1
            log.exception("could not encode the bodies of request %s for S3 (a bug)", record.id)
            return StoredBodies()
        error: Exception | None = None
        for attempt, delay in enumerate((*self._retry_delays, None), start=1):
            try:
                # Not abandoned on cancel: a started upload finishes (bounded by the botocore
                # timeouts), so neither its thread nor its connection is leaked.
                await trio.to_thread.run_sync(self._put, key, payload, limiter=self.upload_threads)
                return StoredBodies(s3_key=key)
            except Exception as exc:  # boto3, botocore or the network: all retried
                error = exc
                log.debug("upload of s3://%s/%s, attempt %d: %s", self.bucket, key, attempt, exc)
            if delay is not None:
                await trio.sleep(delay)
        self.failed_uploads += 1
        log.warning(
            "could not store the bodies of request %s at s3://%s/%s (%d attempts): %s; its "
            "usage row is kept without body_s3_key. Check s3.bucket, s3.endpoint, s3.region "
            "and the credentials (s3.access_key_id, or the AWS default chain when it is empty)",
            record.id,
            self.bucket,
            key,
            len(self._retry_delays) + 1,
            error,
            extra={"request_id": str(record.id), "failed_uploads": self.failed_uploads},
        )
        return StoredBodies()

    def encode(self, record: RequestRecord) -> bytes:
        """The gzip-compressed JSON document stored for `record` (which has an exchange)."""
        ex = record.exchange
        if ex is None:
            raise ValueError(f"request {record.id} has no exchange to encode")
        request_body, request_cut = self._body(ex.request_body, ex.request_truncated)
        response_body, response_cut = self._body(ex.response_body, ex.response_truncated)
        document = {
            "request_id": str(record.id),
            "timestamp": record.requested_at.isoformat(),
            "responded_at": record.responded_at.isoformat(),
            "api_key_id": str(record.api_key_id) if record.api_key_id is not None else None,
            "provider": record.provider,
            "model": record.model,
            "status_code": record.status_code,
            "streamed": record.streamed,
            "request": {
                "method": ex.method,
                "path": ex.path,
                "query": redact_query(ex.query),
                "headers": _header_object(ex.request_headers),
                **(request_body if self._keep_request else _NOT_KEPT),
            },
            "response": {
                "status": ex.response_status,
                "headers": _header_object(ex.response_headers),
                **(response_body if self._keep_response else _NOT_KEPT),
            },
            "request_truncated": request_cut and self._keep_request,
            "response_truncated": response_cut and self._keep_response,
        }
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
        # Belt and braces: whatever way a Majordomo key took into the document, it ends here.
        text = scrub_text(text)
        # mtime=0: the same record always compresses to the same bytes.
        return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)

    def _body(self, data: bytes, already_cut: bool) -> tuple[dict[str, str], bool]:
        """`body` and `body_encoding` fields for one side, and whether the body was cut."""
        cut = already_cut or len(data) > self._max
        # Cut on a character boundary, so a UTF-8 body stays text rather than turning base64;
        # the `*_truncated` flags say it was cut, so no marker is added to the text.
        if cut:
            data = data[: _char_boundary(data, min(len(data), self._max))]
        data = scrub_bytes(data)
        try:
            # JSON escapes NUL and control characters itself: only non-UTF-8 needs base64.
            return {"body": data.decode("utf-8"), "body_encoding": "utf-8"}, cut
        except UnicodeDecodeError:
            return {"body": base64.b64encode(data).decode("ascii"), "body_encoding": "base64"}, cut

    async def fetch(self, key: str) -> dict[str, Any] | None:
        """The document stored at `key` (for the admin API's request detail), or None when it
        cannot be read; at most `MAX_FETCHED` bytes once decompressed."""

        def get() -> dict[str, Any] | None:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                with gzip.GzipFile(fileobj=body) as data:
                    text = data.read(MAX_FETCHED + 1)
                if len(text) > MAX_FETCHED:
                    return None
                document: dict[str, Any] = json.loads(text)
                return document
            except Exception as exc:  # boto3, botocore, gzip, JSON: the detail says "not read"
                log.warning("could not read s3://%s/%s: %s", self.bucket, key, exc)
                return None

        return await trio.to_thread.run_sync(get, limiter=self.upload_threads)

    def _put(self, key: str, payload: bytes) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=payload,
            ContentType="application/json",
            ContentEncoding="gzip",
        )

    async def aclose(self) -> None:
        # Closes the connection pool; quick, nothing is sent.
        self.client.close()


# The fields of a side whose body is not kept (logging.store_request/response_body false).
_NOT_KEPT: dict[str, None] = {"body": None, "body_encoding": None}


def _header_object(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Redacted headers as a JSON object; repeated names are joined with ", " (RFC 9110)."""
    joined: dict[str, str] = {}
    for name, value in redact_headers(headers):
        name = name.lower()
        joined[name] = f"{joined[name]}, {value}" if name in joined else value
    return joined


# ---------------------------------------------------------------------------------------------
# Opening.


def open_body_store(
    settings: Settings, *, retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS
) -> BodyStore:
    """The store `logging.body_storage` names; raises `ConfigError` for an unusable s3 setup.

    Opening the s3 store builds the boto3 client (no network traffic; credentials from the AWS
    default chain are looked up lazily, at the first upload).
    """
    lg = settings.logging
    if lg.body_storage == "postgres":
        return PostgresBodyStore(
            max_body_size=lg.max_body_size,
            store_request_body=lg.store_request_body,
            store_response_body=lg.store_response_body,
        )
    if lg.body_storage == "s3":
        s3 = settings.s3
        if not s3.enabled:
            raise ConfigError(
                "logging.body_storage is s3 but s3.enabled is false; set s3.enabled: true "
                "(MAJORDOMO_S3_ENABLED=true) or choose body_storage none or postgres"
            )
        if not s3.bucket.strip():
            raise ConfigError(
                "logging.body_storage is s3 but s3.bucket is empty; set s3.bucket "
                "(MAJORDOMO_S3_BUCKET) to an existing bucket"
            )
        return S3BodyStore(
            _s3_client(settings),
            bucket=s3.bucket.strip(),
            prefix=s3.prefix,
            max_body_size=lg.max_body_size,
            store_request_body=lg.store_request_body,
            store_response_body=lg.store_response_body,
            retry_delays=retry_delays,
        )
    return NoBodyStore()


def _s3_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    s3 = settings.s3
    options: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        # One attempt per call: S3BodyStore.store retries with its own backoff, and two
        # nested retry loops would multiply the time a failing upload holds a thread.
        "retries": {"mode": "standard", "total_max_attempts": 1},
        # One pooled connection per upload thread, so no upload waits for a connection.
        "max_pool_connections": UPLOAD_THREADS,
    }
    if s3.path_style:
        # Without it boto3 picks: virtual-hosted on AWS, path-style for a custom endpoint.
        options["s3"] = {"addressing_style": "path"}
    if s3.endpoint:
        # S3-compatible stores do not all accept the CRC checksums botocore ≥ 1.36 adds to
        # every upload by default; send them only where the API requires them.
        options["request_checksum_calculation"] = "when_required"
    credentials: dict[str, str] = {}
    if s3.access_key_id:
        credentials = {
            "aws_access_key_id": s3.access_key_id,
            "aws_secret_access_key": s3.secret_access_key,
        }
    # A session of our own: boto3's default session is shared process-wide and not thread-safe;
    # the client made from it is.
    session = boto3.session.Session(region_name=s3.region or None, **credentials)
    return session.client("s3", endpoint_url=s3.endpoint or None, config=Config(**options))
