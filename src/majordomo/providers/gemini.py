"""Google Gemini API wire format: generateContent (plain and streamed), countTokens, embeddings.

Theory of operation
-------------------
The model and the method are in the path (`/v1beta/models/gemini-2.5-flash:generateContent`),
never in the body, which therefore always goes upstream untouched.

Usage is `usageMetadata`. `promptTokenCount` already includes `cachedContentTokenCount`
(cache reads); tool-use prompt tokens are counted apart (`toolUsePromptTokenCount`) and are
added to the input. Thinking is counted apart too (`thoughtsTokenCount`): our output is
`candidatesTokenCount + thoughtsTokenCount`, and the thoughts are also the reasoning tokens.

`streamGenerateContent` answers in one of two layouts, and the parser picks from the first
non-blank byte:

* `?alt=sse`: SSE events (`data: {...}` + CR LF CR LF), each one GenerateContentResponse;
* otherwise a JSON array delivered piecemeal, `[{...}\\n,\\r\\n{...}\\n]`. A small scanner
  tracks string and nesting state across chunks to cut out each top-level element; it never
  buffers more than the element in progress.

Every chunk repeats `usageMetadata` and the last one is final, so the parser keeps only the
raw text of the latest chunk mentioning it and decodes it once, when `usage` is read.
"""

from __future__ import annotations

import re
from typing import Any

from majordomo.providers.common import (
    RequestInfo,
    dump_json,
    get_count,
    get_str,
    load_json,
    load_json_object,
)
from majordomo.records import Usage
from majordomo.sse import DEFAULT_MAX_EVENT_SIZE, EventTooLarge, SSEDecoder

NAME = "gemini"
# The upstream unless `providers.gemini.base_url` says otherwise (the SDK adds the version).
BASE_URL = "https://generativelanguage.googleapis.com"
BASE_URL_HINT = "no /v1beta"
# Who bills the call, as genai-prices and llm-prices name them.
PRICE_PROVIDER = "google"
LLM_PRICES_VENDOR = "google"
# Where a held credential goes (`Authorization: Bearer …` / `x-api-key` / `x-goog-api-key`).
CREDENTIAL_HEADER = b"x-goog-api-key"
CREDENTIAL_SCHEME = b""

# `.../models/<model>:<method>` or `.../tunedModels/<model>:<method>` at the end of the path.
_MODEL_METHOD = re.compile(r"/(models|tunedModels)/([^/:]+):([A-Za-z]+)$")
_STREAM_METHOD = "streamGenerateContent"
_COUNT_METHOD = "countTokens"

_USAGE_KEY = "usageMetadata"
_BLANK = b" \t\r\n"
# Scanner: outside strings only braces, brackets and quotes matter; inside, quote and escape.
_STRUCTURE = re.compile(rb'[{}\[\]"]')
_STRING_STOP = re.compile(rb'["\\]')
_QUOTE = 0x22
_OPEN = frozenset(b"{[")
_BRACE = 0x7B

_ERROR_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",  # google.rpc has no "too large" code; Google answers 400 for it
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _split_path(path: str) -> tuple[str | None, str | None]:
    """(model, method) from a Gemini path; a tuned model keeps its `tunedModels/` prefix."""
    match = _MODEL_METHOD.search(path)
    if match is None:
        return None, None
    collection, model, method = match.groups()
    return (model if collection == "models" else f"{collection}/{model}"), method


def request_info(
    path: str, query: str, body: bytes, *, inject_stream_usage: bool = True
) -> RequestInfo:
    """Model and stream flag from the path; the body is never read nor changed.

    `inject_stream_usage` is accepted for interface symmetry: Gemini streams always report
    usage.
    """
    model, method = _split_path(path)
    return RequestInfo(model=model, stream=method == _STREAM_METHOD, body=body)


def usage_from_body(path: str, body: bytes) -> tuple[str | None, Usage | None]:
    """Model and usage of generateContent or countTokens; embeddings report no usage.

    The model is the response's `modelVersion`, else the one in the path. A whole
    streamGenerateContent array is accepted too (its last usage is final).
    """
    path_model, method = _split_path(path)
    payload = load_json(body)
    if isinstance(payload, list):  # a buffered stream
        chunks = [c for c in payload if isinstance(c, dict) and _USAGE_KEY in c]
        payload = chunks[-1] if chunks else None
    if not isinstance(payload, dict):
        return path_model, None
    model = get_str(payload, "modelVersion") or path_model
    if method == _COUNT_METHOD or "totalTokens" in payload:
        return model, Usage(
            input_tokens=get_count(payload, "totalTokens"),
            cached_tokens=get_count(payload, "cachedContentTokenCount"),
        )
    metadata = payload.get(_USAGE_KEY)
    return model, _normalise_usage(metadata) if isinstance(metadata, dict) else None


