"""One proxied request, from the client's first byte to its usage record.

Theory of operation
-------------------
`handle_proxy` is a raw ASGI handler (the hot path skips the web framework):

    detect provider → authenticate → read body (≤ max_request_body) → inspect (pure)
      → send upstream (httpx, streamed) → relay every chunk as it arrives, teeing it
      into the provider's sans-IO parser → record

Errors the gateway answers itself (400, 401, 404, 408, 413, 503 before forwarding; 502 and 504
when the provider cannot be reached or stalls) use the detected provider's JSON error shape, so
each SDK raises its usual exception with our message. Provider answers, errors included, pass
through untouched.

Every request that was forwarded (or tried to be) ends in exactly one `RequestRecord`, sent
with `send_nowait` on the log channel: success, provider error, upstream failure, timeout, or
the client going away mid-stream (status 499). Requests refused before forwarding are not
recorded: they cost nothing and may carry no valid key.

While the response is relayed, a watcher task reads the ASGI receive channel: hypercorn reports
a client disconnect there, and the relay is cancelled at once. A stream the client received in
full counts as a success even if the client hung up right after (the openai SDK closes the
connection as soon as it has read `data: [DONE]`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, cast
from urllib.parse import parse_qsl, unquote_to_bytes

import httpx
import trio

from majordomo import providers, redact
from majordomo.auth import KeyCache
from majordomo.config import Settings
from majordomo.errors import DatabaseUnavailable, Unauthorized
from majordomo.metrics import Metrics
from majordomo.providers import PROVIDER_NAMES, ProviderModule, RequestInfo
from majordomo.records import Exchange, RequestRecord, Usage
from majordomo.spool import Spool

log = logging.getLogger("majordomo.proxy")
access = logging.getLogger("majordomo.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

METADATA_PREFIX = b"x-majordomo-"
KEY_HEADER = b"x-majordomo-key"
PROVIDER_HEADER = b"x-majordomo-provider"
ALIAS_HEADER = b"x-majordomo-provider-alias"
# Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those the
# HTTP client sets itself for the upstream connection.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_FORWARDED_UP = _HOP_BY_HOP | {b"host", b"content-length", b"accept-encoding"}
# hypercorn writes its own Date; the client gets our X-Request-Id (the provider's moves aside).
_NOT_FORWARDED_DOWN = _HOP_BY_HOP | {b"date", b"x-request-id"}
UPSTREAM_REQUEST_ID = b"x-upstream-request-id"
# The status recorded when the client went away before the response was complete
# (nginx's convention; it is never sent, there is nobody left to send it to).
CLIENT_CLOSED_REQUEST = 499
# Bound on an error message read from a provider's error body (characters).
MAX_ERROR_MESSAGE = 2000
# Limits on the caller's X-Majordomo-* metadata kept per request.
MAX_METADATA_KEYS = 32
MAX_METADATA_NAME = 128
MAX_METADATA_VALUE = 1024
# After a client disconnects mid-response, how long the upstream may take to finish (seconds).
DISCONNECT_GRACE = 0.5


@dataclass(frozen=True, slots=True)
class Upstream:
    """One provider's configured base URL, split once into the parts every request reuses.

    The scheme, host and port of every upstream URL come from here and nowhere else: the
    request's own path is appended to `prefix` as bytes, never parsed for an authority.
    """

    scheme: str
    host: str
    port: int | None
    prefix: bytes  # the base URL's path, without a trailing slash (b"" for none)

    @classmethod
    def parse(cls, base_url: str) -> Upstream:
        url = httpx.URL(base_url)
        return cls(url.scheme, url.host, url.port, url.raw_path.split(b"?", 1)[0].rstrip(b"/"))

    def url(self, target: bytes) -> httpx.URL:
        """The upstream URL for an origin-form request target (path and query, as received)."""
        return httpx.URL(
            scheme=self.scheme, host=self.host, port=self.port, raw_path=self.prefix + target
        )


@dataclass
class Upstreams:
    """The providers' upstreams, from settings."""

    by_provider: dict[str, Upstream]

    @classmethod
    def from_settings(cls, settings: Settings) -> Upstreams:
        return cls(
            {
                name: Upstream.parse(settings.providers.upstream(name).base_url)
                for name in PROVIDER_NAMES
            }
        )


