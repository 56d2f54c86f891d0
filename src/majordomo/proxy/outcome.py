"""How one forwarded request ended, and the usage record built from it (pure).

The handler forwards a request and gets back exactly one `Outcome`, decided where it happened
(the answer relayed in full, the provider unreachable or silent, the client gone); nothing is
inferred afterwards from flags. `build_record(request, outcome, tee)` turns the request as
received, that outcome and what the tee read from the answer into the `RequestRecord` the
writer stores, scrubbing every secret on the way (`redact.py`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from majordomo import redact
from majordomo.config import LoggingSettings
from majordomo.providers import RequestInfo
from majordomo.proxy.headers import RawHeaders, alias
from majordomo.proxy.tee import TeeResult
from majordomo.records import Exchange, RequestRecord, Usage

# The status recorded when the client went away before the response was complete
# (nginx's convention; it is never sent, there is nobody left to send it to).
CLIENT_CLOSED_REQUEST = 499


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request as received, authenticated and read, before it is forwarded."""

    id: uuid.UUID
    requested_at: datetime
    method: str
    path: str
    query: bytes
    headers: RawHeaders
    provider: str
    key_id: uuid.UUID
    body: bytes
    info: RequestInfo
    metadata: dict[str, str]
    # The credential that went upstream: its SHA-256 (the row's provider_api_key_hash), the
    # proxy key it came from, and, when the gateway supplied it, its value (scrubbed from
    # everything kept, like the caller's own credentials).
    credential_hash: str | None = None
    proxy_key_id: uuid.UUID | None = None
    held_secret: bytes | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How forwarding ended. `status` is what the row says (never 0); `error_message` says
    why a non-2xx ended so (the provider's own message, or ours)."""

    status: int
    error_message: str | None
    responded_at: datetime
    response_time_ms: int
    time_to_first_byte_ms: int | None
    streamed: bool
    response_headers: RawHeaders  # the provider's, as received (empty if none came)


def build_record(
    request: Incoming,
    outcome: Outcome,
    tee: TeeResult | None,
    *,
    bodies: LoggingSettings | None,
) -> RequestRecord:
    """The record of one forwarded request; `bodies` is set when bodies are kept."""
    secrets = redact.credential_values(request.headers, request.query)
    if request.held_secret is not None:
        secrets = tuple(sorted((*secrets, request.held_secret), key=len, reverse=True))
    error = outcome.error_message
    if error is not None:
        error = redact.scrub_text_values(error, secrets)  # a provider may echo the key
    model = (tee.model if tee else None) or request.info.model or "unknown"
    return RequestRecord(
        id=request.id,
        api_key_id=request.key_id,
        provider=request.provider,
        model=model,
        request_path=redact.scrub_text(request.path),
        request_method=request.method,
        requested_at=request.requested_at,
        responded_at=outcome.responded_at,
        status_code=outcome.status,
        usage=(tee.usage if tee else None) or Usage(),
        response_time_ms=outcome.response_time_ms,
        time_to_first_byte_ms=outcome.time_to_first_byte_ms,
        streamed=outcome.streamed,
        proxy_key_id=request.proxy_key_id,
        provider_api_key_hash=request.credential_hash,
        provider_api_key_alias=alias(request.headers),
        error_message=error,
        usage_error=tee.usage_error if tee else None,
        raw_metadata=request.metadata,
        exchange=_exchange(request, outcome, tee, secrets, bodies) if bodies else None,
    )


def _exchange(
    request: Incoming,
    outcome: Outcome,
    tee: TeeResult | None,
    secrets: tuple[bytes, ...],
    bodies: LoggingSettings,
) -> Exchange:
    """The full exchange, for body storage, with every secret already scrubbed: nothing
    downstream (spool, quarantine, body store) ever sees one."""
    limit = bodies.max_body_size
    keep_request = bodies.store_request_body
    return Exchange(
        method=request.method,
        path=redact.scrub_text_values(request.path, secrets),
        query=redact.scrub_text_values(
            redact.redact_query(request.query.decode("latin-1")), secrets
        ),
        request_headers=tuple(
            redact.redact_headers(
                ((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers),
                secrets,
            )
        ),
        request_body=redact.scrub_values(request.body[:limit], secrets) if keep_request else b"",
        response_status=outcome.status,
        response_headers=tuple(
            redact.redact_headers(
                (
                    (k.decode("latin-1").lower(), v.decode("latin-1"))
                    for k, v in outcome.response_headers
                ),
                secrets,
            )
        ),
        response_body=redact.scrub_values(tee.captured, secrets) if tee else b"",
        request_truncated=keep_request and len(request.body) > limit,
        response_truncated=not tee.captured_all if tee else False,
    )