def _normalise_usage(metadata: dict[str, Any]) -> Usage:
    thoughts = get_count(metadata, "thoughtsTokenCount")
    return Usage(
        input_tokens=get_count(metadata, "promptTokenCount")
        + get_count(metadata, "toolUsePromptTokenCount"),
        output_tokens=get_count(metadata, "candidatesTokenCount") + thoughts,
        cached_tokens=get_count(metadata, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def error_body(status: int, message: str) -> bytes:
    """An error body `google-genai` raises as `ClientError` / `ServerError`.

    The SDK reads `error.code`, `error.message` and `error.status`.
    """
    kind = _ERROR_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    return dump_json({"error": {"code": status, "message": message, "status": kind}})


class StreamParser:
    """Relay a streamGenerateContent body untouched while learning its model and usage."""

    def __init__(
        self, *, strip_usage_chunk: bool = False, max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    ) -> None:
        # `strip_usage_chunk` is never set for Gemini; accepted for interface symmetry.
        self._mode: str | None = None  # "sse" or "json", from the first non-blank byte
        self._max = max_event_size
        self._decoder = SSEDecoder(max_event_size)
        self.failure: str | None = None
        # JSON scanner state, carried across chunks.
        self._depth = 0
        self._element_depth = 1  # elements are the objects inside the top-level array
        self._in_string = False
        self._skip = 0  # bytes to skip at the start of the next chunk (an escaped character)
        self._element: list[bytes] = []  # pieces of the element in progress
        self._element_size = 0
        self._element_open = False
        # Raw text of the latest chunk with usage (and of the first chunk, for the model);
        # decoded lazily, once.
        self._first: bytes | str | None = None
        self._latest: bytes | str | None = None
        self._decoded_from: bytes | str | None = None
        self._decoded: dict[str, Any] = {}

    @property
    def model(self) -> str | None:
        """The `modelVersion` of the stream's chunks."""
        model = get_str(self._latest_chunk(), "modelVersion")
        if model is None and self._first is not None:
            model = get_str(load_json_object(self._first) or {}, "modelVersion")
        return model

    @property
    def usage(self) -> Usage | None:
        """The `usageMetadata` of the latest chunk that had one."""
        metadata = self._latest_chunk().get(_USAGE_KEY)
        return _normalise_usage(metadata) if isinstance(metadata, dict) else None

    def feed(self, data: bytes) -> bytes:
        """Consume a chunk; return `data` itself."""
        if not data or self.failure is not None:
            return data
        if self._mode is None:
            stripped = data.lstrip(_BLANK)
            if not stripped:
                return data  # nothing but blank lines yet: meaningless in either layout
            self._mode = "json" if stripped[0] in _OPEN else "sse"
            if stripped[0] == _BRACE:
                self._element_depth = 0  # a lone object (e.g. an error) instead of an array
        try:
            if self._mode == "sse":
                for event in self._decoder.feed(data):
                    self._observe(event.data)
            else:
                self._scan(data)
        except EventTooLarge as exc:
            self.failure = str(exc)
            self._element = []
        return data

    def close(self) -> bytes:
        """End of stream: interpret a trailing SSE event that had no blank line."""
        if self._mode == "sse" and self.failure is None:
            for event in self._decoder.close():
                self._observe(event.data)
        return b""

    def _observe(self, chunk: bytes | str) -> None:
        if self._first is None:
            self._first = chunk
        # SSE events arrive decoded, array elements as bytes.
        if isinstance(chunk, bytes):
            if b'"usageMetadata"' in chunk:
                self._latest = chunk
        elif '"usageMetadata"' in chunk:
            self._latest = chunk

    def _latest_chunk(self) -> dict[str, Any]:
        if self._latest is not self._decoded_from:
            self._decoded_from = self._latest
            self._decoded = load_json_object(self._latest or b"") or {}
        return self._decoded

    def _scan(self, data: bytes) -> None:
        """Cut complete top-level elements out of the JSON array, across chunk borders."""
        position = self._skip
        self._skip = 0
        start = 0  # where the element in progress begins within `data`
        end = len(data)
        while position < end:
            if self._in_string:
                match = _STRING_STOP.search(data, position)
                if match is None:
                    break
                position = match.end()
                if data[match.start()] == _QUOTE:
                    self._in_string = False
                elif position == end:
                    self._skip = 1  # the escaped character opens the next chunk
                else:
                    position += 1
                continue
            match = _STRUCTURE.search(data, position)
            if match is None:
                break
            position = match.end()
            char = data[match.start()]
            if char == _QUOTE:
                self._in_string = True
            elif char in _OPEN:
                if self._depth == self._element_depth and char == _BRACE:
                    self._element_open = True
                    start = match.start()
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth == self._element_depth and self._element_open:
                    self._element.append(data[start:position])
                    self._observe(b"".join(self._element))
                    self._element = []
                    self._element_size = 0
                    self._element_open = False
        if self._element_open:
            self._element_size += len(data) - start
            if self._element_size > self._max:
                raise EventTooLarge(self._max)
            self._element.append(data[start:])
