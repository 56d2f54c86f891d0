"""A fake LLM provider speaking the OpenAI, Anthropic and Gemini wire formats on loopback.

Theory of operation
-------------------
`FakeUpstream` is a bare ASGI app served by `hypercorn.trio.serve` (no framework: it is also
the upstream of benchmarks). Each request is answered in two steps:

1. **Plan** (pure): the route picks a builder that turns the request into a `Reply`: status,
   headers, and either a whole body or the list of byte chunks of a stream, plus what the
   reply reports (usage in our normalised convention, model, answer text). Everything is
   derived from the request, deterministically (see `_Plan`), so a streamed call and the same
   call non-streamed report the very same usage.
2. **Deliver** (I/O): the reply is sent as planned, obeying the test controls below; a stream
   goes out one chunk per ASGI message, so the client sees each chunk as its own write.

Payloads imitate what the real APIs send, byte-level habits included (see
`tests/fixtures/<provider>/`): OpenAI pretty-prints JSON bodies and streams compact
`data: {...}` events ending in `data: [DONE]`, with `"usage":null` in every chunk and a final
usage-only chunk (`"choices":[]`) only when `stream_options.include_usage` is true; Anthropic
names every event (`event: message_start` ...) and writes compact JSON; Gemini pretty-prints
bodies, separates SSE events (`?alt=sse`) with CR LF CR LF and otherwise streams a JSON array
(`[{...}` `\\n,\\r\\n{...}` ... `\\n]`).

Test controls (request headers; a gateway forwards every non-`X-Majordomo-*` header):

* `X-Fake-Status: <code>`: answer that status with the provider's error body (usage None);
  `X-Fake-Message: <text>` replaces the error message.
* `X-Fake-Hold: 1`: in a stream, send the first chunk, then wait for `FakeUpstream.release`.
* `X-Fake-Delay: <seconds>`: wait before sending the response headers.
* `X-Fake-Stall: <seconds>`: in a stream, wait between the first and the second chunk.
* `X-Fake-Gzip: 1`: gzip a non-stream body (`content-encoding: gzip`) whatever the request's
  `accept-encoding` says.
* `X-Fake-Chunks: <n>`: number of content chunks of the answer (default 5), streamed or not.
* `X-Fake-Cors: 1`: add the provider's own `Access-Control-Allow-Origin: *`.

Run `python -m tests.fakeupstream --port N` to serve until Ctrl-C (for benchmarks).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import logging
import re
import signal
import struct
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from majordomo.records import Usage

__all__ = ["Call", "FakeUpstream", "Reply", "answer", "main"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Json = dict[str, Any]

DEFAULT_CHUNKS = 5
# Caps a benchmark typo (`X-Fake-Chunks: 100000`) before it builds a huge reply.
MAX_CHUNKS = 1000
EMBEDDING_DIMENSIONS = 8

# Pieces of every answer after the first: plain words, JSON-significant characters and
# multi-byte UTF-8, so that parsers and SDKs meet escapes and split characters.
_WORDS = (
    " alpha",
    ' "quoted"',
    " {braces} [brackets]",
    " back\\slash",
    " Lumière —",
    " 東京",
    " 🚀",
    " omega.",
)

_GEMINI_PATH = re.compile(
    r"/(v1beta|v1alpha|v1)/(models|tunedModels)/([^/:]+)"
    r":(generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents)"
)

# Azure OpenAI: a deployment's chat completions, answered by the model it runs.
_AZURE_DEPLOYMENT_CHAT = re.compile(r"/openai/deployments/([^/]+)/chat/completions")
AZURE_DEPLOYMENT_MODEL = "gpt-4o-mini-2024-07-18"
# Bedrock Runtime: /model/{modelId}/{operation}, the model id percent-encoded (`:` as %3A).
_BEDROCK_PATH = re.compile(
    r"/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream)"
)
_BEDROCK_ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}

_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    409: ("invalid_request_error", None),
    413: ("invalid_request_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", None),
    504: ("server_error", None),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_GEMINI_ERRORS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_JSON = b"application/json"
_OPENAI_SSE = b"text/event-stream; charset=utf-8"
_GEMINI_JSON = b"application/json; charset=UTF-8"

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- public types


@dataclass
class Call:
    """One request the fake received, and what it answered.

    `usage` is what the reply reported, in Majordomo's normalised convention (None for errors,
    for endpoints without usage and for an OpenAI stream not asked to include usage).
    `finished` turns True once the whole response was sent; `disconnected` once the client
    went away before that. `ended` is set when the fake is done with the request either way:
    `await call.ended.wait()` instead of polling.
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    usage: Usage | None = None
    model: str | None = None
    text: str = ""
    finished: bool = False
    status: int = 0
    disconnected: bool = False
    ended: trio.Event = field(default_factory=trio.Event, repr=False, compare=False)
    # The request target's path exactly as it arrived (percent-encoding kept).
    raw_path: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


