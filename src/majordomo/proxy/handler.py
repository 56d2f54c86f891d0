"""One proxied request, read top to bottom (`ProxyRequest.run`).

    detect the provider → authenticate (and choose the credential) → read the body →
    forward → relay → record

Each step either returns what the next one needs or refuses the request with `_Reply` (a
4xx/503 in the detected provider's error shape, before anything was forwarded: no row).
Forwarding returns one `Outcome` (`outcome.py`), decided where it happened; the response is
relayed chunk by chunk through a `Tee` (`tee.py`), which learns model and usage on the way.
Every forwarded request ends in exactly one record, even when forwarding is cut short.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import httpx
import trio

from majordomo import providers, redact
from majordomo.auth import KEY_PREFIX, KeyCache
from majordomo.config import Settings
from majordomo.credentials import PROXY_KEY_PREFIX, HeldCredentials
from majordomo.errors import DatabaseUnavailable, Unauthorized
from majordomo.limits import (
    NO_LIMITS,
    LeaseManager,
    Limits,
    LimitsExceeded,
    Refusal,
    Reservation,
    estimate_tokens,
)
from majordomo.metrics import Metrics
from majordomo.pricing import PriceBook
from majordomo.providers import PROVIDER_NAMES, Alias, ProviderModule, RequestInfo, anthropic_openai
from majordomo.providers.common import load_json_object
from majordomo.proxy.awssign import (
    AwsKeys,
    aws_keys,
    is_sigv4,
    sigv4_signed,
    without_signature,
)
from majordomo.proxy.headers import (
    KEY_HEADER,
    PROVIDER_HEADER,
    RawHeaders,
    connection_headers,
    downstream_headers,
    hash_of,
    header,
    metadata_from,
    our_key_in,
    sent_credentials,
    upstream_headers,
    with_credential,
    without_credentials,
    without_key_param,
)
from majordomo.proxy.outcome import CLIENT_CLOSED_REQUEST, Incoming, Outcome, build_record
from majordomo.proxy.tee import Tee, TeeResult
from majordomo.proxy.translation import AnswerTranslator
from majordomo.proxy.upstream import Upstream, Upstreams, check_target
from majordomo.records import RequestRecord, Usage
from majordomo.spool import Spool

log = logging.getLogger("majordomo.proxy")
access = logging.getLogger("majordomo.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# After a client disconnects mid-response, how long the upstream may take to finish (seconds).
DISCONNECT_GRACE = 0.5


@dataclass
class ProxyContext:
    """What every proxied request shares; built once by the supervisor."""

    settings: Settings
    http: httpx.AsyncClient
    keys: KeyCache
    credentials: HeldCredentials
    records: trio.MemorySendChannel[RequestRecord]
    upstreams: Upstreams
    spool: Spool
    metrics: Metrics
    limits: LeaseManager
    prices: PriceBook
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


async def handle_proxy(ctx: ProxyContext, scope: Scope, receive: Receive, send: Send) -> None:
    await ProxyRequest(ctx, scope, receive, send).run()


class _Reply(Exception):
    """Raised to answer the client with an error of our own, in the provider's format."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Limited(_Reply):
    """Over a key's limit: a 429 that leaves a row, with the seconds until there is room."""

    def __init__(self, refusal: Refusal, headers: RawHeaders) -> None:
        super().__init__(429, refusal.message)
        self.headers = [(b"retry-after", str(refusal.retry_after).encode()), *headers]


class _ClientTooSlow(Exception):
    """The client did not accept a chunk within `server.write_timeout`."""


@dataclass(frozen=True, slots=True)
class _Auth:
    """Who is calling, and what goes upstream as the provider credential."""

    key_id: uuid.UUID
    limits: Limits = NO_LIMITS
    # Set when the gateway supplies the credential: the header it goes in, and its value.
    credential: tuple[bytes, bytes] | None = None
    credential_hash: str | None = None
    proxy_key_id: uuid.UUID | None = None
    proxy_limits: Limits = NO_LIMITS
    held_secret: bytes | None = None
    # Set when the gateway signs the request itself (Bedrock with held AWS keys).
    aws: AwsKeys | None = None