# Longest piece of a refused request target quoted back in the error message.
_MAX_QUOTED_TARGET = 80


def check_target(method: str, raw_path: bytes) -> str | None:
    """Why a request target cannot be forwarded (a message for a 400), or None if it can.

    Only origin-form targets are forwarded: a path that starts with a single `/`. Whatever
    could make the upstream read another authority or climb out of the base URL's path
    prefix is refused rather than repaired: CONNECT, absolute-form (`http://host/...`) and
    other non-path targets, a leading `//`, backslashes, and dot-segments (`.` and `..`,
    percent-encoded too, since an upstream may decode before it normalises). Everything else,
    `@`, `%2F` and `%40` included, is an ordinary path character once the authority is fixed,
    and goes upstream as received.
    """
    shown = raw_path[:_MAX_QUOTED_TARGET].decode("latin-1")
    if method == "CONNECT":
        return (
            "CONNECT is not supported: Majordomo is an API gateway, not a forward proxy; "
            "send the provider's API path (e.g. POST /v1/chat/completions)"
        )
    if not raw_path.startswith(b"/") or raw_path.startswith(b"//"):
        return (
            f"the request target {shown!r} is not a path: send the provider's API path, "
            "starting with a single / (e.g. /v1/chat/completions); Majordomo is not a "
            "forward proxy"
        )
    decoded = unquote_to_bytes(raw_path)
    if b"\\" in decoded:
        return f"the request path {shown!r} contains a backslash, which no provider API uses"
    if any(segment in (b".", b"..") for segment in decoded.split(b"/")):
        return (
            f"the request path {shown!r} contains a dot-segment ('.' or '..'); Majordomo "
            "forwards paths as received and refuses ones that could leave the provider's API"
        )
    return None


@dataclass
class ProxyContext:
    """What every proxied request shares; built once by the supervisor."""

    settings: Settings
    http: httpx.AsyncClient
    keys: KeyCache
    records: trio.MemorySendChannel[RequestRecord]
    upstreams: Upstreams
    spool: Spool
    metrics: Metrics
    timeout: dict[str, float | None] = field(init=False)
    keep_bodies: bool = field(init=False)

    def __post_init__(self) -> None:
        p = self.settings.providers
        self.timeout = httpx.Timeout(
            connect=p.connect_timeout,
            read=p.idle_timeout,
            write=p.idle_timeout,
            pool=p.connect_timeout,
        ).as_dict()
        self.keep_bodies = self.settings.logging.body_storage != "none"


class _ClientTooSlow(Exception):
    """The client did not accept a chunk within `server.write_timeout`."""


class _Reply(Exception):
    """Raised to answer the client with an error of our own, in the provider's format."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def new_http_client() -> httpx.AsyncClient:
    """The one upstream client: no default headers, a cookie jar that keeps nothing, no
    redirects."""
    client = httpx.AsyncClient(
        timeout=None,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        # A shared client must never carry one caller's cookies to another.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        trust_env=False,
    )
    client.headers.clear()  # the caller's headers, not httpx's, go upstream
    return client


def _header(headers: RawHeaders, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


async def _send_simple(
    send: Send, status: int, body: bytes, headers: RawHeaders | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def credential_hash(headers: RawHeaders, query: bytes) -> str | None:
    """SHA-256 of the caller's upstream credential (never the credential itself)."""
    secret: bytes | None = None
    for key, value in headers:
        if key == b"authorization":
            secret = value.split(b" ", 1)[1] if b" " in value else value
            break
        if key in (b"x-api-key", b"x-goog-api-key"):
            secret = value
            break
    if secret is None and b"key=" in query:
        for name, text in parse_qsl(query.decode("latin-1")):
            if name == "key":
                secret = text.encode("latin-1")
                break
    return hashlib.sha256(secret.strip()).hexdigest() if secret else None