class FakeUpstream:
    """The fake provider: an ASGI app plus `serve()`; see the module docstring.

    `release` is the event an `X-Fake-Hold: 1` stream waits for after its first chunk. A stream
    takes the current event when its request arrives; once that event fires and a held stream
    resumes, `release` is replaced by a fresh event, so each test sets it once per hold.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.base_url = ""
        self.calls: list[Call] = []
        self.release = trio.Event()

    def header(self, call_index: int, name: str) -> str | None:
        """The first value of header `name` (any case) in call `call_index`, or None."""
        return self.calls[call_index].header(name)

    async def serve(
        self, *, task_status: trio.TaskStatus[FakeUpstream] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on `host:port` (port 0: any free one) until cancelled.

        `task_status.started(self)` is called once the socket listens and `base_url` is set.
        """
        config = Config()
        config.bind = [f"{self.host}:{self.port}"]
        config.errorlog = _log  # a Logger is used as is: hypercorn's "-" would add a handler
        config.accesslog = None
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(hypercorn_serve, self, config)
            self.base_url = binds[0]
            self.port = int(self.base_url.rpartition(":")[2])
            task_status.started(self)

    # ------------------------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point."""
        if scope["type"] == "lifespan":
            await _run_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        call = Call(
            method=scope["method"],
            path=scope["path"],
            raw_path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            query=scope["query_string"].decode("latin-1"),
            headers=[
                (name.decode("latin-1").lower(), value.decode("latin-1"))
                for name, value in scope["headers"]
            ],
            body=body,
        )
        self.calls.append(call)
        held = self.release  # taken now: a release set before the first chunk counts
        controls = _Controls.read(call)
        reply = _plan_reply(call, controls)
        if controls.cors:
            reply.headers = [*reply.headers, (b"access-control-allow-origin", b"*")]
        call.status, call.usage, call.model, call.text = (
            reply.status,
            reply.usage,
            reply.model,
            reply.text,
        )
        try:
            async with trio.open_nursery() as nursery:
                # Hypercorn drops writes to a closed connection silently: watch for the
                # client leaving, to stop at once and to record it.
                nursery.start_soon(_watch_disconnect, receive, nursery.cancel_scope, call)
                if controls.delay > 0:
                    await trio.sleep(controls.delay)
                if reply.chunks is None:
                    await _send_whole(send, reply, call, gzip_body=controls.gzip)
                else:
                    await self._send_stream(send, reply, controls, call, held)
                nursery.cancel_scope.cancel()
        finally:
            call.ended.set()

    async def _send_stream(
        self, send: Send, reply: Reply, controls: _Controls, call: Call, held: trio.Event
    ) -> None:
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": reply.headers}
        )
        assert reply.chunks is not None
        last = len(reply.chunks) - 1
        for index, chunk in enumerate(reply.chunks):
            if index == last:
                call.finished = True  # before the write: the client may read it at once
            await send({"type": "http.response.body", "body": chunk, "more_body": index < last})
            if index == 0 < last:
                if controls.hold:
                    await held.wait()
                    if self.release is held:
                        self.release = trio.Event()
                if controls.stall > 0:
                    await trio.sleep(controls.stall)


async def _run_lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _watch_disconnect(receive: Receive, scope: trio.CancelScope, call: Call) -> None:
    """Cancel `scope` and mark `call` when the client goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            call.disconnected = True
            scope.cancel()
            return


async def _send_whole(send: Send, reply: Reply, call: Call, *, gzip_body: bool) -> None:
    body = reply.body
    headers = list(reply.headers)
    if gzip_body:
        body = gzip.compress(body, mtime=0)
        headers.append((b"content-encoding", b"gzip"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    # Marked before the write: the client may read the body before `send` returns.
    call.finished = True
    await send({"type": "http.response.body", "body": body, "more_body": False})


# ------------------------------------------------------------------------- planning a reply


@dataclass(frozen=True, slots=True)
class _Controls:
    status: int | None = None
    message: str | None = None
    hold: bool = False
    delay: float = 0.0
    stall: float = 0.0
    gzip: bool = False
    chunks: int = DEFAULT_CHUNKS
    cors: bool = False

    @classmethod
    def read(cls, call: Call) -> _Controls:
        status = call.header("x-fake-status")
        chunks = call.header("x-fake-chunks")
        return cls(
            status=int(status) if status else None,
            message=call.header("x-fake-message"),
            hold=call.header("x-fake-hold") == "1",
            delay=float(call.header("x-fake-delay") or 0),
            stall=float(call.header("x-fake-stall") or 0),
            gzip=call.header("x-fake-gzip") == "1",
            chunks=max(1, min(MAX_CHUNKS, int(chunks))) if chunks else DEFAULT_CHUNKS,
            cors=call.header("x-fake-cors") == "1",
        )


@dataclass(slots=True)
class Reply:
    """What the fake answers to one request (see `answer`).

    `chunks` is None for a whole body (`body`), else the stream's writes in order; `usage`,
    `model` and `text` are what the answer reports, as `Call` records them.
    """

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunks: list[bytes] | None = None  # a stream, one ASGI message per chunk
    usage: Usage | None = None
    model: str | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything an answer reports, derived from the request alone.

    The request is canonicalised first (JSON re-encoded with sorted keys, without `stream`
    and `stream_options`), so the streamed and the plain form of one call get the same plan.
    Counts, all non-zero: `input_tokens` = 24 + canonical size / 4 (cache included);
    `cached` = half of it, `cache_creation` an eighth (Anthropic only); `visible` =
    2 per chunk + 3 + (digest byte 0 mod 5); `reasoning` = 3 per chunk + 7 + (byte 1 mod 5).
    """

    tag: str  # 12 hex digits of the canonical request's SHA-256, used in ids and the answer
    pieces: tuple[str, ...]
    input_tokens: int
    cached: int
    cache_creation: int
    visible: int
    reasoning: int

    @classmethod
    def of(cls, payload: Any, chunks: int) -> _Plan:
        if isinstance(payload, dict):
            payload = {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}
        canonical = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
        digest = hashlib.sha256(canonical).digest()
        tag = digest.hex()[:12]
        pieces = (f"Fake answer {tag}:", *(_WORDS[i % len(_WORDS)] for i in range(chunks - 1)))
        input_tokens = 24 + len(canonical) // 4
        return cls(
            tag=tag,
            pieces=pieces,
            input_tokens=input_tokens,
            cached=input_tokens // 2,
            cache_creation=input_tokens // 8,
            visible=2 * chunks + 3 + digest[0] % 5,
            reasoning=3 * chunks + 7 + digest[1] % 5,
        )

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output(self) -> int:
        """Output tokens, reasoning included (OpenAI, Gemini)."""
        return self.visible + self.reasoning

    def usage(self) -> Usage:
        """Normalised usage of an OpenAI or Gemini answer."""
        return Usage(
            input_tokens=self.input_tokens,
            output_tokens=self.output,
            cached_tokens=self.cached,
            reasoning_tokens=self.reasoning,
        )


