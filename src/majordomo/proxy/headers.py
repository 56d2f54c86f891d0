"""The headers of one proxied exchange: what goes upstream, what comes back, what is kept.

Pure functions over raw header lists (`[(name, value), …]`, names lower-case as the ASGI
server gives them): no I/O and no state, so each is tested on its own (`tests/test_proxy.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_to_bytes

from majordomo import redact

RawHeaders = list[tuple[bytes, bytes]]

METADATA_PREFIX = b"x-majordomo-"
KEY_HEADER = b"x-majordomo-key"
PROVIDER_HEADER = b"x-majordomo-provider"
ALIAS_HEADER = b"x-majordomo-provider-alias"
UPSTREAM_REQUEST_ID = b"x-upstream-request-id"
# Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those the
# HTTP client sets itself for the upstream connection.
HOP_BY_HOP = frozenset(
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
_NOT_FORWARDED_UP = HOP_BY_HOP | {b"host", b"content-length", b"accept-encoding"}
# hypercorn writes its own Date; the client gets our X-Request-Id (the provider's moves aside).
_NOT_FORWARDED_DOWN = HOP_BY_HOP | {b"date", b"x-request-id"}
# Limits on the caller's X-Majordomo-* metadata kept per request.
MAX_METADATA_KEYS = 32
MAX_METADATA_NAME = 128
MAX_METADATA_VALUE = 1024


def header(headers: RawHeaders, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def alias(headers: RawHeaders) -> str | None:
    """The caller's name for the provider credential it sent (`X-Majordomo-Provider-Alias`)."""
    value = header(headers, ALIAS_HEADER)
    return value.decode("utf-8", "replace") if value is not None else None


# Where SDKs put the provider credential (`api-key` is Azure OpenAI's), and the query parameter
# Gemini's REST examples use.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key", b"x-goog-api-key", b"api-key"})
KEY_PARAM = "key"
_SIGV4 = b"AWS4-HMAC-SHA256"
# Majordomo keys and proxy keys: never to leave for a provider.
_OUR_KEYS = (b"mdm_sk_", b"mdm_pk_")


@dataclass(frozen=True, slots=True)
class SentCredential:
    """A credential as the caller sent it: where (a header name, or `?key`) and its value
    (an `Authorization` scheme removed)."""

    where: str
    value: str


def sent_credentials(headers: RawHeaders, query: bytes) -> list[SentCredential]:
    """Every credential the caller sent, in every place an SDK puts one."""
    sent: list[SentCredential] = []
    for key, value in headers:
        if key in CREDENTIAL_HEADERS:
            if key == b"authorization" and value.startswith(_SIGV4):
                value = _access_key_id(value)
            elif key == b"authorization" and b" " in value:
                value = value.split(b" ", 1)[1]
            sent.append(SentCredential(key.decode("latin-1"), value.strip().decode("latin-1")))
    if b"key=" in query or b"%" in query:
        for name, text in parse_qsl(query.decode("latin-1")):
            if name == KEY_PARAM:
                sent.append(SentCredential("?key", text.strip()))
    return sent


def _access_key_id(authorization: bytes) -> bytes:
    """The access key id of a SigV4 `Authorization` (`… Credential=AKID/date/…`): boto3 puts
    its `aws_access_key_id` there, so a Majordomo key given as one is found."""
    _, found, rest = authorization.partition(b"Credential=")
    return rest.split(b"/", 1)[0].split(b",", 1)[0] if found else b""


def with_credential(headers: RawHeaders, name: bytes, value: bytes) -> RawHeaders:
    """`headers` with every credential header the caller sent replaced by `name: value`."""
    out = [(k, v) for k, v in headers if k not in CREDENTIAL_HEADERS]
    out.append((name, value))
    return out


def without_credentials(headers: RawHeaders) -> RawHeaders:
    """`headers` without any credential header (the gateway signs the request itself)."""
    return [(k, v) for k, v in headers if k not in CREDENTIAL_HEADERS]


def without_key_param(query: bytes) -> bytes:
    """The query string without its `key` parameter(s), however spelled; the rest as sent."""
    kept = [
        part
        for part in query.split(b"&")
        if unquote_to_bytes(part.split(b"=", 1)[0].replace(b"+", b" ")) != KEY_PARAM.encode()
    ]
    return b"&".join(kept)


def our_key_in(headers: RawHeaders, query: bytes, path: bytes) -> str | None:
    """Where a Majordomo key or a proxy key would leave for the provider, or None."""
    for key, value in headers:
        if any(ours in value for ours in _OUR_KEYS):
            return f"the {key.decode('latin-1')} header"
    for part, where in ((query, "the query string"), (path, "the path")):
        decoded = unquote_to_bytes(part) if b"%" in part else part
        if any(ours in decoded for ours in _OUR_KEYS):
            return where
    return None


def credential_hash(headers: RawHeaders, query: bytes) -> str | None:
    """SHA-256 of the caller's upstream credential (never the credential itself)."""
    return hash_of(sent_credentials(headers, query))


def hash_of(sent: list[SentCredential]) -> str | None:
    """SHA-256 of the first credential sent (a header before `?key`), or None."""
    if not sent or not sent[0].value:
        return None
    return hashlib.sha256(sent[0].value.encode("latin-1")).hexdigest()


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


def upstream_headers(headers: RawHeaders) -> RawHeaders:
    """The caller's headers as they go upstream: no hop-by-hop ones (those named by
    `Connection` included), no `X-Majordomo-*`, and an uncompressed answer asked for."""
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


def downstream_headers(upstream: RawHeaders, *, keep_length: bool) -> RawHeaders:
    """The provider's response headers as they go to the client: no hop-by-hop ones, no CORS
    policy of the provider's (see `cors.py`), its request id moved to `X-Upstream-Request-Id`,
    and `Content-Length` only when `keep_length` (the body reaches the client unchanged)."""
    out: RawHeaders = []
    for key, value in upstream:
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


def connection_headers(headers: RawHeaders) -> RawHeaders:
    """`Connection: close` for a request framed both by Content-Length and Transfer-Encoding:
    its end cannot be trusted, so neither can the next request on that connection
    (RFC 9112 §6.1)."""
    if header(headers, b"transfer-encoding") is not None and (
        header(headers, b"content-length") is not None
    ):
        return [(b"connection", b"close")]
    return []
