"""What every provider module shares: the request facts, the two protocols, JSON helpers.

A provider module is a plain module with the functions `ProviderModule` lists; nothing
registers itself. The helpers here never raise on odd input: the gateway forwards whatever
the client or the provider sent, and a body it cannot read only costs it the usage figures.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from majordomo.records import Usage

# Whitespace JSON allows before a value; matched instead of `bytes.lstrip()` to avoid copying
# a large body just to look at its first byte.
_LEADING_WS = re.compile(rb"[ \t\r\n]*")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the gateway learns from a request body before forwarding it.

    `body` is what to send upstream: the very bytes object received unless the provider module
    had to change it (OpenAI usage injection), in which case `strip_usage_chunk` tells the
    stream parser to hide the extra usage event from the client.
    """

    model: str | None
    stream: bool
    body: bytes
    strip_usage_chunk: bool = False


class StreamParserLike(Protocol):
    """A sans-IO tee over a response stream: forwards bytes, learns model and usage."""

    def feed(self, data: bytes) -> bytes:
        """Consume a chunk from upstream; return the bytes to relay to the client."""
        ...

    def close(self) -> bytes:
        """End of the upstream body; return any bytes still held back."""
        ...

    @property
    def model(self) -> str | None:
        """The model the provider says answered, once seen."""
        ...

    @property
    def usage(self) -> Usage | None:
        """The usage seen so far (final once the stream has ended)."""
        ...

    @property
    def failure(self) -> str | None:
        """Why usage stopped being read (an event over `max_event_size`), else None. From
        then on `feed` relays its input untouched and learns nothing more."""
        ...


class ProviderModule(Protocol):
    """What every module in `majordomo.providers` declares and exposes."""

    NAME: str
    BASE_URL: str
    BASE_URL_HINT: str  # what the base URL leaves out, for its setting's description
    PRICE_PROVIDER: str  # genai-prices' provider id
    LLM_PRICES_VENDOR: str
    # Where this wire format carries the provider credential, and what precedes it there.
    CREDENTIAL_HEADER: bytes
    CREDENTIAL_SCHEME: bytes

    def request_info(
        self, path: str, query: str, body: bytes, *, inject_stream_usage: bool = True
    ) -> RequestInfo:
        """Inspect a request body; never raises."""
        ...

    def usage_from_body(self, path: str, body: bytes) -> tuple[str | None, Usage | None]:
        """Model and usage of a complete (non-stream) response body; never raises."""
        ...

    def error_body(self, status: int, message: str) -> bytes:
        """A JSON error body the provider's own SDK turns into its usual exception."""
        ...

    def StreamParser(
        self, *, strip_usage_chunk: bool = False, max_event_size: int = ...
    ) -> StreamParserLike:
        """Start parsing one response stream, holding at most `max_event_size` bytes of it."""
        ...


def load_json(text: bytes | str) -> Any:
    """Parse a JSON object or array, or return None for anything else (including bad JSON).

    Only bodies opening with `{` or `[` are handed to the JSON parser: a multipart upload
    or binary body is turned down after one byte instead of being decoded whole.
    """
    if isinstance(text, str):
        text = text.lstrip()
        if not text.startswith(("{", "[")):
            return None
    else:
        start = _LEADING_WS.match(text)
        first = text[start.end() : start.end() + 1] if start else b""
        if first not in (b"{", b"["):
            return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def load_json_object(text: bytes | str) -> dict[str, Any] | None:
    """Parse a JSON object; None for anything else."""
    value = load_json(text)
    return value if isinstance(value, dict) else None


def get_dict(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    """`mapping[key]` if it is an object, else an empty dict (absent, null or malformed)."""
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def get_str(mapping: dict[str, Any], key: str) -> str | None:
    """`mapping[key]` if it is a non-empty string, else None."""
    value = mapping.get(key)
    return value if isinstance(value, str) and value else None


def get_count(mapping: dict[str, Any], key: str) -> int:
    """`mapping[key]` as a token count: a non-negative int, else 0 (never a bool or a float)."""
    value = mapping.get(key)
    return value if type(value) is int and value >= 0 else 0


def has_count(mapping: dict[str, Any], key: str) -> bool:
    """Whether `mapping[key]` is a usable token count (absent and null are not)."""
    value = mapping.get(key)
    return type(value) is int and value >= 0


def dump_json(value: Any) -> bytes:
    """Compact JSON bytes; ASCII-escaped so that lone surrogates can never fail to encode."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")