class _BadRequest(Exception):
    """The request is malformed: answered 400 in the provider's format."""


def answer(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    query: str = "",
    headers: Iterable[tuple[str, str]] = (),
) -> Reply:
    """What the fake answers to a request, computed without a server.

    Pure: even the `created` timestamps derive from the request. The header controls that shape the answer apply
    (`X-Fake-Status`, `X-Fake-Message`, `X-Fake-Chunks`); those about timing and encoding
    only matter to `FakeUpstream.serve`.
    """
    call = Call(
        method=method,
        path=path,
        query=query,
        headers=[(name.lower(), value) for name, value in headers],
        body=body,
    )
    return _plan_reply(call, _Controls.read(call))


def _plan_reply(call: Call, controls: _Controls) -> Reply:
    route = _route(call.method, call.path)
    if route is None:
        return _openai_error(404, f"Invalid URL ({call.method} {call.path})", code=None)
    family, builder = route
    if controls.status is not None:
        return _error(
            family, controls.status, controls.message or _default_message(controls.status)
        )
    try:
        payload = _load_payload(call)
        return builder(call, payload, controls)
    except _BadRequest as exc:
        return _error(family, 400, str(exc))


def _route(method: str, path: str) -> tuple[str, _Builder] | None:
    if method == "POST":
        builder = _POST_ROUTES.get(path)
        if builder is not None:
            family = "anthropic" if path.startswith("/v1/messages") else "openai"
            return family, builder
        if _GEMINI_PATH.fullmatch(path):
            return "gemini", _gemini
        if _AZURE_DEPLOYMENT_CHAT.fullmatch(path):
            return "openai", _azure_deployment_chat
        if _BEDROCK_PATH.fullmatch(path):
            return "bedrock", _bedrock
    if method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
        return "openai", _models
    return None


def _load_payload(call: Call) -> Any:
    if call.method == "GET":
        return None
    try:
        payload = json.loads(call.body)
    except ValueError:
        raise _BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)"
        ) from None
    if not isinstance(payload, dict):
        raise _BadRequest("The request body must be a JSON object.")
    return payload


def _default_message(status: int) -> str:
    return f"fake upstream error {status} (set by X-Fake-Status)"


def _error(family: str, status: int, message: str) -> Reply:
    if family == "anthropic":
        return _anthropic_error(status, message)
    if family == "gemini":
        return _gemini_error(status, message)
    if family == "bedrock":
        return _bedrock_error(status, message)
    kind, code = _OPENAI_ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return _openai_error(status, message, code=code, kind=kind)


def _openai_error(
    status: int, message: str, *, code: str | None, kind: str = "invalid_request_error"
) -> Reply:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Reply(status, _json_headers(_JSON), _pretty(body))


def _anthropic_error(status: int, message: str) -> Reply:
    kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    request_id = "req_011CFake" + hashlib.sha256(message.encode()).hexdigest()[:14]
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}
    return Reply(
        status, [*_json_headers(_JSON), (b"request-id", request_id.encode())], _compact(body)
    )


def _gemini_error(status: int, message: str) -> Reply:
    kind = _GEMINI_ERRORS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    body = {"error": {"code": status, "message": message, "status": kind}}
    return Reply(status, _json_headers(_GEMINI_JSON), _pretty(body))


def _json_headers(content_type: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type)]