@dataclass(frozen=True, slots=True)
class _Ending:
    """Where forwarding stopped: the status the row gets and, for ours, the message."""

    status: int
    error_message: str | None = None


class ProxyRequest:
    """One request. `run` is the whole story; the other methods are its steps."""

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
        self.query: bytes = scope["query_string"]
        # Until detection says otherwise, refusals speak OpenAI's error shape. `module` is the
        # client's wire format; `upstream_module` the provider's, which differs only when the
        # gateway translates (anthropic-openai): it places the credential and reads usage.
        self.module: ProviderModule = providers.get_provider("openai")
        self.upstream_module: ProviderModule = self.module
        self.provider = "openai"
        self.alias: Alias | None = None
        # When translating: whether the client asked for a usage chunk at the stream's end.
        self.include_usage = False
        # Where the upstream path differs from the client's: an alias (gemini-openai) or a
        # `providers.extra` provider chosen by its path prefix (/groq/v1/... → /v1/...).
        self.rewrite_path: Callable[[bytes], bytes] | None = None
        # Set while forwarding; read by the writes and the disconnect watcher.
        self.client_gone = False
        self.response_started = False
        self.ttfb_ms: int | None = None
        self.response_headers: RawHeaders = []
        self.tee: Tee | None = None
        self.reservations: list[Reservation] = []
        self.request: Incoming

    async def run(self) -> None:
        try:
            upstream = self._detect_provider()
            auth = await self._authenticate()
            headers, url = self._upstream_request(upstream, auth)
            body = await self._read_body()
            info = self._request_info(body)
            if auth.aws is not None:
                headers = self._signed(headers, url, info.body, auth.aws)
        except _Reply as reply:
            await self._refuse(reply)
            return
        metadata, dropped = metadata_from(self.headers)
        self.ctx.metrics.metadata_dropped += dropped
        self.request = request = Incoming(
            id=self.id,
            requested_at=self.requested_at,
            method=self.method,
            path=self.path,
            query=self.query,
            headers=self.headers,
            provider=self.provider,
            key_id=auth.key_id,
            # What went to the provider: a translated request is stored as translated.
            body=info.body,
            info=info,
            metadata=metadata,
            credential_hash=auth.credential_hash,
            proxy_key_id=auth.proxy_key_id,
            held_secret=auth.held_secret,
        )
        try:
            self.reservations = await self._admit(auth, info)
        except _Reply as reply:
            await self._refuse(reply)
            if isinstance(reply, _Limited):  # a refusal the usage report must show
                self._record(request, self._outcome(_Ending(429, reply.message), None), None)
            return
        ending: _Ending | None = None
        try:
            ending = await self._forward(request.info, headers, url)
        finally:
            if ending is None:  # forwarding was cancelled from outside (the server stopping)
                ending = self._cut_short()
            tee = self.tee.close() if self.tee is not None else None
            self._settle(tee)
            self._record(request, self._outcome(ending, tee), tee)

    # -- limits ------------------------------------------------------------------------------

    async def _admit(self, auth: _Auth, info: RequestInfo) -> list[Reservation]:
        """Reserve this request under its key's and its proxy key's limits; `_Limited` when
        over one."""
        owners = [(auth.key_id, auth.limits, "Majordomo key")]
        if auth.proxy_key_id is not None:
            owners.append((auth.proxy_key_id, auth.proxy_limits, "proxy key"))
        owners = [owner for owner in owners if owner[1].any]
        if not owners:
            return []
        tokens, cost = 0, Decimal(0)
        if any(o[1].tpm is not None or o[1].budget_usd is not None for o in owners):
            prompt, output = estimate_tokens(load_json_object(info.body), len(info.body))
            tokens = prompt + output
            usage = Usage(input_tokens=prompt, output_tokens=output)
            cost = self._cost(info.model, usage)
        try:
            return await self._reserve_all(owners, tokens, cost)
        except LimitsExceeded as exc:
            raise _Limited(exc.refusal, exc.headers) from None
        except DatabaseUnavailable as exc:
            raise _Reply(
                503, f"cannot check this key's limits right now ({exc}); retry in a moment"
            ) from None

    async def _reserve_all(
        self, owners: list[tuple[uuid.UUID, Limits, str]], tokens: int, cost: Decimal
    ) -> list[Reservation]:
        held: list[Reservation] = []
        try:
            for owner_id, limits, subject in owners:
                held.append(
                    await self.ctx.limits.admit(
                        owner_id, limits, tokens, cost, at=self.requested_at, subject=subject
                    )
                )
        except BaseException:  # refused by the second owner: the first gives back
            for reservation in held:
                self.ctx.limits.release(reservation)
            raise
        return held

    def _cost(self, model: str | None, usage: Usage) -> Decimal:
        priced = self.ctx.prices.cost(self.provider, model or "unknown", usage, self.requested_at)
        return Decimal(priced.total_cost)

    def _settle(self, tee: TeeResult | None) -> None:
        """Pay the exact tokens and cost of what the provider answered (nothing for none)."""
        if not self.reservations:
            return
        usage = tee.usage if tee is not None else None
        tokens, cost = 0, Decimal(0)
        if usage is not None:
            model = (tee.model if tee is not None else None) or self.request.info.model
            tokens, cost = usage.input_tokens + usage.output_tokens, self._cost(model, usage)
        for reservation in self.reservations:
            self.ctx.limits.settle(reservation, tokens, cost)

    # -- detect, authenticate, read ----------------------------------------------------------

    def _detect_provider(self) -> Upstream:
        """Choose the provider (and its wire format); return its upstream."""
        # An explicit provider is read first: even a refusal below speaks its error shape.
        override = header(self.headers, PROVIDER_HEADER)
        extras = self.ctx.settings.providers.extra
        if override is not None:
            name = override.decode("latin-1").strip().lower()
            alias = providers.ALIASES.get(name)
            if alias is not None:
                self.provider = alias.provider
                self.module = providers.get_provider(alias.wire_format)
                self.rewrite_path = alias.upstream_path
                if alias.translates is not None:
                    self._translate(alias, alias.translates[0])
            elif name in extras:
                self._use_extra(name)
            elif name in PROVIDER_NAMES:
                self._use(name)
            else:
                raise _Reply(
                    400,
                    f"X-Majordomo-Provider {name!r} is not a provider; use one of "
                    f"{', '.join((*PROVIDER_NAMES, *providers.ALIASES, *extras))}",
                )
        refused = check_target(self.method, self._raw_path())
        if refused is not None:
            raise _Reply(400, refused)
        if override is None:
            prefix = self.path.split("/", 2)[1] if self.path.count("/") >= 2 else ""
            if prefix in extras and self._raw_path().startswith(f"/{prefix}/".encode()):
                # /<name>/v1/...: a provider from providers.extra, its prefix not sent on
                self._use_extra(prefix)
                cut = len(prefix) + 1
                self.rewrite_path = lambda raw: raw[cut:]
            else:
                detected = providers.detect_provider(self.path, self.headers, self.query)
                if detected is None:
                    raise _Reply(404, _not_served(self.path))
                self._use(detected)
        upstream = self.ctx.upstreams.by_provider.get(self.provider)
        if upstream is None:
            raise _Reply(
                404,
                f"{self.provider} is not configured on this gateway: set "
                f"providers.{self.provider}.base_url (MAJORDOMO_PROVIDERS_"
                f"{self.provider.upper()}_BASE_URL) to its endpoint",
            )
        return upstream

    def _raw_path(self) -> bytes:
        raw: bytes = self.scope.get("raw_path") or self.path.encode()
        return raw

    def _use(self, provider: str) -> None:
        self.provider = provider
        self.module = providers.get_provider(providers.wire_format(self.path, provider))
        self.upstream_module = self.module

    def _translate(self, alias: Alias, served: str) -> None:
        """An alias the gateway translates for: one client path, the provider's wire format
        upstream."""
        if self.path.rstrip("/") != served or self.method != "POST":
            raise _Reply(
                404,
                f"{self.provider}-openai translates POST {served} only, not {self.method} "
                f"{self.path}; for the rest of {self.provider}'s API use its own SDK "
                f"(X-Majordomo-Provider: {self.provider})",
            )
        self.alias = alias
        self.upstream_module = providers.get_provider(alias.provider)

    def _use_extra(self, name: str) -> None:
        """A provider from `providers.extra`: OpenAI's wire format, billed under its name."""
        self.provider = name
        self.module = self.upstream_module = providers.get_provider("openai")

    async def _authenticate(self) -> _Auth:
        """Check the Majordomo key (in `X-Majordomo-Key`, or where the SDK puts its api_key)
        and choose the credential: the caller's own, or one the gateway holds."""
        sent = sent_credentials(self.headers, self.query)
        in_slot = next((c.value for c in sent if c.value.startswith(KEY_PREFIX)), None)
        proxy_key = next((c.value for c in sent if c.value.startswith(PROXY_KEY_PREFIX)), None)
        raw = header(self.headers, KEY_HEADER)
        given = raw.decode("latin-1").strip() if raw is not None else ""
        if not given and in_slot is not None:
            given = in_slot
        elif in_slot is not None and in_slot != given:
            raise _Reply(
                401,
                "the API key holds a different Majordomo key than X-Majordomo-Key; send one "
                "Majordomo key (in either place)",
            )
        if not given and proxy_key is not None:
            raise _Reply(
                401,
                "a proxy key (mdm_pk_...) was sent without its Majordomo key: send the "
                "Majordomo key in X-Majordomo-Key and the proxy key as the API key",
            )
        # A SigV4 signature covers the host it was made for: one made for the gateway cannot
        # go on to AWS, so the gateway signs with the credential it holds.
        signed_for_us = self.upstream_module.NAME == "bedrock" and is_sigv4(
            header(self.headers, b"authorization")
        )
        try:
            status = await self.ctx.keys.status(given or None)
            key_id, limits = status.key_id, status.limits
            if proxy_key is None and in_slot is None and not signed_for_us:
                own = sent[0].value if sent else None  # the caller's own credential
                credential = self._moved_credential(own)
                return _Auth(key_id, limits, credential=credential, credential_hash=hash_of(sent))
            held = (
                await self.ctx.credentials.for_proxy_key(key_id, proxy_key, self.provider)
                if proxy_key is not None
                else await self.ctx.credentials.for_key(key_id, self.provider)
            )
        except Unauthorized as exc:
            if signed_for_us and in_slot is None and proxy_key is None:
                raise _Reply(
                    401,
                    "the request is signed with the caller's own AWS keys, and a signature "
                    "made for the gateway's host cannot be forwarded to AWS: " + str(exc),
                ) from None
            raise _Reply(401, str(exc)) from None
        except DatabaseUnavailable as exc:
            raise _Reply(503, str(exc)) from None
        secret = held.secret.encode()
        keys = aws_keys(held.secret) if self.upstream_module.NAME == "bedrock" else None
        module = self.upstream_module
        return _Auth(
            key_id,
            limits,
            credential=None
            if keys is not None
            else (module.CREDENTIAL_HEADER, module.CREDENTIAL_SCHEME + secret),
            credential_hash=hashlib.sha256(secret).hexdigest(),
            proxy_key_id=held.proxy_key_id,
            proxy_limits=held.limits,
            held_secret=secret,
            aws=keys,
        )

    def _moved_credential(self, own: str | None) -> tuple[bytes, bytes] | None:
        """Where the caller's own credential goes when the client's wire format puts it
        elsewhere than the provider's (the openai SDK's bearer token as Anthropic's
        `x-api-key`); None when it goes as sent."""
        if self.upstream_module is self.module or not own:
            return None
        module = self.upstream_module
        return module.CREDENTIAL_HEADER, module.CREDENTIAL_SCHEME + own.encode("latin-1")

    def _upstream_request(self, upstream: Upstream, auth: _Auth) -> tuple[RawHeaders, httpx.URL]:
        """The headers and URL that go upstream; no Majordomo key or proxy key is in them."""
        headers = upstream_headers(self.headers)
        query = self.query
        if auth.held_secret is not None and self.upstream_module.NAME == "bedrock":
            headers = without_signature(headers)  # boto3's, made for the gateway
        if auth.credential is not None:
            headers = with_credential(headers, *auth.credential)
            query = without_key_param(query)
        elif auth.aws is not None:  # signed once the body is in (`_signed`)
            headers = without_credentials(headers)
        if self.alias is not None:
            headers = _translated_headers(headers)
        raw_path = self._raw_path()
        if self.rewrite_path is not None:
            raw_path = self.rewrite_path(raw_path)
        leak = our_key_in(headers, query, raw_path)
        if leak is not None:
            raise _Reply(
                400,
                f"a Majordomo key or proxy key is in {leak}, from where it would reach "
                f"{self.provider}; send the Majordomo key in X-Majordomo-Key or as the API "
                "key, and a proxy key as the API key, nowhere else",
            )
        target = raw_path + b"?" + query if query else raw_path
        try:
            return headers, upstream.url(target)
        except httpx.InvalidURL as exc:  # check_target passes only what a URL holds; still
            raise _Reply(400, f"the request target cannot be forwarded: {exc}") from None

    def _request_info(self, body: bytes) -> RequestInfo:
        """What the request says (model, stream) and the body to send: translated when the
        gateway translates, else as received (or with OpenAI's usage option added)."""
        if self.alias is None:
            return self.module.request_info(
                self.path,
                self.query.decode("latin-1"),
                body,
                inject_stream_usage=self.ctx.settings.providers.inject_stream_usage,
            )
        try:
            translated = anthropic_openai.translate_request(body)
        except anthropic_openai.Untranslatable as exc:
            raise _Reply(400, str(exc)) from None
        self.include_usage = translated.include_usage
        return RequestInfo(model=translated.model, stream=translated.stream, body=translated.body)

    def _signed(
        self, headers: RawHeaders, url: httpx.URL, body: bytes, keys: AwsKeys
    ) -> RawHeaders:
        """`headers` signed for AWS over the very URL and body that go upstream."""
        return sigv4_signed(
            headers,
            method=self.method,
            url=str(url),
            body=body,
            keys=keys,
            region=self.ctx.settings.providers.region("bedrock"),
        )

    async def _read_body(self) -> bytes:
        limit = self.ctx.settings.server.max_request_body
        declared = header(self.headers, b"content-length")
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

    async def _refuse(self, reply: _Reply) -> None:
        """Answer a request refused before forwarding; it leaves no row, so the access log
        line is written here."""
        await self._reply(
            reply.status, reply.message, reply.headers if isinstance(reply, _Limited) else []
        )
        if not self.ctx.settings.logging.access_log:
            return
        path = redact.scrub_text(self.path)
        access.info(
            "%s %s %s %d refused: %s",
            self.method,
            path,
            self.provider,
            reply.status,
            reply.message,
            extra={
                "request_id": str(self.id),
                "method": self.method,
                "path": path,
                "provider": self.provider,
                "status": reply.status,
            },
        )

    async def _reply(self, status: int, message: str, extra: RawHeaders | None = None) -> None:
        if self.client_gone:
            return
        body = self.module.error_body(status, message)
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", str(self.id).encode()),
                    *(extra or []),
                    *connection_headers(self.headers),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    # -- forward and relay -------------------------------------------------------------------

    async def _forward(self, info: RequestInfo, headers: RawHeaders, url: httpx.URL) -> _Ending:
        request = httpx.Request(
            self.method,
            url,
            headers=headers,
            content=info.body,
            extensions={"timeout": self.ctx.timeout},
        )
        # None until forwarding ends on its own; stays None if the disconnect watcher cut the
        # relay short.
        ending: _Ending | None = None
        # The watcher runs from the moment the request goes upstream: a client that gives up
        # while the provider is still thinking stops the upstream request too.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_for_disconnect, nursery.cancel_scope)
            sent_at = time.perf_counter()
            try:
                response = await self.ctx.http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                ending = self._failed(
                    504, f"{self.provider} did not answer in time ({_describe(exc)})"
                )
            except httpx.HTTPError as exc:
                ending = self._failed(502, f"cannot reach {self.provider}: {_describe(exc)}")
            except Exception as exc:  # a bug, or something httpx does not map: still a 502 row
                log.exception("forwarding to %s failed", self.provider)
                ending = self._failed(502, f"cannot forward to {self.provider}: {_describe(exc)}")
            else:
                upstream_ms = (time.perf_counter() - sent_at) * 1000
                try:
                    ending = await self._relay(response, info, upstream_ms)
                finally:
                    with trio.CancelScope(shield=True):
                        await response.aclose()
            nursery.cancel_scope.cancel()
        if ending is None:
            return _Ending(
                CLIENT_CLOSED_REQUEST, "client disconnected before the response was complete"
            )
        if ending.status in (502, 504) and not self.response_started:
            await self._reply(ending.status, ending.error_message or "")
        return ending

    def _failed(self, status: int, message: str) -> _Ending:
        log.warning(message, extra={"request_id": str(self.id), "provider": self.provider})
        if self.client_gone:  # nobody is waiting for the answer any more
            return _Ending(CLIENT_CLOSED_REQUEST, message)
        return _Ending(status, message)

    async def _watch_for_disconnect(self, relay: trio.CancelScope) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.client_gone = True
        # Let the upstream finish for a moment: a client that hangs up as soon as it has read
        # the last event (the openai SDK after `data: [DONE]`) received everything, and the
        # record must say so. A real abort stops the upstream after this grace.
        relay.deadline = min(relay.deadline, trio.current_time() + DISCONNECT_GRACE)

    async def _relay(
        self, response: httpx.Response, info: RequestInfo, upstream_ms: float
    ) -> _Ending:
        limits = self.ctx.settings.providers
        bodies = self.ctx.settings.logging
        self.response_headers = response.headers.raw
        status = response.status_code
        translator = (
            AnswerTranslator(
                status=status,
                stream=info.stream,
                include_usage=self.include_usage,
                created=int(self.requested_at.timestamp()),
                max_size=limits.max_event_size,
            )
            if self.alias is not None
            else None
        )
        tee = self.tee = Tee(
            self.upstream_module,
            self.path,
            status=response.status_code,
            stream=info.stream,
            strip_usage_chunk=info.strip_usage_chunk,
            content_encoding=response.headers.get("content-encoding", "identity"),
            max_event_size=limits.max_event_size,
            max_decompressed_size=limits.max_decompressed_size,
            capture_limit=bodies.max_body_size
            if self.ctx.keep_bodies and bodies.store_response_body
            else None,
            decoded=translator is not None,
        )
        if translator is not None:
            headers = translator.headers(self.response_headers)
        else:
            # Content-Length goes down only for a body the upstream framed by length (never
            # with a Transfer-Encoding beside it, which wins) that reaches the client unchanged.
            length_framed = "transfer-encoding" not in response.headers
            headers = downstream_headers(
                self.response_headers, keep_length=length_framed and not tee.edits
            )
        headers += connection_headers(self.headers)
        # Everything since the request arrived, less the wait for the provider's answer.
        overhead_ms = (time.perf_counter() - self.t0) * 1000 - upstream_ms
        headers.append((b"x-request-id", str(self.id).encode()))
        headers.append((b"x-majordomo-overhead-ms", f"{overhead_ms:.2f}".encode()))
        for reservation in self.reservations:
            headers += reservation.headers
        # A translated whole answer goes out once translated, its status and length with it.
        held = translator is not None and not translator.streamed
        try:
            if not held:
                await self._start(status, headers)
            # aclosing: a relay cut short (client gone, timeout) closes the generator at once.
            async with aclosing(cast(AsyncGenerator[bytes], response.aiter_raw())) as upstream:
                async for raw in upstream:
                    out = tee.feed(raw)
                    if translator is not None:
                        out = translator.feed(out)
                    if out:
                        await self._write(
                            {"type": "http.response.body", "body": out, "more_body": True}
                        )
            result = tee.close()  # the whole answer arrived
            tail = result.tail
            error_message = result.error_message
            if translator is not None:
                tail = translator.finish()
                status = translator.status
                error_message = translator.error_message or error_message
            if held:
                headers.append((b"content-length", str(len(tail)).encode()))
                await self._start(status, headers)
            if tail:
                await self._write({"type": "http.response.body", "body": tail, "more_body": True})
            await self._write({"type": "http.response.body", "body": b"", "more_body": False})
        except _ClientTooSlow:
            return _Ending(
                CLIENT_CLOSED_REQUEST,
                "client stopped reading for more than "
                f"{self.ctx.settings.server.write_timeout:g}s (server.write_timeout)",
            )
        except httpx.TimeoutException:
            return self._failed(
                504,
                f"{self.provider} went silent for more than {limits.idle_timeout:g}s mid-response",
            )
        except httpx.HTTPError as exc:
            return self._failed(502, f"{self.provider} broke off the response: {_describe(exc)}")
        return _Ending(status, error_message)

    async def _start(self, status: int, headers: RawHeaders) -> None:
        self.response_started = True
        await self._write({"type": "http.response.start", "status": status, "headers": headers})

    async def _write(self, message: Message) -> None:
        if self.client_gone:
            return  # nobody to write to; keep reading the upstream to its end
        if self.ttfb_ms is None and message["type"] == "http.response.body":
            self.ttfb_ms = round((time.perf_counter() - self.t0) * 1000)
        try:
            with trio.fail_after(self.ctx.settings.server.write_timeout):
                await self.send(message)
        except trio.TooSlowError:
            raise _ClientTooSlow from None

    # -- the record --------------------------------------------------------------------------

    def _cut_short(self) -> _Ending:
        if self.client_gone:
            return _Ending(
                CLIENT_CLOSED_REQUEST, "client disconnected before the response was complete"
            )
        if self.response_started:
            return _Ending(502, f"the gateway stopped before {self.provider}'s answer was complete")
        return _Ending(502, f"no answer was received from {self.provider}")

    def _outcome(self, ending: _Ending, tee: TeeResult | None) -> Outcome:
        return Outcome(
            status=ending.status,
            error_message=ending.error_message,
            responded_at=datetime.now(UTC),
            response_time_ms=round((time.perf_counter() - self.t0) * 1000),
            time_to_first_byte_ms=self.ttfb_ms,
            streamed=tee.streamed if tee is not None else False,
            response_headers=self.response_headers,
        )

    def _record(self, request: Incoming, outcome: Outcome, tee: TeeResult | None) -> None:
        record = build_record(
            request,
            outcome,
            tee,
            bodies=self.ctx.settings.logging if self.ctx.keep_bodies else None,
        )
        self.ctx.metrics.observe_request(
            self.provider, outcome.status, time.perf_counter() - self.t0
        )
        try:
            self.ctx.records.send_nowait(record)
        except trio.WouldBlock:
            # The writer is behind by logging.queue_size records: keep this one on disk
            # (a buffered append, no waiting); the writer replays it.
            self.ctx.spool.append([record], sync=False)
            self.ctx.metrics.records_spooled += 1


def _translated_headers(headers: RawHeaders) -> RawHeaders:
    """The headers of a translated request: Anthropic's API version added when the client
    (the openai SDK) did not name one; the body's length is set anew by the HTTP client."""
    if header(headers, b"anthropic-version") is None:
        headers = [*headers, (b"anthropic-version", anthropic_openai.ANTHROPIC_VERSION)]
    return headers


def _not_served(path: str) -> str:
    hint = providers.misrouted_hint(path)
    if hint is not None:
        return f"no provider serves {path}: {hint}"
    return (
        f"no provider serves {path}: Majordomo forwards /v1/... (OpenAI), "
        "/v1/messages (Anthropic) and .../models/MODEL:generateContent (Gemini); "
        "set X-Majordomo-Provider to choose one"
    )


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