def metadata_from(headers: RawHeaders) -> tuple[dict[str, str], int]:
    """Every `X-Majordomo-*` header but the key and the provider, prefix cut, name lower-case.

    Bounded, so one caller cannot bloat every row: at most `MAX_METADATA_KEYS` entries, names
    up to `MAX_METADATA_NAME`, values cut at `MAX_METADATA_VALUE` characters. Returns the
    metadata and how many entries were dropped or cut (never an error to the client).
    """
    metadata: dict[str, str] = {}
    dropped = 0
    for key, value in headers:
        if not key.startswith(METADATA_PREFIX) or key in (KEY_HEADER, PROVIDER_HEADER):
            continue
        name = key[len(METADATA_PREFIX) :].decode("latin-1")
        if len(name) > MAX_METADATA_NAME or (
            len(metadata) >= MAX_METADATA_KEYS and name not in metadata
        ):
            dropped += 1
            continue
        text = redact.scrub_text(value.decode("utf-8", "replace"))
        if len(text) > MAX_METADATA_VALUE:
            text = text[:MAX_METADATA_VALUE]
            dropped += 1
        metadata[name] = text
    return metadata, dropped


def upstream_headers(headers: RawHeaders) -> list[tuple[bytes, bytes]]:
    connection_tokens: set[bytes] = set()
    for key, value in headers:
        if key == b"connection":
            connection_tokens.update(t.strip().lower() for t in value.split(b","))
    out = [
        (key, value)
        for key, value in headers
        if key not in _NOT_FORWARDED_UP
        and key not in connection_tokens
        and not key.startswith(METADATA_PREFIX)
    ]
    # Ask for an uncompressed answer: usage is read from the bytes as they pass, and
    # recompressing for the client would cost CPU on every response.
    out.append((b"accept-encoding", b"identity"))
    return out


def downstream_headers(response: httpx.Response, *, keep_length: bool) -> RawHeaders:
    out: RawHeaders = []
    for key, value in response.headers.raw:
        name = key.lower()
        if name in _NOT_FORWARDED_DOWN:
            if name == b"x-request-id":
                out.append((UPSTREAM_REQUEST_ID, value))
            continue
        if name == b"content-length" and not keep_length:
            continue
        if name.startswith(b"access-control-"):
            continue  # the provider's CORS policy is not ours (see cors.py)
        out.append((name, value))
    return out


def error_message_from(body: bytes) -> str:
    """A bounded, readable error message from a provider's error body."""
    text = body[: MAX_ERROR_MESSAGE * 4].decode("utf-8", "replace").strip()
    try:
        payload = json.loads(body)
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(payload, dict) and isinstance(payload.get("message"), str):
            text = payload["message"]
    except (ValueError, UnicodeDecodeError):
        pass
    return text[:MAX_ERROR_MESSAGE]


class _Decompressor:
    """Decodes a gzip/deflate body for the parser while the raw bytes go to the client.

    Output comes in pieces of at most `PIECE` bytes, and stops for good once `budget` bytes
    came out (a gzip bomb) or the data turns out not to decode: `failure` then says why.
    """

    PIECE = 64 * 1024

    def __init__(self, encoding: str, budget: int) -> None:
        wbits = 16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits)
        self._encoding = encoding
        self._limit = self._budget = budget
        self.failure: str | None = None

    def decode(self, data: bytes) -> Iterator[bytes]:
        while data and self.failure is None and not self._z.eof:
            try:
                out = self._z.decompress(data, self.PIECE)
            except zlib.error as exc:
                self.failure = (
                    f"the {self._encoding} response does not decode ({exc}); usage not read"
                )
                return
            data = self._z.unconsumed_tail
            if len(out) > self._budget:
                self.failure = (
                    f"the response decompresses to more than {self._limit} bytes "
                    "(providers.max_decompressed_size); usage not read"
                )
                return
            self._budget -= len(out)
            if out:
                yield out