def _pretty(value: Any) -> bytes:
    """JSON as OpenAI and Gemini print whole bodies: 2-space indent, raw UTF-8."""
    return json.dumps(value, indent=2, ensure_ascii=False).encode()


def _compact(value: Any) -> bytes:
    """JSON as OpenAI streams and Anthropic print it: no spaces, raw UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _model_of(payload: Json) -> str:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter")
    return model


# --------------------------------------------------------------------------------- OpenAI


def _timestamp(plan: _Plan) -> int:
    """A plausible Unix time derived from the request, so equal requests get equal answers
    (a clock would make two calls straddling a second differ)."""
    return 1_750_000_000 + int(plan.tag[:5], 16)


def _openai_usage(plan: _Plan) -> Json:
    """Chat / completions usage: cache reads inside prompt, reasoning inside completion."""
    return {
        "prompt_tokens": plan.input_tokens,
        "completion_tokens": plan.output,
        "total_tokens": plan.input_tokens + plan.output,
        "prompt_tokens_details": {"cached_tokens": plan.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _openai_sse(chunks: Iterable[Json]) -> list[bytes]:
    return [b"data: " + _compact(chunk) + b"\n\n" for chunk in chunks] + [b"data: [DONE]\n\n"]


def _obfuscation(index: int) -> str:
    # OpenAI pads each chunk with a random string so lengths do not leak the tokens.
    return "Fk7pQz9"[: 1 + index % 7]


def _wants_usage(payload: Json) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _openai_sse_headers() -> list[tuple[bytes, bytes]]:
    return [(b"content-type", _OPENAI_SSE), (b"x-request-id", b"req_fake")]


def _openai_chat(call: Call, payload: Json, controls: _Controls) -> Reply:
    model = _model_of(payload)
    plan = _Plan.of(payload, controls.chunks)
    ident = f"chatcmpl-Fake{plan.tag}"
    created = _timestamp(plan)
    if payload.get("stream") is not True:
        body = {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": plan.text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _openai_usage(plan),
            "service_tier": "default",
            "system_fingerprint": None,
        }
        return Reply(200, _json_headers(_JSON), _pretty(body), None, plan.usage(), model, plan.text)

    with_usage = _wants_usage(payload)

    def chunk(index: int, choices: list[Json], usage: Json | None = None) -> Json:
        value: Json = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": None,
            "choices": choices,
        }
        if with_usage:
            value["usage"] = usage
        value["obfuscation"] = _obfuscation(index)
        return value

    def choice(delta: Json, finish: str | None = None) -> Json:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    chunks = [chunk(0, [choice({"role": "assistant", "content": "", "refusal": None})])]
    chunks += [chunk(i + 1, [choice({"content": piece})]) for i, piece in enumerate(plan.pieces)]
    chunks.append(chunk(len(chunks), [choice({}, "stop")]))
    if with_usage:
        chunks.append(chunk(len(chunks), [], _openai_usage(plan)))
    usage = plan.usage() if with_usage else None
    return Reply(200, _openai_sse_headers(), b"", _openai_sse(chunks), usage, model, plan.text)


def _openai_completions(call: Call, payload: Json, controls: _Controls) -> Reply:
    model = _model_of(payload)
    plan = _Plan.of(payload, controls.chunks)
    ident = f"cmpl-Fake{plan.tag}"
    created = _timestamp(plan)
    if payload.get("stream") is not True:
        body = {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"text": plan.text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": _openai_usage(plan),
        }
        return Reply(200, _json_headers(_JSON), _pretty(body), None, plan.usage(), model, plan.text)

    with_usage = _wants_usage(payload)

    def chunk(choices: list[Json], usage: Json | None = None) -> Json:
        value: Json = {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "choices": choices,
            "model": model,
        }
        if with_usage:
            value["usage"] = usage
        return value

    def choice(text: str, finish: str | None = None) -> Json:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}

    chunks = [chunk([choice(piece)]) for piece in plan.pieces]
    chunks.append(chunk([choice("", "stop")]))
    if with_usage:
        chunks.append(chunk([], _openai_usage(plan)))
    usage = plan.usage() if with_usage else None
    return Reply(200, _openai_sse_headers(), b"", _openai_sse(chunks), usage, model, plan.text)


def _embedding_values(tag: str, index: int, dimensions: int) -> list[float]:
    seed = hashlib.sha256(f"{tag}/{index}".encode()).digest()
    return [round(seed[i % len(seed)] / 255 - 0.5, 6) for i in range(dimensions)]


def _openai_embeddings(call: Call, payload: Json, controls: _Controls) -> Reply:
    model = _model_of(payload)
    inputs = payload.get("input")
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs and all(isinstance(i, int) for i in inputs)
    ):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise _BadRequest("'input' must be a non-empty string or array")
    plan = _Plan.of(payload, controls.chunks)
    dimensions = payload.get("dimensions")
    if not isinstance(dimensions, int) or dimensions < 1:
        dimensions = EMBEDDING_DIMENSIONS
    as_base64 = payload.get("encoding_format") == "base64"
    data = []
    for index in range(len(inputs)):
        values = _embedding_values(plan.tag, index, dimensions)
        vector: Any = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *values)).decode()
            if as_base64
            else values
        )
        data.append({"object": "embedding", "index": index, "embedding": vector})
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": plan.input_tokens, "total_tokens": plan.input_tokens},
    }
    usage = Usage(input_tokens=plan.input_tokens)
    return Reply(200, _json_headers(_JSON), _pretty(body), None, usage, model)


def _responses_usage(plan: _Plan) -> Json:
    return {
        "input_tokens": plan.input_tokens,
        "input_tokens_details": {"cached_tokens": plan.cached},
        "output_tokens": plan.output,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning},
        "total_tokens": plan.input_tokens + plan.output,
    }


def _openai_responses(call: Call, payload: Json, controls: _Controls) -> Reply:
    model = _model_of(payload)
    plan = _Plan.of(payload, controls.chunks)
    ident = f"resp_fake{plan.tag}"
    reasoning_item: Json = {"id": f"rs_fake{plan.tag}", "type": "reasoning", "summary": []}
    message_id = f"msg_fake{plan.tag}"

    def part(text: str) -> Json:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def message(status: str, content: list[Json]) -> Json:
        return {
            "id": message_id,
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        }

    def response(status: str, output: list[Json], usage: Json | None) -> Json:
        return {
            "id": ident,
            "object": "response",
            "created_at": _timestamp(plan),
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": payload.get("instructions"),
            "max_output_tokens": payload.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": payload.get("previous_response_id"),
            "prompt_cache_key": None,
            "reasoning": {"effort": "medium", "summary": None},
            "safety_identifier": None,
            "service_tier": "default",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_logprobs": 0,
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    done_message = message("completed", [part(plan.text)])
    completed = response("completed", [reasoning_item, done_message], _responses_usage(plan))
    if payload.get("stream") is not True:
        return Reply(
            200, _json_headers(_JSON), _pretty(completed), None, plan.usage(), model, plan.text
        )

    events: list[Json] = [
        {"type": "response.created", "response": response("in_progress", [], None)},
        {"type": "response.in_progress", "response": response("in_progress", [], None)},
        {"type": "response.output_item.added", "output_index": 0, "item": reasoning_item},
        {"type": "response.output_item.done", "output_index": 0, "item": reasoning_item},
        {
            "type": "response.output_item.added",
            "output_index": 1,
            "item": message("in_progress", []),
        },
    ]
    where = {"item_id": message_id, "output_index": 1, "content_index": 0}
    events.append({"type": "response.content_part.added", **where, "part": part("")})
    events += [
        {
            "type": "response.output_text.delta",
            **where,
            "delta": piece,
            "logprobs": [],
            "obfuscation": _obfuscation(i),
        }
        for i, piece in enumerate(plan.pieces)
    ]
    events += [
        {"type": "response.output_text.done", **where, "text": plan.text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": part(plan.text)},
        {"type": "response.output_item.done", "output_index": 1, "item": done_message},
        {"type": "response.completed", "response": completed},
    ]
    chunks = []
    for number, event in enumerate(events):
        kind = event.pop("type")
        data = _compact({"type": kind, "sequence_number": number, **event})
        chunks.append(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")
    return Reply(200, _openai_sse_headers(), b"", chunks, plan.usage(), model, plan.text)


_MODEL_IDS = ("gpt-4o-mini", "gpt-5-mini", "text-embedding-3-small", "o4-mini")
_CLAUDE_IDS = ("claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001")
_GEMINI_IDS = ("gemini-2.5-flash", "gemini-2.5-pro")


def _models(call: Call, payload: Any, controls: _Controls) -> Reply:
    """`GET /v1/models[/{id}]` in the shape of whichever provider's client is asking."""
    if call.header("anthropic-version") is not None:
        return _anthropic_models(call)
    if call.header("x-goog-api-key") is not None or "key=" in call.query:
        return _gemini_models(call)
    return _openai_models(call)


