"""Anthropic wire format: Messages (plain and streamed), token counting, batches.

Theory of operation
-------------------
Anthropic splits the prompt into three disjoint counts: `input_tokens` (uncached),
`cache_read_input_tokens` and `cache_creation_input_tokens`. Our `input_tokens` is their sum;
the two cache figures are also kept apart. Thinking is billed as output and already counted
in `output_tokens`; Anthropic does not report it separately, so `reasoning_tokens` stays 0.

A stream names every event (`event: message_start` ...). Usage arrives twice:
`message_start` carries the prompt counts and a provisional `output_tokens`; each
`message_delta` carries the cumulative `output_tokens` (the last one is final, never add them)
and, on newer API versions, the prompt counts again, which then override. The parser decodes
only those two event kinds, so a stream cut short still reports what `message_start` said.
The stream needs no rewriting: `feed` returns the bytes object it was given.
"""

from __future__ import annotations

from typing import Any

from majordomo.providers.common import (
    RequestInfo,
    dump_json,
    get_count,
    get_dict,
    get_str,
    has_count,
    load_json_object,
)
from majordomo.records import Usage
from majordomo.sse import DEFAULT_MAX_EVENT_SIZE, EventTooLarge, SSEDecoder, SSEEvent

NAME = "anthropic"
# The upstream unless `providers.anthropic.base_url` says otherwise (the SDK adds the version).
BASE_URL = "https://api.anthropic.com"
BASE_URL_HINT = "no /v1"
# Who bills the call, as genai-prices and llm-prices name them.
PRICE_PROVIDER = "anthropic"
LLM_PRICES_VENDOR = "anthropic"
# Where a held credential goes (`Authorization: Bearer …` / `x-api-key` / `x-goog-api-key`).
CREDENTIAL_HEADER = b"x-api-key"
CREDENTIAL_SCHEME = b""

_COUNT_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def request_info(
    path: str, query: str, body: bytes, *, inject_stream_usage: bool = True
) -> RequestInfo:
    """Read model and stream flag; the body always goes upstream untouched.

    `inject_stream_usage` is accepted for interface symmetry: Anthropic streams always
    report usage.
    """
    payload = load_json_object(body)
    if payload is None:
        return RequestInfo(model=None, stream=False, body=body)
    return RequestInfo(
        model=get_str(payload, "model"), stream=payload.get("stream") is True, body=body
    )


def usage_from_body(path: str, body: bytes) -> tuple[str | None, Usage | None]:
    """Model and usage of a message, or the count of a `count_tokens` answer."""
    payload = load_json_object(body)
    if payload is None:
        return None, None
    usage = payload.get("usage")
    if isinstance(usage, dict):
        return get_str(payload, "model"), _normalise_usage(usage)
    if has_count(payload, "input_tokens"):  # /v1/messages/count_tokens: {"input_tokens": N}
        return None, Usage(input_tokens=get_count(payload, "input_tokens"))
    return get_str(payload, "model"), None


def _normalise_usage(counts: dict[str, Any]) -> Usage:
    cache_read = get_count(counts, "cache_read_input_tokens")
    cache_creation = get_count(counts, "cache_creation_input_tokens")
    return Usage(
        input_tokens=get_count(counts, "input_tokens") + cache_read + cache_creation,
        output_tokens=get_count(counts, "output_tokens"),
        cached_tokens=cache_read,
        cache_creation_tokens=cache_creation,
    )


def error_body(status: int, message: str) -> bytes:
    """An error body the `anthropic` SDK raises as its usual `APIStatusError` subclass.

    The SDK picks the class from the HTTP status and keeps the parsed body; `error.type`
    and `error.message` are what callers read from it.
    """
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return dump_json({"type": "error", "error": {"type": kind, "message": message}})


class StreamParser:
    """Relay an Anthropic SSE stream untouched while learning its model and usage."""

    def __init__(
        self, *, strip_usage_chunk: bool = False, max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    ) -> None:
        # `strip_usage_chunk` is never set for Anthropic; accepted for interface symmetry.
        self._decoder = SSEDecoder(max_event_size)
        self._model: str | None = None
        self._counts: dict[str, Any] | None = None
        self.failure: str | None = None

    @property
    def model(self) -> str | None:
        """The model named by `message_start`."""
        return self._model

    @property
    def usage(self) -> Usage | None:
        """Usage so far: `message_start`'s, updated by every `message_delta`."""
        return None if self._counts is None else _normalise_usage(self._counts)

    def feed(self, data: bytes) -> bytes:
        """Consume a chunk; return `data` itself."""
        if self.failure is None:
            try:
                events = self._decoder.feed(data)
            except EventTooLarge as exc:
                self.failure = str(exc)
                return data
            for event in events:
                self._observe(event)
        return data

    def close(self) -> bytes:
        """End of stream: interpret a trailing event that had no blank line."""
        if self.failure is None:
            for event in self._decoder.close():
                self._observe(event)
        return b""

    def _observe(self, event: SSEEvent) -> None:
        kind = event.event
        if kind == "message":  # no `event:` line (not Anthropic's habit): sniff the type
            if '"message_start"' in event.data:
                kind = "message_start"
            elif '"message_delta"' in event.data:
                kind = "message_delta"
        if kind == "message_start":
            message = get_dict(load_json_object(event.data) or {}, "message")
            self._model = get_str(message, "model") or self._model
            self._merge_counts(get_dict(message, "usage"))
        elif kind == "message_delta":
            self._merge_counts(get_dict(load_json_object(event.data) or {}, "usage"))

    def _merge_counts(self, usage: dict[str, Any]) -> None:
        if not usage:
            return
        if self._counts is None:
            self._counts = {}
        # Null or absent fields leave the earlier value alone.
        self._counts.update({key: usage[key] for key in _COUNT_FIELDS if has_count(usage, key)})
