"""Amazon Bedrock Runtime wire format: Converse, InvokeModel and their streams.

Theory of operation
-------------------
The model and the operation are in the path, never in the body:
`/model/{modelId}/converse`, `converse-stream`, `invoke`, `invoke-with-response-stream` (and
`count-tokens`). boto3 percent-encodes the model id (`anthropic.claude-3-haiku-20240307-v1%3A0`,
an ARN's `/` as `%2F`) and the ASGI path arrives decoded once, so the id is everything between
`/model/` and the last `/`, decoded once more if a `%` is left (a raw path). The body
always goes upstream untouched. No answer names the model the caller is billed for (Converse
names none; InvokeModel of Claude gives Anthropic's own name for it), so the model is always
the path's: `usage_from_body` returns it, and the stream parser names none, which leaves the
request's.

Converse's `usage` keeps the prompt in three disjoint counts, as Anthropic does:
`inputTokens` is the uncached part alone, `cacheReadInputTokens` and `cacheWriteInputTokens`
come on top of it (and `totalTokens` sums all four). Our `input_tokens` is the sum of the
three, the two cache figures also kept apart. Raw answers repeat the cache figures as
`cacheReadInputTokenCount`/`cacheWriteInputTokenCount` (boto3 drops those); one spelling is
read, never both. InvokeModel answers are the model's own JSON: Anthropic's Messages (read by
`anthropic`), Nova's `usage` in Converse's shape, OpenAI-style `prompt_tokens` (gpt-oss,
Mistral), Meta's `prompt_token_count`/`generation_token_count`, Titan's `inputTextTokenCount`.
Other models' answers carry no usage (Bedrock then only tells it in response headers).

Streams are AWS event streams (`majordomo.eventstream`). The parser has no path, so it tells
the two operations apart by event type:

* ConverseStream sends `messageStart`, `contentBlockStart`/`Delta`/`Stop`, `messageStop`, then
  `metadata`, whose `usage` is Converse's; only that event is decoded.
* InvokeModelWithResponseStream sends `chunk` events, each `{"bytes": base64 of one native
  event}`. Claude's native events are Anthropic's stream events: `message_start` and
  `message_delta` are handed, as the SSE events they would have been, to an
  `anthropic.StreamParser`, the one owner of their arithmetic. Nova's end in a `metadata`
  holding Converse's `usage`. The last chunk also carries Bedrock's own
  `amazon-bedrock-invocationMetrics` (its `inputTokenCount` uncached too), the usage of last
  resort when the model reported none itself (Llama, Mistral ...). A chunk is parsed as JSON
  only when its decoded bytes mention one of those keys.

An exception message (`:message-type` exception, such as a `throttlingException` mid-stream)
ends the stream; usage stays what was seen before it. A framing fault (a bad CRC, a message
over `max_event_size`) sets `failure`: the bytes still flow to the client untouched, and
nothing more is learned from them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from majordomo.eventstream import EventMessage, EventStreamDecoder, EventStreamError
from majordomo.providers import anthropic, openai
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
from majordomo.sse import DEFAULT_MAX_EVENT_SIZE

NAME = "bedrock"
# The region whose endpoint is the default upstream (`providers.bedrock.region`).
DEFAULT_REGION = "us-east-1"


def base_url_for(region: str) -> str:
    """The Bedrock Runtime endpoint of an AWS region (China's regions are under .com.cn)."""
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://bedrock-runtime.{region}.{domain}"


# No fixed default: unless `providers.bedrock.base_url` is set, the upstream is the endpoint of
# `providers.bedrock.region` (`ProvidersSettings.base_urls`).
BASE_URL = ""
BASE_URL_HINT = "the Bedrock Runtime endpoint, https://bedrock-runtime.REGION.amazonaws.com"
# Who bills the call, as genai-prices and llm-prices name them. genai-prices matches Bedrock
# model ids by substring, so inference profiles (`us.`, `eu.`, `global.`) and ARNs resolve.
PRICE_PROVIDER = "aws"
LLM_PRICES_VENDOR = "amazon"
# A held Bedrock API key goes as a bearer token (held AWS keys sign the request instead).
CREDENTIAL_HEADER = b"authorization"
CREDENTIAL_SCHEME = b"Bearer "
# Where Bedrock Runtime's model operations live.
PATH_PREFIX = "/model/"

_CONVERSE = "converse"
_INVOKE = "invoke"
_COUNT_TOKENS = "count-tokens"
_STREAM_SUFFIX = "-stream"

# The code boto3 raises as its modeled exception, by HTTP status (Bedrock's own pairs).
_ERROR_CODES = {
    400: "ValidationException",
    401: "AccessDeniedException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    413: "ValidationException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}

# Native stream events worth decoding: Anthropic's two usage events, Nova's metadata, and
# Bedrock's closing metrics. Quoted: generated text that mentions them is escaped
# (`\"metadata\"`) and does not match; a false match would only cost one JSON parse.
_USAGE_KEYS = re.compile(
    rb'"(?:message_start|message_delta|metadata|amazon-bedrock-invocationMetrics)"'
)
_ANTHROPIC_USAGE_EVENTS = ("message_start", "message_delta")
_METRICS_KEY = "amazon-bedrock-invocationMetrics"


@dataclass(frozen=True, slots=True)
class _Counts:
    """Where one dialect puts its figures: the prompt's uncached part, the output, and the
    cache reads and writes (each under the first of its names that holds a count)."""

    uncached: str
    output: str
    cache_read: tuple[str, ...]
    cache_write: tuple[str, ...]

    def usage(self, counts: dict[str, Any]) -> Usage | None:
        if not (has_count(counts, self.uncached) or has_count(counts, self.output)):
            return None
        read, write = _first_count(counts, self.cache_read), _first_count(counts, self.cache_write)
        return Usage(
            input_tokens=get_count(counts, self.uncached) + read + write,
            output_tokens=get_count(counts, self.output),
            cached_tokens=read,
            cache_creation_tokens=write,
        )


def _first_count(counts: dict[str, Any], names: tuple[str, ...]) -> int:
    return next((get_count(counts, name) for name in names if has_count(counts, name)), 0)


# Converse's TokenUsage, also Nova's InvokeModel `usage` (which spells the cache figures
# `…TokenCount`; raw Converse answers carry both spellings).
_TOKEN_USAGE = _Counts(
    "inputTokens",
    "outputTokens",
    ("cacheReadInputTokens", "cacheReadInputTokenCount"),
    ("cacheWriteInputTokens", "cacheWriteInputTokenCount"),
)
# Bedrock's own figures closing every InvokeModel stream.
_INVOCATION_METRICS = _Counts(
    "inputTokenCount",
    "outputTokenCount",
    ("cacheReadInputTokenCount",),
    ("cacheWriteInputTokenCount",),
)


def _split_path(path: str) -> tuple[str, str] | None:
    """`(model id, operation)` of a `/model/{modelId}/{operation}` path."""
    if not path.startswith(PATH_PREFIX):
        return None
    model, slash, operation = path[len(PATH_PREFIX) :].rpartition("/")
    if not (slash and model and operation):
        return None
    return (unquote(model) if "%" in model else model), operation


def model_from_path(path: str) -> str | None:
    """The model id a Bedrock path names, percent-decoded (`anthropic.claude-…-v1:0`)."""
    parts = _split_path(path)
    return parts[0] if parts else None


def operation(path: str) -> str | None:
    """The operation a Bedrock path calls (`converse`, `invoke-with-response-stream` ...)."""
    parts = _split_path(path)
    return parts[1] if parts else None


def request_info(
    path: str, query: str, body: bytes, *, inject_stream_usage: bool = True
) -> RequestInfo:
    """Model and stream flag from the path; the body always goes upstream untouched.

    `inject_stream_usage` is accepted for interface symmetry: Bedrock streams always end
    with their usage.
    """
    parts = _split_path(path)
    if parts is None:
        return RequestInfo(model=None, stream=False, body=body)
    model, called = parts
    return RequestInfo(model=model, stream=called.endswith(_STREAM_SUFFIX), body=body)


def usage_from_body(path: str, body: bytes) -> tuple[str | None, Usage | None]:
    """The path's model, and the usage of a Converse, InvokeModel or CountTokens answer."""
    parts = _split_path(path)
    if parts is None:
        return None, None
    model, called = parts
    if called.endswith(_STREAM_SUFFIX):  # a whole stream read at once
        parser = StreamParser()
        parser.feed(body)
        return model, parser.usage
    payload = load_json_object(body)
    if payload is None:
        return model, None
    if called == _CONVERSE:
        return model, _TOKEN_USAGE.usage(get_dict(payload, "usage"))
    if called == _INVOKE:
        return model, _native_usage(payload)
    if called == _COUNT_TOKENS and has_count(payload, "inputTokens"):
        return model, Usage(input_tokens=get_count(payload, "inputTokens"))
    return model, None


def _native_usage(payload: dict[str, Any]) -> Usage | None:
    """The usage in an InvokeModel answer, in whichever model's dialect it is."""
    usage = payload.get("usage")
    if isinstance(usage, dict):
        if "input_tokens" in usage or "output_tokens" in usage:  # Anthropic's Messages
            return _read_with(anthropic.usage_from_body, usage)
        if "prompt_tokens" in usage:  # OpenAI's chat completions (gpt-oss, Mistral Large)
            return _read_with(openai.usage_from_body, usage)
        return _TOKEN_USAGE.usage(usage)  # Nova
    if has_count(payload, "prompt_token_count") or has_count(payload, "generation_token_count"):
        return Usage(  # Meta's Llama
            input_tokens=get_count(payload, "prompt_token_count"),
            output_tokens=get_count(payload, "generation_token_count"),
        )
    if has_count(payload, "inputTextTokenCount"):  # Titan: text (with results) or embeddings
        results = payload.get("results")
        generated = results if isinstance(results, list) else []
        return Usage(
            input_tokens=get_count(payload, "inputTextTokenCount"),
            output_tokens=sum(get_count(r, "tokenCount") for r in generated if isinstance(r, dict)),
        )
    return None


def _read_with(
    usage_from_body: Callable[[str, bytes], tuple[str | None, Usage | None]],
    usage: dict[str, Any],
) -> Usage | None:
    """Another provider module's reading of its own `usage` object, so that its cache
    arithmetic keeps one owner (only the small `usage` object is encoded again)."""
    return usage_from_body("", dump_json({"usage": usage}))[1]


def error_body(status: int, message: str) -> bytes:
    """An error body boto3 raises as its usual `ClientError`, with Bedrock's error code.

    botocore's rest-json parser reads the code from `__type` (Bedrock itself sends it in
    `x-amzn-errortype`, which the gateway's own answers lack) and the message from `message`.
    """
    code = _ERROR_CODES.get(
        status, "InternalServerException" if status >= 500 else "ValidationException"
    )
    return dump_json({"message": message, "__type": code})


class StreamParser:
    """Relay a ConverseStream or InvokeModelWithResponseStream untouched while learning usage."""

    def __init__(
        self, *, strip_usage_chunk: bool = False, max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    ) -> None:
        # `strip_usage_chunk` is never set for Bedrock; accepted for interface symmetry.
        self._decoder = EventStreamDecoder(max_event_size)
        self._anthropic = anthropic.StreamParser(max_event_size=max_event_size)
        self._token_usage: Usage | None = None  # ConverseStream's metadata, or Nova's
        self._metrics: Usage | None = None  # amazon-bedrock-invocationMetrics
        self._failure: str | None = None

    @property
    def model(self) -> str | None:
        """Always None: the path's model (the request's) is the one billed."""
        return None

    @property
    def usage(self) -> Usage | None:
        """The model's own usage if it reported any, else Bedrock's invocation metrics."""
        for usage in (self._anthropic.usage, self._token_usage, self._metrics):
            if usage is not None:
                return usage
        return None

    @property
    def failure(self) -> str | None:
        """Why usage stopped being read (a corrupt or oversized message), else None."""
        return self._failure or self._anthropic.failure

    def feed(self, data: bytes) -> bytes:
        """Consume a chunk; return `data` itself."""
        if self._failure is None:
            try:
                messages = self._decoder.feed(data)
            except EventStreamError as exc:
                messages = exc.messages  # those before the fault are sound
                self._failure = f"{exc}; usage not read"
            for message in messages:
                self._observe(message)
        return data

    def close(self) -> bytes:
        """End of stream: nothing is held back (a message cut short carries no usage)."""
        return b""

    def _observe(self, message: EventMessage) -> None:
        if message.headers.get(":message-type") != "event":
            return  # an exception: the stream ends here, usage stays as seen
        kind = message.headers.get(":event-type")
        if kind == "chunk":
            self._observe_chunk(message.payload)
        elif kind == "metadata":
            payload = load_json_object(message.payload) or {}
            self._token_usage = _TOKEN_USAGE.usage(get_dict(payload, "usage")) or self._token_usage

    def _observe_chunk(self, payload: bytes) -> None:
        encoded = get_str(load_json_object(payload) or {}, "bytes")
        if encoded is None:
            return
        try:
            native = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            return
        if _USAGE_KEYS.search(native) is None:
            return
        event = load_json_object(native)
        if event is None:
            return
        kind = get_str(event, "type")
        if kind in _ANTHROPIC_USAGE_EVENTS:
            self._anthropic.feed(f"event: {kind}\ndata: ".encode() + dump_json(event) + b"\n\n")
        metadata = get_dict(event, "metadata")
        self._token_usage = _TOKEN_USAGE.usage(get_dict(metadata, "usage")) or self._token_usage
        metrics = get_dict(event, _METRICS_KEY)
        self._metrics = _INVOCATION_METRICS.usage(metrics) or self._metrics