def _anthropic_models(call: Call) -> Reply:
    def entry(model: str) -> Json:
        return {
            "type": "model",
            "id": model,
            "display_name": model.replace("-", " ").title(),
            "created_at": "2025-09-29T00:00:00Z",
        }

    if call.path == "/v1/models":
        page = {
            "data": [entry(m) for m in _CLAUDE_IDS],
            "has_more": False,
            "first_id": _CLAUDE_IDS[0],
            "last_id": _CLAUDE_IDS[-1],
        }
        return Reply(200, _json_headers(_JSON), _compact(page))
    model = call.path.removeprefix("/v1/models/")
    return Reply(200, _json_headers(_JSON), _compact(entry(model)), model=model)


def _gemini_models(call: Call) -> Reply:
    def entry(model: str) -> Json:
        return {
            "name": f"models/{model}",
            "version": "001",
            "displayName": model.replace("-", " ").title(),
            "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536,
            "supportedGenerationMethods": ["generateContent", "countTokens"],
        }

    if call.path == "/v1/models":
        return Reply(
            200, _json_headers(_GEMINI_JSON), _pretty({"models": [entry(m) for m in _GEMINI_IDS]})
        )
    model = call.path.removeprefix("/v1/models/")
    return Reply(200, _json_headers(_GEMINI_JSON), _pretty(entry(model)), model=model)