class ProxyRequest:
    """The state of one request; `run` drives it and always leaves a record when due."""

    def __init__(self, ctx: ProxyContext, scope: Scope, receive: Receive, send: Send) -> None:
        self.ctx = ctx
        self.scope = scope
        self.receive = receive
        self.send = send
        self.id = uuid.uuid4()
        self.t0 = time.perf_counter()
        self.requested_at = datetime.now(UTC)
        self.headers: RawHeaders = scope["headers"]
        self.path: str = scope["path"]
        self.method: str = scope["method"]
        self.module: ProviderModule = providers.get_provider("openai")
        self.provider = "openai"
        self.key_id: uuid.UUID | None = None
        self.info: RequestInfo | None = None
        self.upstream_url: httpx.URL | None = None  # the configured host + the path as received
        # Filled while relaying:
        self.status = 0
        self.model: str | None = None
        self.usage: Usage | None = None
        self.error_message: str | None = None
        self.usage_error: str | None = None  # why usage could not be read, if it could not
        self.ttfb_ms: int | None = None
        self.upstream_ms = 0.0
        self.streamed = False
        self.client_gone = False
        self.completed = False
        self.response_started = False
        # Kept for body storage only (logging.body_storage), capped at max_body_size:
        self.request_body = b""
        self.response_headers: RawHeaders = []
        self.captured = bytearray()
        self.captured_all = True

    # -- the request ----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self._detect_provider()
            self.key_id = await self._authenticate()
            body = self.request_body = await self._read_body()
        except _Reply as reply:
            await self._reply(reply.status, reply.message)
            if self.ctx.settings.logging.access_log:
                # Refused before forwarding: no record, so the access line is written here.
                access.info(
                    "%s %s %s %d refused: %s",
                    self.method,
                    redact.scrub_text(self.path),
                    self.provider,
                    reply.status,
                    reply.message,
                    extra={
                        "request_id": str(self.id),
                        "method": self.method,
                        "path": redact.scrub_text(self.path),
                        "provider": self.provider,
                        "status": reply.status,
                    },
                )
            return
        self.info = self.module.request_info(
            self.path,
            self.scope["query_string"].decode("latin-1"),
            body,
            inject_stream_usage=self.ctx.settings.providers.inject_stream_usage,
        )
        try:
            await self._forward(self.info)
        finally:
            self._record()

    def _detect_provider(self) -> None:
        # An explicit provider is read first: even a refusal below speaks its error shape.
        override = _header(self.headers, PROVIDER_HEADER)
        if override is not None:
            name = override.decode("latin-1").strip().lower()
            if name not in PROVIDER_NAMES:
                raise _Reply(
                    400,
                    f"X-Majordomo-Provider {name!r} is not a provider; use one of "
                    f"{', '.join(PROVIDER_NAMES)}",
                )
            self.provider = name
            self.module = providers.get_provider(providers.wire_format(self.path, name))
        raw_path: bytes = self.scope.get("raw_path") or self.path.encode()
        refused = check_target(self.method, raw_path)
        if refused is not None:
            raise _Reply(400, refused)
        query = self.scope["query_string"]
        if override is None:
            detected = providers.detect_provider(self.path, self.headers, query)
            if detected is None:
                raise _Reply(404, _not_served(self.path))
            self.provider = detected
            self.module = providers.get_provider(providers.wire_format(self.path, detected))
        target = raw_path + b"?" + query if query else raw_path
        try:
            self.upstream_url = self.ctx.upstreams.by_provider[self.provider].url(target)
        except httpx.InvalidURL as exc:  # check_target passes only what a URL holds; still
            raise _Reply(400, f"the request target cannot be forwarded: {exc}") from None

    async def _authenticate(self) -> uuid.UUID:
        raw = _header(self.headers, KEY_HEADER)
        try:
            return await self.ctx.keys.authenticate(
                raw.decode("latin-1").strip() if raw is not None else None
            )
        except Unauthorized as exc:
            raise _Reply(401, str(exc)) from None
        except DatabaseUnavailable as exc:
            raise _Reply(503, str(exc)) from None

    async def _read_body(self) -> bytes:
        limit = self.ctx.settings.server.max_request_body
        declared = _header(self.headers, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Reply(413, self._too_large(int(declared)))
        chunks: list[bytes] = []
        size = 0
        timeout = self.ctx.settings.server.read_timeout
        while True:
            try:
                with trio.fail_after(timeout):
                    message = await self.receive()
            except trio.TooSlowError:
                raise _Reply(
                    408, f"the request body did not arrive within {timeout:g}s; send it again"
                ) from None
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise _Reply(CLIENT_CLOSED_REQUEST, "client disconnected")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _Reply(413, self._too_large(size))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, size: int) -> str:
        limit = self.ctx.settings.server.max_request_body
        return (
            f"request body of {size} bytes is over this gateway's limit of {limit} bytes "
            "(server.max_request_body); send a smaller request"
        )

    async def _reply(self, status: int, message: str) -> None:
        if self.client_gone:
            return
        await _send_simple(
            self.send,
            status,
            self.module.error_body(status, message),
            [(b"x-request-id", str(self.id).encode()), *self._connection_headers()],
        )

    def _connection_headers(self) -> RawHeaders:
        """`Connection: close` for a request framed both by Content-Length and
        Transfer-Encoding: its end cannot be trusted, so neither can the next request on that
        connection (RFC 9112 §6.1)."""
        if _header(self.headers, b"transfer-encoding") is not None and (
            _header(self.headers, b"content-length") is not None
        ):
            return [(b"connection", b"close")]
        return []

    # -- forwarding -----------------------------------------------------------------------

    async def _forward(self, info: RequestInfo) -> None:
        assert self.upstream_url is not None  # set by _detect_provider
        request = httpx.Request(
            self.method,
            self.upstream_url,
            headers=upstream_headers(self.headers),
            content=info.body,
            extensions={"timeout": self.ctx.timeout},
        )
        # The watcher runs from the moment the request goes upstream: a client that gives up
        # while the provider is still thinking stops the upstream request too.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_for_disconnect, nursery.cancel_scope)
            sent_at = time.perf_counter()
            try:
                response = await self.ctx.http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                self._upstream_failed(
                    504, f"{self.provider} did not answer in time ({_describe(exc)})"
                )
            except httpx.HTTPError as exc:
                self._upstream_failed(502, f"cannot reach {self.provider}: {_describe(exc)}")
            except Exception as exc:  # a bug, or something httpx does not map: still a 502 row
                log.exception("forwarding to %s failed", self.provider)
                self._upstream_failed(502, f"cannot forward to {self.provider}: {_describe(exc)}")
            else:
                self.upstream_ms = (time.perf_counter() - sent_at) * 1000
                try:
                    await self._relay(response, info)
                except _ClientTooSlow:
                    self.client_gone = True
                finally:
                    with trio.CancelScope(shield=True):
                        await response.aclose()
            nursery.cancel_scope.cancel()
        if self.status in (502, 504) and not self.response_started:
            await self._reply(self.status, self.error_message or "")

    def _upstream_failed(self, status: int, message: str) -> None:
        self.status = status
        self.error_message = message
        log.warning(message, extra={"request_id": str(self.id), "provider": self.provider})

    async def _watch_for_disconnect(self, relay: trio.CancelScope) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.client_gone = True
        # Let the upstream finish for a moment: a client that hangs up as soon as it has read
        # the last event (the openai SDK after `data: [DONE]`) received everything, and the
        # record must say so. A real abort stops the upstream after this grace.
        relay.deadline = min(relay.deadline, trio.current_time() + DISCONNECT_GRACE)

    async def _relay(self, response: httpx.Response, info: RequestInfo) -> None:
        self.status = response.status_code
        ok = 200 <= response.status_code < 300
        encoding = response.headers.get("content-encoding", "identity").lower()
        limits = self.ctx.settings.providers
        decompressor = (
            _Decompressor(encoding, limits.max_decompressed_size)
            if encoding in ("gzip", "x-gzip", "deflate")
            else None
        )
        parser = None
        # A compressed stream cannot be edited on the fly: then the usage chunk stays.
        strip = ok and info.stream and info.strip_usage_chunk and decompressor is None
        if ok and info.stream:
            parser = self.module.StreamParser(
                strip_usage_chunk=strip, max_event_size=limits.max_event_size
            )
            self.streamed = True
        # Content-Length goes down only for a body the upstream framed by length (never with a
        # Transfer-Encoding beside it, which wins) and that reaches the client unchanged.
        length_framed = "transfer-encoding" not in response.headers
        headers = downstream_headers(response, keep_length=length_framed and not strip)
        headers += self._connection_headers()
        # Everything since the request arrived, less the wait for the provider's answer.
        overhead_ms = (time.perf_counter() - self.t0) * 1000 - self.upstream_ms
        headers.append((b"x-request-id", str(self.id).encode()))
        headers.append((b"x-majordomo-overhead-ms", f"{overhead_ms:.2f}".encode()))
        self.response_started = True
        await self._write(
            {"type": "http.response.start", "status": self.status, "headers": headers}
        )

        kept = bytearray()  # non-stream bodies, to read usage or the error message at the end
        keep_limit = limits.max_event_size if ok else MAX_ERROR_MESSAGE * 4
        kept_all = True
        logging_settings = self.ctx.settings.logging
        capture_limit = (
            logging_settings.max_body_size
            if self.ctx.keep_bodies and logging_settings.store_response_body
            else -1
        )
        self.response_headers = response.headers.raw
        try:
            # aclosing: a relay cut short (client gone, timeout) closes the generator at once.
            async with aclosing(cast(AsyncGenerator[bytes], response.aiter_raw())) as upstream:
                async for raw in upstream:
                    out = raw
                    for data in decompressor.decode(raw) if decompressor else (raw,):
                        if parser is not None:
                            relayed = parser.feed(data)
                            if decompressor is None:
                                out = relayed
                        elif kept_all:
                            if len(kept) + len(data) <= keep_limit:
                                kept += data
                            else:  # too large to read usage from: stop keeping it
                                kept_all = False
                                kept = kept[:keep_limit] if not ok else bytearray()
                        if capture_limit >= 0:
                            room = capture_limit - len(self.captured)
                            self.captured += data[: max(room, 0)]
                            self.captured_all = self.captured_all and len(data) <= room
                    if out:
                        await self._write(
                            {"type": "http.response.body", "body": out, "more_body": True}
                        )
            if parser is not None:
                tail = parser.close()
                if tail and decompressor is None:
                    await self._write(
                        {"type": "http.response.body", "body": tail, "more_body": True}
                    )
            await self._write({"type": "http.response.body", "body": b"", "more_body": False})
            self.completed = True
        except httpx.TimeoutException:
            self._upstream_failed(
                504,
                f"{self.provider} went silent for more than "
                f"{self.ctx.settings.providers.idle_timeout:g}s mid-response",
            )
        except httpx.HTTPError as exc:
            self._upstream_failed(502, f"{self.provider} broke off the response: {_describe(exc)}")
        finally:
            if parser is not None:
                self.model, self.usage = parser.model, parser.usage
                self.usage_error = parser.failure
            elif ok and kept_all and kept:
                self.model, self.usage = self.module.usage_from_body(self.path, bytes(kept))
            elif ok and not kept_all:
                self.usage_error = (
                    f"the response body exceeded {keep_limit} bytes "
                    "(providers.max_event_size); usage not read"
                )
            elif not ok:
                self.error_message = error_message_from(bytes(kept))
            if decompressor is not None and decompressor.failure is not None:
                self.usage_error = decompressor.failure

    async def _write(self, message: Message) -> None:
        if self.client_gone:
            return  # nobody to write to; keep reading the upstream to its end
        if self.ttfb_ms is None and message["type"] == "http.response.body":
            self.ttfb_ms = round((time.perf_counter() - self.t0) * 1000)
        try:
            with trio.fail_after(self.ctx.settings.server.write_timeout):
                await self.send(message)
        except trio.TooSlowError:
            self.error_message = (
                "client stopped reading for more than "
                f"{self.ctx.settings.server.write_timeout:g}s (server.write_timeout)"
            )
            raise _ClientTooSlow from None

    def _exchange(self, status: int, secrets: tuple[bytes, ...]) -> Exchange | None:
        """The full exchange, for body storage, with every secret already scrubbed
        (`redact.py`): nothing downstream (spool, quarantine, body store) ever sees one."""
        if not self.ctx.keep_bodies:
            return None
        limit = self.ctx.settings.logging.max_body_size
        keep_request = self.ctx.settings.logging.store_request_body
        return Exchange(
            method=self.method,
            path=redact.scrub_text_values(self.path, secrets),
            query=redact.scrub_text_values(
                redact.redact_query(self.scope["query_string"].decode("latin-1")), secrets
            ),
            request_headers=tuple(
                redact.redact_headers(
                    ((k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers), secrets
                )
            ),
            request_body=redact.scrub_values(self.request_body[:limit], secrets)
            if keep_request
            else b"",
            response_status=status,
            response_headers=tuple(
                redact.redact_headers(
                    (
                        (k.decode("latin-1").lower(), v.decode("latin-1"))
                        for k, v in self.response_headers
                    ),
                    secrets,
                )
            ),
            response_body=redact.scrub_values(bytes(self.captured), secrets),
            request_truncated=keep_request and len(self.request_body) > limit,
            response_truncated=not self.captured_all,
        )

    # -- the record -----------------------------------------------------------------------

    def _record(self) -> None:
        responded_at = datetime.now(UTC)
        status = self.status
        error = self.error_message
        if self.client_gone and not self.completed:
            status = CLIENT_CLOSED_REQUEST
            error = error or "client disconnected before the response was complete"
        elif status == 0:  # forwarded, yet no status was set: never store a status 0
            status = 502
            error = error or f"no answer was received from {self.provider}"
        model = self.model or (self.info.model if self.info else None) or "unknown"
        secrets = redact.credential_values(self.headers, self.scope["query_string"])
        if error is not None:
            error = redact.scrub_text_values(error, secrets)  # a provider may echo the key
        metadata, dropped = metadata_from(self.headers)
        self.ctx.metrics.metadata_dropped += dropped
        record = RequestRecord(
            id=self.id,
            api_key_id=self.key_id,
            provider=self.provider,
            model=model,
            request_path=redact.scrub_text(self.path),
            request_method=self.method,
            requested_at=self.requested_at,
            responded_at=responded_at,
            status_code=status,
            usage=self.usage or Usage(),
            response_time_ms=round((time.perf_counter() - self.t0) * 1000),
            time_to_first_byte_ms=self.ttfb_ms,
            streamed=self.streamed,
            provider_api_key_hash=credential_hash(self.headers, self.scope["query_string"]),
            provider_api_key_alias=_alias(self.headers),
            error_message=error,
            usage_error=self.usage_error,
            raw_metadata=metadata,
            exchange=self._exchange(status, secrets),
        )
        self.ctx.metrics.observe_request(self.provider, status, time.perf_counter() - self.t0)
        try:
            self.ctx.records.send_nowait(record)
        except trio.WouldBlock:
            # The writer is behind by logging.queue_size records: keep this one on disk
            # (a buffered append, no waiting); the writer replays it.
            self.ctx.spool.append([record], sync=False)
            self.ctx.metrics.records_spooled += 1


def _not_served(path: str) -> str:
    hint = providers.misrouted_hint(path)
    if hint is not None:
        return f"no provider serves {path}: {hint}"
    return (
        f"no provider serves {path}: Majordomo forwards /v1/... (OpenAI), "
        "/v1/messages (Anthropic) and .../models/MODEL:generateContent (Gemini); "
        "set X-Majordomo-Provider to choose one"
    )


def _alias(headers: RawHeaders) -> str | None:
    value = _header(headers, ALIAS_HEADER)
    return value.decode("utf-8", "replace") if value is not None else None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def handle_proxy(ctx: ProxyContext, scope: Scope, receive: Receive, send: Send) -> None:
    await ProxyRequest(ctx, scope, receive, send).run()
