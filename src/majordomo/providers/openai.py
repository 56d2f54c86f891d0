"""OpenAI wire format: Chat Completions, legacy Completions, Embeddings, Responses.

Theory of operation
-------------------
Usage lives in one `usage` object, in one of two dialects: `prompt_tokens` /
`completion_tokens` (chat, completions, embeddings) or `input_tokens` / `output_tokens`
(Responses, audio). Both already count cache reads inside the prompt figure and reasoning
inside the completion figure, which is exactly our `Usage` convention.

A streamed chat or completions call reports usage only when the client asked for it with
`stream_options.include_usage`. Most clients do not, so `request_info` adds it (the request is
otherwise left byte-identical) and marks the request `strip_usage_chunk`. The `StreamParser`
then restores the stream the client would have seen without that option:

* it relays whole SSE events only, holding back the bytes of an event until its blank line;
* it drops the extra usage event (`"choices": []` and a non-null `usage`), after reading it;
* it removes the `,"usage":null` member the option adds to every other chunk (the sequence
  cannot occur inside a JSON string, where the quote would be escaped).

Without stripping, the parser hands back the very bytes object it was given and only decodes
the JSON of the first event (for the model) and of events carrying a non-null `usage`.
Responses streams need no injection: `response.completed` (or `.incomplete` / `.failed`)
carries `response.usage`, and `response.created` names the model.
"""

from __future__ import annotations

import re
from typing import Any

from majordomo.providers.common import (
    RequestInfo,
    dump_json,
    get_count,
    get_dict,
    get_str,
    load_json_object,
)
from majordomo.records import Usage
from majordomo.sse import DEFAULT_MAX_EVENT_SIZE, EventTooLarge, SSEDecoder

NAME = "openai"
# The upstream unless `providers.openai.base_url` says otherwise (the SDK adds the version).
BASE_URL = "https://api.openai.com"
BASE_URL_HINT = "no /v1"
# Who bills the call, as genai-prices and llm-prices name them.
PRICE_PROVIDER = "openai"
LLM_PRICES_VENDOR = "openai"
# Where a held credential goes (`Authorization: Bearer …` / `x-api-key` / `x-goog-api-key`).
CREDENTIAL_HEADER = b"authorization"
CREDENTIAL_SCHEME = b"Bearer "

# Streaming endpoints that honour `stream_options.include_usage`, under whatever prefix the
# serving provider puts its OpenAI-compatible API (`/v1/`, Gemini's `/v1beta/openai/`).
_USAGE_OPTION_PATHS = ("/chat/completions", "/completions")
# Inserted right after the body's opening brace, so the rest of the body is untouched.
_INCLUDE_USAGE_MEMBER = b'"stream_options":{"include_usage":true},'
# What `include_usage` adds to every chunk but the usage one (OpenAI writes compact JSON).
_NULL_USAGE_MEMBER = b',"usage":null'
# The end of an SSE event: a line terminator followed by an empty line. The atomic groups stop
# a CR LF from being read as two terminators.
_EVENT_END = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")
# A `usage` member holding an object (not null), however the JSON is spaced.
_USAGE_OBJECT = re.compile(r'"usage"\s*:\s*\{')
_CR = 0x0D
_MISSING: Any = object()

_ERROR_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


def request_info(
    path: str, query: str, body: bytes, *, inject_stream_usage: bool = True
) -> RequestInfo:
    """Read model and stream flag; ask a streamed chat/completions call to report its usage.

    The returned body is `body` itself unless usage reporting was injected.
    """
    payload = load_json_object(body)
    if payload is None:
        return RequestInfo(model=None, stream=False, body=body)
    model = get_str(payload, "model")
    stream = payload.get("stream") is True
    if stream and inject_stream_usage and path.rstrip("/").endswith(_USAGE_OPTION_PATHS):
        injected = _inject_include_usage(body, payload)
        if injected is not None:
            return RequestInfo(model=model, stream=True, body=injected, strip_usage_chunk=True)
    return RequestInfo(model=model, stream=stream, body=body)


def _inject_include_usage(body: bytes, payload: dict[str, Any]) -> bytes | None:
    """The body with `stream_options.include_usage` set, or None if it needs no change."""
    options = payload.get("stream_options", _MISSING)
    if options is _MISSING:
        brace = body.index(b"{")  # load_json_object saw an object: the first brace opens it
        return body[: brace + 1] + _INCLUDE_USAGE_MEMBER + body[brace + 1 :]
    if options is None:
        options = {}
    if not isinstance(options, dict) or options.get("include_usage") is True:
        # Already reporting, or malformed: the provider answers that one itself.
        return None
    payload["stream_options"] = {**options, "include_usage": True}
    return dump_json(payload)


def usage_from_body(path: str, body: bytes) -> tuple[str | None, Usage | None]:
    """Model and usage of a complete JSON response (chat, completions, embeddings, Responses)."""
    payload = load_json_object(body)
    if payload is None:
        return None, None
    return _extract_model(payload), _extract_usage(payload)


def _extract_model(payload: dict[str, Any]) -> str | None:
    # Responses stream events nest the response object; everything else is flat.
    return get_str(payload, "model") or get_str(get_dict(payload, "response"), "model")


def _extract_usage(payload: dict[str, Any]) -> Usage | None:
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        usage = get_dict(payload, "response").get("usage")
        if not isinstance(usage, dict):
            return None
    return _normalise_usage(usage)