def _openai_models(call: Call) -> Reply:
    def entry(model: str) -> Json:
        return {"id": model, "object": "model", "created": 1715367049, "owned_by": "system"}

    if call.path == "/v1/models":
        body: Json = {"object": "list", "data": [entry(m) for m in _MODEL_IDS]}
        return Reply(200, _json_headers(_JSON), _pretty(body))
    model = call.path.removeprefix("/v1/models/")
    return Reply(200, _json_headers(_JSON), _pretty(entry(model)), model=model)


# ------------------------------------------------------------------------------ Anthropic


def _anthropic_counts(plan: _Plan, output_tokens: int) -> Json:
    return {
        "input_tokens": plan.input_tokens - plan.cached - plan.cache_creation,
        "cache_creation_input_tokens": plan.cache_creation,
        "cache_read_input_tokens": plan.cached,
        "output_tokens": output_tokens,
    }


def _anthropic_messages(call: Call, payload: Json, controls: _Controls) -> Reply:
    model = _model_of(payload)
    plan = _Plan.of(payload, controls.chunks)
    thinking_config = payload.get("thinking")
    thinking = isinstance(thinking_config, dict) and thinking_config.get("type") == "enabled"
    output_tokens = plan.visible + (plan.reasoning if thinking else 0)
    usage = Usage(
        input_tokens=plan.input_tokens,
        output_tokens=output_tokens,
        cached_tokens=plan.cached,
        cache_creation_tokens=plan.cache_creation,
    )
    ident = f"msg_01Fake{plan.tag}"
    thought = f"The user wants answer {plan.tag}. I will give it."
    signature = base64.b64encode(hashlib.sha256(thought.encode()).digest()).decode()
    cache_creation = {
        "ephemeral_5m_input_tokens": plan.cache_creation,
        "ephemeral_1h_input_tokens": 0,
    }
    headers = [(b"request-id", f"req_011Fake{plan.tag}".encode())]
    # Given tools, the answer calls the first one (after its text), as Claude does.
    tool = _first_tool(payload)
    tool_use: Json | None = None
    if tool is not None:
        tool_use = {
            "type": "tool_use",
            "id": f"toolu_01Fake{plan.tag}",
            "name": tool,
            "input": {"tag": plan.tag, "words": list(plan.pieces[1:3])},
        }
    stop_reason = "tool_use" if tool_use is not None else "end_turn"

    if payload.get("stream") is not True:
        content: list[Json] = [{"type": "text", "text": plan.text}]
        if thinking:
            content.insert(0, {"type": "thinking", "thinking": thought, "signature": signature})
        if tool_use is not None:
            content.append(tool_use)
        body = {
            "model": model,
            "id": ident,
            "type": "message",
            "role": "assistant",
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                **_anthropic_counts(plan, output_tokens),
                "cache_creation": cache_creation,
                "service_tier": "standard",
            },
        }
        return Reply(
            200, [*_json_headers(_JSON), *headers], _compact(body), None, usage, model, plan.text
        )

    def event(kind: str, data: Json | bytes) -> bytes:
        raw = data if isinstance(data, bytes) else _compact({"type": kind, **data})
        return b"event: " + kind.encode() + b"\ndata: " + raw + b"\n\n"

    def block(index: int, start: Json, deltas: list[Json]) -> list[bytes]:
        return [
            event("content_block_start", {"index": index, "content_block": start}),
            *(event("content_block_delta", {"index": index, "delta": d}) for d in deltas),
            event("content_block_stop", {"index": index}),
        ]

    start_counts = {
        **_anthropic_counts(plan, 1),
        "cache_creation": cache_creation,
        "service_tier": "standard",
    }
    message: Json = {
        "model": model,
        "id": ident,
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_counts,
    }
    chunks = [event("message_start", {"message": message})]
    index = 0
    if thinking:
        half = len(thought) // 2
        deltas = [
            {"type": "thinking_delta", "thinking": thought[:half]},
            {"type": "thinking_delta", "thinking": thought[half:]},
            {"type": "signature_delta", "signature": signature},
        ]
        chunks += block(0, {"type": "thinking", "thinking": "", "signature": ""}, deltas)
        index = 1
    text_deltas = [{"type": "text_delta", "text": piece} for piece in plan.pieces]
    text_block = block(index, {"type": "text", "text": ""}, text_deltas)
    # Anthropic pings right after the first content block opens.
    chunks += [text_block[0], event("ping", b'{"type": "ping"}'), *text_block[1:]]
    if tool_use is not None:
        arguments = _compact(tool_use["input"]).decode()
        cut = len(arguments) // 2
        json_deltas = [
            {"type": "input_json_delta", "partial_json": part}
            for part in ("", arguments[:cut], arguments[cut:])
        ]
        chunks += block(index + 1, {**tool_use, "input": {}}, json_deltas)
    chunks += [
        event(
            "message_delta",
            {
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": _anthropic_counts(plan, output_tokens),
            },
        ),
        event("message_stop", {}),
    ]
    sse_headers = [(b"content-type", b"text/event-stream; charset=utf-8"), *headers]
    return Reply(200, sse_headers, b"", chunks, usage, model, plan.text)


