"""Secrets scrubbed at the source: pure functions over headers, queries, bodies and text.

Theory of operation
-------------------
A request's secrets are its Majordomo key (`X-Majordomo-Key`), a proxy key (`mdm_pk_…`) and
the provider credential the caller sent (`Authorization`, `x-api-key`, `x-goog-api-key`,
`api-key`, `?key=`), plus cookies. The proxy scrubs them when it builds what outlives the
request — the `Exchange` kept for body storage, the metadata, the error message — so the
spool, the quarantine file, the body store and the log never receive them and cannot forget
to remove them. The body store applies the same functions again on what it writes (belt and
braces), and the process log runs every line through `scrub_text`.

Three kinds of scrubbing:

* by name: credential headers and query parameters have their value replaced whole
  (`redact_headers`, `redact_query`);
* by shape: anything that looks like a Majordomo key (`mdm_sk_…`, `mdm_pk_…`) is masked in
  any text (`scrub_text`, `scrub_bytes`) — a client that put one in a metadata header or a body;
* by value: the exact credential values of this request (`credential_values`) are masked
  wherever they appear (`scrub_values`), e.g. a provider error echoing the key it refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from urllib.parse import parse_qsl, unquote_plus

REDACTED = "[REDACTED]"
_REDACTED_BYTES = REDACTED.encode()

# Headers that carry credentials (ours, the client's provider key, session cookies).
# `api-key` is Azure OpenAI's spelling. Other X-Majordomo-* headers are metadata and kept.
SECRET_HEADERS = frozenset(
    {
        "x-majordomo-key",
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "x-goog-api-key",
        "api-key",
        "cookie",
        "set-cookie",
    }
)
_SECRET_HEADER_BYTES = frozenset(name.encode() for name in SECRET_HEADERS)
# Query parameters that carry credentials: Gemini's `?key=`, and the spellings other Google and
# OpenAI-compatible APIs accept for the same purpose.
SECRET_QUERY_PARAMS = frozenset({"key", "api_key", "access_token"})

# A Majordomo key or proxy key anywhere in text.
_KEY_SHAPE = re.compile(r"mdm_[sp]k_[A-Za-z0-9_\-]*")
_KEY_SHAPE_BYTES = re.compile(rb"mdm_[sp]k_[A-Za-z0-9_\-]*")
# Credential values shorter than this are not searched for in text: masking every "a" or
# "test" would garble bodies and protect nothing.
MIN_SECRET_LENGTH = 8
# Authorization schemes whose parameter is the credential itself.
_SCHEMES = (b"bearer ", b"basic ", b"token ")


def redact_headers(
    headers: Iterable[tuple[str, str]], secrets: Sequence[bytes] = ()
) -> list[tuple[str, str]]:
    """`headers` with every credential's value replaced by `[REDACTED]`, order kept.

    Names are compared case-insensitively and returned as given. Any other value has
    Majordomo keys and the given `secrets` masked.
    """
    return [
        (name, REDACTED if name.lower() in SECRET_HEADERS else scrub_text_values(value, secrets))
        for name, value in headers
    ]


def redact_query(query: str) -> str:
    """`query` with the values of `key=` (and `SECRET_QUERY_PARAMS`) replaced by `[REDACTED]`.

    Everything else stays byte-identical, including order, encoding and empty parameters.
    Names are compared after percent-decoding, since `k%65y=` reaches Google as `key=`.
    """
    if not query:
        return query
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, sep, _ = part.partition("=")
        if unquote_plus(name).lower() in SECRET_QUERY_PARAMS:
            parts[i] = f"{name}={REDACTED}" if sep else name
    return scrub_text("&".join(parts))


def scrub_text(text: str) -> str:
    """`text` with every Majordomo key or proxy key masked."""
    if "mdm_" not in text:
        return text
    return _KEY_SHAPE.sub(REDACTED, text)


def scrub_bytes(data: bytes) -> bytes:
    """`data` with every Majordomo key or proxy key masked."""
    if b"mdm_" not in data:
        return data
    return _KEY_SHAPE_BYTES.sub(_REDACTED_BYTES, data)


def credential_values(headers: Iterable[tuple[bytes, bytes]], query: bytes) -> tuple[bytes, ...]:
    """The secret values a request carries in credential headers and query parameters.

    For `Authorization: Bearer X` both the whole value and `X` are returned, longest first,
    so that masking one never leaves part of the other behind.
    """
    found: set[bytes] = set()
    for name, value in headers:
        if name.lower() in _SECRET_HEADER_BYTES:
            value = value.strip()
            found.add(value)
            if value[:7].lower() in _SCHEMES or value[:6].lower() in _SCHEMES:
                found.add(value.split(b" ", 1)[1].strip())
    if query:
        for param, text in parse_qsl(query.decode("latin-1")):
            if param.lower() in SECRET_QUERY_PARAMS:
                found.add(text.encode("latin-1"))
    return tuple(sorted((v for v in found if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True))


def scrub_values(data: bytes, secrets: Sequence[bytes]) -> bytes:
    """`data` with each of `secrets` masked, and with Majordomo keys masked."""
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, _REDACTED_BYTES)
    return scrub_bytes(data)


def scrub_text_values(text: str, secrets: Sequence[bytes]) -> str:
    """`scrub_values` for text (secrets are compared in their latin-1 spelling)."""
    for secret in secrets:
        value = secret.decode("latin-1")
        if value in text:
            text = text.replace(value, REDACTED)
    return scrub_text(text)