def _normalise_usage(usage: dict[str, Any]) -> Usage | None:
    if "prompt_tokens" in usage:
        return Usage(
            input_tokens=get_count(usage, "prompt_tokens"),
            output_tokens=get_count(usage, "completion_tokens"),  # absent for embeddings
            cached_tokens=get_count(get_dict(usage, "prompt_tokens_details"), "cached_tokens"),
            reasoning_tokens=get_count(
                get_dict(usage, "completion_tokens_details"), "reasoning_tokens"
            ),
        )
    if "input_tokens" in usage:
        return Usage(
            input_tokens=get_count(usage, "input_tokens"),
            output_tokens=get_count(usage, "output_tokens"),
            cached_tokens=get_count(get_dict(usage, "input_tokens_details"), "cached_tokens"),
            reasoning_tokens=get_count(
                get_dict(usage, "output_tokens_details"), "reasoning_tokens"
            ),
        )
    return None  # e.g. audio billed by duration


def error_body(status: int, message: str) -> bytes:
    """An error body the `openai` SDK raises as its usual `APIStatusError` subclass.

    The SDK reads `error.message`, `.type`, `.param` and `.code`; the exception class comes
    from the HTTP status.
    """
    kind, code = _ERROR_KINDS.get(
        status, ("server_error", None) if status >= 500 else ("invalid_request_error", None)
    )
    return dump_json({"error": {"message": message, "type": kind, "param": None, "code": code}})


class StreamParser:
    """Relay an OpenAI SSE stream while learning its model and usage (see the module doc)."""

    def __init__(
        self, *, strip_usage_chunk: bool = False, max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    ) -> None:
        self._strip = strip_usage_chunk
        self._max = max_event_size
        self._decoder = SSEDecoder(max_event_size)
        self.failure: str | None = None
        self._held = b""  # strip mode: bytes after the last complete event
        self._model: str | None = None
        self._usage: Usage | None = None
        self._looking_for_model = True

    @property
    def model(self) -> str | None:
        """The model named by the first event (or by the usage event)."""
        return self._model

    @property
    def usage(self) -> Usage | None:
        """The usage reported by the stream, if it reported any yet."""
        return self._usage

    def feed(self, data: bytes) -> bytes:
        """Consume a chunk; return what to relay (`data` itself unless stripping)."""
        if self.failure is not None:
            return data
        if self._strip:
            return self._feed_stripping(data)
        try:
            events = self._decoder.feed(data)
        except EventTooLarge as exc:
            self.failure = str(exc)
            return data
        for event in events:
            self._observe(event.data)
        return data

    def close(self) -> bytes:
        """End of stream: flush a trailing event that had no blank line."""
        if self.failure is not None:
            return b""
        if self._strip:
            tail, self._held = self._held, b""
            return self._filter_events(tail, [len(tail)]) if tail else b""
        for event in self._decoder.close():
            self._observe(event.data)
        return b""

    def _observe(self, data: str) -> None:
        """Look at one event's data, decoding its JSON only when it can tell us something."""
        # The substring test rejects nearly every event at C speed; the regex then tells a
        # usage object from the `"usage":null` of ordinary chunks.
        has_usage = '"usage"' in data and _USAGE_OBJECT.search(data) is not None
        if not (has_usage or self._looking_for_model):
            return
        payload = load_json_object(data)
        if payload is None:
            return
        # Every chat/completions chunk names the model and Responses' first event does:
        # one decoded event is enough; the usage event may name it as well.
        self._looking_for_model = False
        if self._model is None:
            self._model = _extract_model(payload)
        if has_usage:
            self._usage = _extract_usage(payload) or self._usage

    def _feed_stripping(self, data: bytes) -> bytes:
        held = self._held
        buffer = held + data if held else data
        # Only a boundary reaching into the new bytes can be new; one is at most 4 bytes long.
        ends = [m.end() for m in _EVENT_END.finditer(buffer, max(0, len(held) - 3))]
        if ends and ends[-1] == len(buffer) and buffer[-1] == _CR:
            ends.pop()  # "\r" then maybe "\n" in the next chunk: wait for it
        if not ends:
            if len(buffer) > self._max:
                # No event end in sight: stop holding (and stripping); relay what was held.
                self.failure = str(EventTooLarge(self._max))
                self._held = b""
                return buffer
            self._held = buffer
            return b""
        self._held = buffer[ends[-1] :]
        return self._filter_events(buffer[: ends[-1]], ends)

    def _filter_events(self, events: bytes, ends: list[int]) -> bytes:
        """Relay complete `events` (ending at offsets `ends`) as the client expects them."""
        if self._looking_for_model:
            self._observe_raw(events[: ends[0]])
        events = events.replace(_NULL_USAGE_MEMBER, b"")
        if b'"usage"' not in events:
            return events
        # Rare: the usage event is here. Offsets moved with the replace; find events again.
        kept: list[bytes] = []
        start = 0
        for end in [m.end() for m in _EVENT_END.finditer(events)] or [len(events)]:
            event = events[start:end]
            start = end
            if not (b'"usage"' in event and self._consume_usage_event(event)):
                kept.append(event)
        kept.append(events[start:])  # a trailing event without blank line (close)
        return b"".join(kept)

    def _observe_raw(self, event: bytes) -> None:
        decoder = SSEDecoder(max_event_size=len(event) + 1)  # already held: no more to bound
        for decoded in decoder.feed(event) + decoder.close():
            self._observe(decoded.data)

    def _consume_usage_event(self, event: bytes) -> bool:
        """Record the usage an event carries; True if it is the injected usage-only event."""
        decoder = SSEDecoder(max_event_size=len(event) + 1)  # already held: no more to bound
        for decoded in decoder.feed(event) + decoder.close():
            payload = load_json_object(decoded.data)
            if payload is None:
                continue
            usage = _extract_usage(payload)
            if usage is None:
                continue
            self._usage = usage
            self._model = self._model or _extract_model(payload)
            return payload.get("choices") == []
        return False