def _first_tool(payload: Json) -> str | None:
    tools = payload.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    name = tools[0].get("name")
    if not isinstance(name, str):
        raise _BadRequest("tools.0.name: Field required")
    return name


def _anthropic_count_tokens(call: Call, payload: Json, controls: _Controls) -> Reply:
    _model_of(payload)
    plan = _Plan.of(payload, controls.chunks)
    body = _compact({"input_tokens": plan.input_tokens})
    return Reply(200, _json_headers(_JSON), body, None, Usage(input_tokens=plan.input_tokens))


# --------------------------------------------------------------------------------- Gemini


def _gemini(call: Call, payload: Json, controls: _Controls) -> Reply:
    match = _GEMINI_PATH.fullmatch(call.path)
    assert match is not None
    _, collection, model, method = match.groups()
    if collection == "tunedModels":
        model = f"tunedModels/{model}"
    plan = _Plan.of(payload, controls.chunks)
    headers = _json_headers(_GEMINI_JSON)
    if method == "countTokens":
        body = {
            "totalTokens": plan.input_tokens,
            "cachedContentTokenCount": plan.cached,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": plan.input_tokens - plan.cached}
            ],
            "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": plan.cached}],
        }
        usage = Usage(input_tokens=plan.input_tokens, cached_tokens=plan.cached)
        return Reply(200, headers, _pretty(body), None, usage, model)
    if method == "embedContent":
        body = {"embedding": {"values": _embedding_values(plan.tag, 0, EMBEDDING_DIMENSIONS)}}
        return Reply(200, headers, _pretty(body), None, None, model)
    if method == "batchEmbedContents":
        requests = payload.get("requests")
        count = len(requests) if isinstance(requests, list) and requests else 1
        body = {
            "embeddings": [
                {"values": _embedding_values(plan.tag, i, EMBEDDING_DIMENSIONS)}
                for i in range(count)
            ]
        }
        return Reply(200, headers, _pretty(body), None, None, model)

    response_id = f"fake{plan.tag}"
    last = len(plan.pieces) - 1

    def metadata(candidates: int) -> Json:
        value: Json = {"promptTokenCount": plan.input_tokens}
        if candidates:
            value["candidatesTokenCount"] = candidates
        value |= {
            "totalTokenCount": plan.input_tokens + candidates + plan.reasoning,
            "cachedContentTokenCount": plan.cached,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": plan.input_tokens}],
            "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": plan.cached}],
            "thoughtsTokenCount": plan.reasoning,
        }
        return value

    def answer(text: str, final: bool, candidates: int) -> Json:
        candidate: Json = {"content": {"parts": [{"text": text}], "role": "model"}}
        if final:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": metadata(candidates),
            "modelVersion": model,
            "responseId": response_id,
        }

    if method == "generateContent":
        body = answer(plan.text, True, plan.visible)
        return Reply(200, headers, _pretty(body), None, plan.usage(), model, plan.text)

    # streamGenerateContent: cumulative candidate counts, the last chunk holds the final ones.
    answers = [
        answer(piece, i == last, plan.visible * (i + 1) // len(plan.pieces))
        for i, piece in enumerate(plan.pieces)
    ]
    if "alt=sse" in call.query.split("&"):
        chunks = [
            b"data: "
            + json.dumps(a, separators=(",", ": "), ensure_ascii=False).encode()
            + b"\r\n\r\n"
            for a in answers
        ]
        sse_headers = [(b"content-type", b"text/event-stream")]
        return Reply(200, sse_headers, b"", chunks, plan.usage(), model, plan.text)
    elements = [_pretty(a) for a in answers]
    chunks = [b"[" + elements[0]]
    chunks += [b"\n,\r\n" + element for element in elements[1:]]
    chunks.append(b"\n]")
    return Reply(200, headers, b"", chunks, plan.usage(), model, plan.text)


_Builder = Callable[[Call, Any, _Controls], Reply]


# -------------------------------------------------------------------------------- Bedrock


def _bedrock_error(status: int, message: str) -> Reply:
    kind = _BEDROCK_ERRORS.get(status, "InternalServerException")
    headers = [
        (b"content-type", _JSON),
        (
            b"x-amzn-errortype",
            f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/".encode(),
        ),
        (b"x-amzn-requestid", b"5b3fa1d4-0f0e-4c3b-9a57-1f4b5f8c2d10"),
    ]
    return Reply(status, headers, _compact({"message": message}))


def _bedrock(call: Call, payload: Json, controls: _Controls) -> Reply:
    """Converse, ConverseStream, and InvokeModel (with its stream) of an Anthropic model: the
    model is the path's, the answer names none (Converse) or Anthropic's (InvokeModel)."""
    from tests.eventstream import bedrock_event

    match = _BEDROCK_PATH.fullmatch(call.path)
    assert match is not None
    model, operation = urllib.parse.unquote(match[1]), match[2]
    if operation.startswith("invoke"):
        return _bedrock_invoke(call, payload, controls, model, operation.endswith("-stream"))
    if not isinstance(payload.get("messages"), list):
        raise _BadRequest(
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null"
        )
    plan = _Plan.of(payload, controls.chunks)
    usage = Usage(
        input_tokens=plan.input_tokens,
        output_tokens=plan.visible,
        cached_tokens=plan.cached,
        cache_creation_tokens=plan.cache_creation,
    )
    counts = {
        "inputTokens": plan.input_tokens - plan.cached - plan.cache_creation,
        "outputTokens": plan.visible,
        "totalTokens": plan.input_tokens + plan.visible,
        "cacheReadInputTokens": plan.cached,
        "cacheWriteInputTokens": plan.cache_creation,
    }
    headers = [(b"x-amzn-requestid", f"fake-{plan.tag}".encode())]
    if operation == "converse":
        body = {
            "output": {"message": {"role": "assistant", "content": [{"text": plan.text}]}},
            "stopReason": "end_turn",
            "usage": counts,
            "metrics": {"latencyMs": 412},
        }
        return Reply(
            200, [(b"content-type", _JSON), *headers], _compact(body), None, usage, model, plan.text
        )
    chunks = [bedrock_event("messageStart", {"p": "abcdefghijklm", "role": "assistant"})]
    chunks += [
        bedrock_event(
            "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}, "p": "abcd"}
        )
        for piece in plan.pieces
    ]
    chunks += [
        bedrock_event("contentBlockStop", {"contentBlockIndex": 0, "p": "abcdefghijklmnopq"}),
        bedrock_event("messageStop", {"p": "abcdefghijklmnopqrstuvw", "stopReason": "end_turn"}),
        bedrock_event("metadata", {"metrics": {"latencyMs": 412}, "p": "abcdef", "usage": counts}),
    ]
    stream_headers = [(b"content-type", b"application/vnd.amazon.eventstream"), *headers]
    return Reply(200, stream_headers, b"", chunks, usage, model, plan.text)


def _bedrock_invoke(
    call: Call, payload: Json, controls: _Controls, model: str, stream: bool
) -> Reply:
    """InvokeModel of an Anthropic model: Anthropic's Messages JSON in and out (no model or
    stream field in the request; the stream's events wrapped in `chunk` events)."""
    from tests.eventstream import bedrock_event

    if payload.get("anthropic_version") != "bedrock-2023-05-31":
        raise _BadRequest("Malformed input request: anthropic_version is required")
    native = _anthropic_messages(call, {**payload, "model": model, "stream": stream}, controls)
    headers = [(b"x-amzn-requestid", b"fake-invoke")]
    if not stream:
        return Reply(
            200,
            [(b"content-type", _JSON), *headers],
            native.body,
            None,
            native.usage,
            model,
            native.text,
        )
    assert native.chunks is not None
    assert native.usage is not None
    events = []
    for chunk in native.chunks:
        data = chunk.split(b"\ndata: ", 1)[1].rstrip(b"\n")
        event = json.loads(data)
        if event.get("type") == "message_stop":
            event["amazon-bedrock-invocationMetrics"] = {
                "inputTokenCount": native.usage.input_tokens
                - native.usage.cached_tokens
                - native.usage.cache_creation_tokens,
                "outputTokenCount": native.usage.output_tokens,
                "invocationLatency": 412,
                "firstByteLatency": 120,
            }
        raw = base64.b64encode(_compact(event)).decode()
        events.append(bedrock_event("chunk", {"bytes": raw, "p": "abcdefgh"}))
    stream_headers = [(b"content-type", b"application/vnd.amazon.eventstream"), *headers]
    return Reply(200, stream_headers, b"", events, native.usage, model, native.text)


def _azure_deployment_chat(call: Call, payload: Json, controls: _Controls) -> Reply:
    """A deployment's chat completions: the body names no model (the deployment does, in
    the path); the answer names the model the deployment runs, as Azure's do."""
    if "api-version" not in call.query:
        raise _BadRequest("Missing required query parameter: api-version")
    return _openai_chat(call, {**payload, "model": AZURE_DEPLOYMENT_MODEL}, controls)


_POST_ROUTES: dict[str, _Builder] = {
    "/v1/chat/completions": _openai_chat,
    # Gemini's OpenAI-compatible API speaks OpenAI's wire format.
    "/v1beta/openai/chat/completions": _openai_chat,
    # Azure OpenAI's v1 API (the model in the body, as OpenAI's).
    "/openai/v1/chat/completions": _openai_chat,
    "/v1/completions": _openai_completions,
    "/v1/embeddings": _openai_embeddings,
    "/v1/responses": _openai_responses,
    "/v1/messages": _anthropic_messages,
    "/v1/messages/count_tokens": _anthropic_count_tokens,
}


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """`python -m tests.fakeupstream [--host H] [--port N]`: serve until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakeupstream", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)

    async def run() -> None:
        fake = FakeUpstream(host=args.host, port=args.port)
        # Handlers of our own: a background job of a non-interactive shell inherits an
        # ignored SIGINT, and SIGTERM should end the benchmark upstream cleanly too.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(fake.serve)
                print(fake.base_url, flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)


if __name__ == "__main__":
    main()
