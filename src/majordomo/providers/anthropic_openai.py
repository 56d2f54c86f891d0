"""OpenAI Chat Completions in front, Anthropic Messages behind: the two translations (pure).

Theory of operation
-------------------
The "anthropic-openai" provider lets the unchanged `openai` SDK call Claude. A request is
translated once, whole (`translate_request`); the answer is translated back either whole
(`translate_response`, `translate_error`) or event by event (`StreamTranslator`), never
buffered: each Anthropic SSE event becomes zero or more `data: {chunk}` events at once.

Requests are translated strictly. A field is mapped, or dropped because it means nothing
that Anthropic would do differently (`seed`, `store`, `n: 1`, a zero penalty ...), or refused
with `Untranslatable`, which names the field and says what to do. Unknown fields are refused
too: silently ignoring `logprobs: true` or a JSON schema would hand back an answer that looks
right and is not what was asked.

Decisions
~~~~~~~~~
* `max_tokens` defaults to 4096 when the client sets neither `max_completion_tokens` nor
  `max_tokens` (Anthropic requires it; OpenAI's default is "as long as the model wants").
* A null top-level field counts as absent. `temperature` is passed as is, not rescaled
  (OpenAI's range is 0-2, Anthropic's 0-1: Anthropic refuses what it cannot honour).
* System and developer messages are lifted to the top-level `system`, wherever they stand.
  A message's `name`, an image's `detail` and a tool's `strict` are dropped (no Anthropic
  meaning); `safety_identifier` joins `user` as `metadata.user_id`. Tool-call arguments that
  are an empty string count as `{}`.
* Answers: text blocks are joined with no separator; thinking and any block the client
  cannot have asked for are dropped. An unreadable 2xx body becomes an OpenAI error body.
* Streams: usage is `message_start`'s counts overridden by each `message_delta`'s (the output
  count is cumulative, never added). `[DONE]` is written exactly once, at `message_stop` or
  at `close()`; after `message_stop`, an `error` event or an oversize event, input is ignored.
  Input is fed to the SSE decoder one line at a time, so an oversize event loses none of the
  events before it and the output does not depend on how the input was split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from majordomo.providers import anthropic
from majordomo.providers.common import (
    dump_json,
    get_count,
    get_dict,
    get_str,
    has_count,
    load_json_object,
)
from majordomo.sse import DEFAULT_MAX_EVENT_SIZE, EventTooLarge, SSEDecoder, SSEEvent

# The Messages API version a translated request asks for, unless the client named one.
ANTHROPIC_VERSION = b"2023-06-01"
# Anthropic requires `max_tokens`; what a client that sets no limit gets (see the docstring).
DEFAULT_MAX_TOKENS = 4096
# The longest error message relayed to the client (an upstream could send megabytes).
MAX_ERROR_MESSAGE = 2000

# Fields always dropped: they change nothing Anthropic would do.
_DROPPED = frozenset(("seed", "store", "metadata", "service_tier", "stream_options"))
# Fields dropped with these values (compared as compact JSON, so that `true` is not taken for
# `1`), and why any other value cannot be translated.
_RULES: dict[str, tuple[set[bytes], str]] = {
    "n": ({b"1"}, "one choice only"),
    "logprobs": ({b"false"}, "no log probabilities"),
    "parallel_tool_calls": ({b"true", b"false"}, "true or false only"),  # false is mapped
    "frequency_penalty": ({b"0", b"0.0"}, "no penalties"),
    "presence_penalty": ({b"0", b"0.0"}, "no penalties"),
    "modalities": ({b'["text"]'}, "text output only"),
    "response_format": ({b'{"type":"text"}'}, "no JSON mode or structured outputs"),
    "top_logprobs": (set(), "no log probabilities"),
    "logit_bias": (set(), "no token biasing"),
    "audio": (set(), "no audio output"),
    "prediction": (set(), "no predicted outputs"),
    "reasoning_effort": (set(), "extended thinking is configured differently"),
    "functions": (set(), "legacy function calling; use tools"),
    "function_call": (set(), "legacy function calling; use tool_choice"),
}
# Fields translated by `translate_request` itself.
_MAPPED = {"model", "messages", "stream", "user", "safety_identifier", "stop", "tools"}
_MAPPED |= {"tool_choice", "max_tokens", "max_completion_tokens", "temperature", "top_p"}
_TOOL_CHOICES = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}
# The keys each role's message may carry (`name` is dropped).
_PLAIN_KEYS = frozenset(("role", "content", "name"))
_MESSAGE_KEYS = dict.fromkeys(("system", "developer", "user"), _PLAIN_KEYS)
_MESSAGE_KEYS["assistant"] = _PLAIN_KEYS | {"tool_calls", "refusal"}
_MESSAGE_KEYS["tool"] = frozenset(("role", "content", "tool_call_id"))
# Every other stop reason (end_turn, stop_sequence, pause_turn, null, new ones) is "stop".
_FINISH_REASONS = {
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_COUNT_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
)
_DONE = b"data: [DONE]\n\n"


class Untranslatable(ValueError):
    """A request field with no Anthropic equivalent; `field` is its JSON path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _unsupported(field: str, value: Any, why: str, fix: str = "") -> Untranslatable:
    """The error for `field` holding `value`; `fix` defaults to "remove <field>"."""
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return Untranslatable(
        field,
        f"{field}={shown} cannot be translated to Anthropic Messages ({why}); "
        f"{fix or 'remove ' + field}, or call Anthropic's Messages API directly at /v1/messages",
    )


@dataclass(frozen=True, slots=True)
class Translated:
    """An OpenAI request as Anthropic wants it, and what the answer's translation needs."""

    body: bytes  # the Anthropic Messages request body (compact JSON, ASCII)
    model: str | None
    stream: bool
    include_usage: bool  # stream_options.include_usage


def translate_request(body: bytes) -> Translated:
    """Translate a Chat Completions request body; raises `Untranslatable`."""
    payload = load_json_object(body)
    if payload is None:
        raise Untranslatable("body", "the request body is not a JSON object; send one")
    for key, value in payload.items():
        if value is None or key in _MAPPED or key in _DROPPED:
            continue
        harmless, why = _RULES.get(key, (set(), "unknown parameter"))
        if harmless and dump_json(value) in harmless:
            continue
        raise _unsupported(key, value, why)
    messages = payload.get("messages")
    if not isinstance(messages, list):
        raise Untranslatable("messages", "messages is missing or not a list; send the chat")
    system, turns = _translate_messages(messages)
    out: dict[str, Any] = {}
    if payload.get("model") is not None:
        out["model"] = payload["model"]
    out["messages"] = turns
    if system is not None:
        out["system"] = system
    limit = payload.get("max_completion_tokens")
    out["max_tokens"] = limit if limit is not None else payload.get("max_tokens")
    if out["max_tokens"] is None:
        out["max_tokens"] = DEFAULT_MAX_TOKENS
    stop = payload.get("stop")
    if stop is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    for key in ("temperature", "top_p"):
        if payload.get(key) is not None:
            out[key] = payload[key]
    out.update(_translate_tool_fields(payload))
    user = payload.get("user") or payload.get("safety_identifier")
    if user is not None:
        out["metadata"] = {"user_id": user}
    stream = payload.get("stream") is True
    if stream:
        out["stream"] = True
    return Translated(
        body=dump_json(out),
        model=get_str(payload, "model"),
        stream=stream,
        include_usage=get_dict(payload, "stream_options").get("include_usage") is True,
    )


def _translate_messages(messages: list[Any]) -> tuple[str | list[Any] | None, list[Any]]:
    """The top-level `system` and the alternating user/assistant turns."""
    system: list[Any] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise Untranslatable(where, f"{where} is not an object; send a chat message")
        role = message.get("role")
        if role not in _MESSAGE_KEYS:
            fix = "use system, developer, user, assistant or tool"
            raise _unsupported(f"{where}.role", role, "no such role", fix)
        for key, value in message.items():
            if key not in _MESSAGE_KEYS[role] and value is not None:
                raise _unsupported(f"{where}.{key}", value, "no Anthropic equivalent")
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), where))
            continue
        anthropic_role, content = _translate_turn(role, message, where)
        if turns and turns[-1]["role"] == anthropic_role:  # Anthropic wants alternation
            turns[-1]["content"] = _as_blocks(turns[-1]["content"]) + _as_blocks(content)
        else:
            turns.append({"role": anthropic_role, "content": content})
    if not system:
        return None, turns
    if len(system) == 1:
        return system[0]["text"], turns
    return system, turns


def _translate_turn(role: str, message: dict[str, Any], where: str) -> tuple[str, Any]:
    content = message.get("content")
    if role == "user":
        if isinstance(content, str):
            return "user", content
        return "user", [
            _user_part(part, f"{where}.content[{j}]") for j, part in _parts(content, where)
        ]
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise Untranslatable(
                f"{where}.tool_call_id", f"{where}.tool_call_id is missing; name the tool call"
            )
        result = content if isinstance(content, str) else _text_blocks(content, where)
        return "user", [{"type": "tool_result", "tool_use_id": call_id, "content": result}]
    blocks = [] if content is None or content == "" else _text_blocks(content, where)
    if isinstance(message.get("refusal"), str):
        blocks.append({"type": "text", "text": message["refusal"]})
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _unsupported(f"{where}.tool_calls", calls, "not a list")
    blocks.extend(_tool_use(call, f"{where}.tool_calls[{k}]") for k, call in enumerate(calls))
    if isinstance(content, str) and len(blocks) == 1 and blocks[0]["type"] == "text":
        return "assistant", content
    return "assistant", blocks or ""


def _parts(content: Any, where: str) -> list[tuple[int, dict[str, Any]]]:
    if not isinstance(content, list):
        raise _unsupported(f"{where}.content", content, "neither a string nor a list of parts")
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise _unsupported(f"{where}.content[{j}]", part, "not a content part")
    return list(enumerate(content))


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """String or text parts as Anthropic text blocks; any other part is refused."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in _parts(content, where):
        if part.get("type") not in ("text", "refusal"):
            kind = part.get("type")
            raise _unsupported(f"{where}.content[{j}].type", kind, "text only", "remove the part")
        text = part.get(part["type"])
        if not isinstance(text, str):
            raise _unsupported(f"{where}.content[{j}].{part['type']}", text, "not a string")
        blocks.append({"type": "text", "text": text})
    return blocks


def _user_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise _unsupported(f"{where}.text", part.get("text"), "not a string")
        return {"type": "text", "text": part["text"]}
    if kind != "image_url":
        raise _unsupported(f"{where}.type", kind, "text and images only", "remove the part")
    url = get_dict(part, "image_url").get("url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    header, comma, data = url.partition(",") if isinstance(url, str) else ("", "", "")
    media_type = header.removeprefix("data:").removesuffix(";base64")
    if not (comma and media_type and header == f"data:{media_type};base64"):
        fix = "send an http(s) URL or a data:<type>;base64 URL"
        raise _unsupported(f"{where}.image_url.url", url, "no such image source", fix)
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        kind = call.get("type") if isinstance(call, dict) else call
        raise _unsupported(f"{where}.type", kind, "function tool calls only")
    function = get_dict(call, "function")
    arguments = function.get("arguments")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(arguments, str):
        fix = "send the arguments as a JSON object"
        raise _unsupported(f"{where}.function.arguments", arguments, "not a JSON object", fix)
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": parsed}


def _as_blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content)


def _translate_tool_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """`tools` and `tool_choice`, which also carries `parallel_tool_calls: false`."""
    out: dict[str, Any] = {}
    if payload.get("tools") is not None:
        out["tools"] = _translate_tools(payload["tools"])
    choice = _translate_tool_choice(payload.get("tool_choice"))
    if payload.get("parallel_tool_calls") is False and (choice is not None or "tools" in out):
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":  # Anthropic's "none" takes no option
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _translate_tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _unsupported("tools", tools, "not a list")
    out = []
    for k, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else tool
        function = get_dict(tool, "function") if isinstance(tool, dict) else {}
        if kind != "function" or not function:
            raise _unsupported(f"tools[{k}].type", kind, "function tools only")
        translated: dict[str, Any] = {"name": function.get("name")}
        if function.get("description") is not None:
            translated["description"] = function["description"]
        schema = function.get("parameters")
        translated["input_schema"] = schema or {"type": "object", "properties": {}}
        out.append(translated)
    return out


def _translate_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return dict(_TOOL_CHOICES[choice])
    name = get_str(get_dict(choice, "function"), "name") if isinstance(choice, dict) else None
    if name is None or choice.get("type") != "function":
        raise _unsupported("tool_choice", choice, "auto, none, required or one function")
    return {"type": "tool", "name": name}


def translate_response(body: bytes, *, created: int) -> bytes:
    """An Anthropic Message body as an OpenAI `chat.completion` body; never raises.

    A body that is not a readable message becomes an OpenAI error body saying so.
    """
    message = load_json_object(body) or {}
    content = message.get("content")
    if not isinstance(content, list) or message.get("type", "message") != "message":
        why = "the Anthropic answer could not be translated to an OpenAI chat completion"
        return dump_json(_error_object("server_error", why))
    blocks = [block for block in content if isinstance(block, dict)]
    texts = [get_str(block, "text") or "" for block in blocks if block.get("type") == "text"]
    calls = [_tool_call(block) for block in blocks if block.get("type") == "tool_use"]
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    reply["refusal"] = None
    finish = _finish_reason(message.get("stop_reason"))
    choice = {"index": 0, "message": reply, "finish_reason": finish, "logprobs": None}
    answer = {
        "id": get_str(message, "id") or "",
        "object": "chat.completion",
        "created": created,
        "model": get_str(message, "model") or "",
        "choices": [choice],
        "usage": _usage(get_dict(message, "usage")),
    }
    return dump_json(answer)


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    # Not ASCII-escaped: the arguments read as the model wrote them (dump_json escapes later).
    arguments = json.dumps(block.get("input", {}), separators=(",", ":"), ensure_ascii=False)
    function = {"name": get_str(block, "name") or "", "arguments": arguments}
    return {"id": get_str(block, "id") or "", "type": "function", "function": function}


def _finish_reason(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _usage(counts: dict[str, Any]) -> dict[str, Any]:
    cached = get_count(counts, "cache_read_input_tokens")
    prompt = (
        get_count(counts, "input_tokens")
        + cached
        + get_count(counts, "cache_creation_input_tokens")
    )
    completion = get_count(counts, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def translate_error(status: int, body: bytes) -> bytes:
    """Any upstream error body as an OpenAI error body; never raises.

    Anthropic's error type is kept as the OpenAI `type`; a body that is not an Anthropic
    error gets the type Anthropic uses for `status` and a message built from the status.
    """
    error = get_dict(load_json_object(body) or {}, "error")
    kind = get_str(error, "type") or _status_error_type(status)
    message = get_str(error, "message") or f"Anthropic answered HTTP {status} with no message"
    return dump_json(_error_object(kind, message))


def _status_error_type(status: int) -> str:
    # Derived from the anthropic module, which owns the status-to-type table.
    return str(json.loads(anthropic.error_body(status, ""))["error"]["type"])


def _error_object(kind: str, message: str) -> dict[str, Any]:
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 1] + "…"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class StreamTranslator:
    """Turn an Anthropic Messages SSE stream into Chat Completions chunks, event by event."""

    def __init__(
        self, *, created: int, include_usage: bool, max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    ) -> None:
        self._decoder = SSEDecoder(max_event_size)
        self._created = created
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        self._tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._counts: dict[str, int] | None = None
        self._ended = False  # message_stop, error or failure: ignore further input
        self._done = False  # `[DONE]` written
        self._failure: str | None = None

    @property
    def failure(self) -> str | None:
        """Why translation stopped (an event over `max_event_size`), else None."""
        return self._failure

    def feed(self, data: bytes) -> bytes:
        """Consume Anthropic SSE bytes; return the OpenAI SSE bytes they complete."""
        out: list[bytes] = []
        # One line at a time: an oversize event then loses none of the events before it.
        for line in data.splitlines(keepends=True):
            if self._ended:
                break
            try:
                events = self._decoder.feed(line)
            except EventTooLarge as exc:
                self._failure = str(exc)
                self._ended = True
                message = f"the Anthropic stream could not be translated to OpenAI chunks: {exc}"
                out.append(_sse(_error_object("server_error", message)))
                break
            out.extend(self._translate(event) for event in events)
        return b"".join(out)

    def close(self) -> bytes:
        """End of the upstream stream: flush, then `[DONE]` unless already written."""
        out = b""
        if not self._ended:
            out = b"".join(self._translate(event) for event in self._decoder.close())
        if not self._done:
            self._done = True
            out += _DONE
        return out

    def _translate(self, event: SSEEvent) -> bytes:
        payload = None if self._ended else load_json_object(event.data)
        if payload is None:
            return b""  # ended, or not an Anthropic event: nothing to translate
        kind = get_str(payload, "type") or event.event
        if kind == "message_start":
            message = get_dict(payload, "message")
            self._id = get_str(message, "id") or self._id
            self._model = get_str(message, "model") or self._model
            self._merge_counts(get_dict(message, "usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            return self._start_block(_block_index(payload), get_dict(payload, "content_block"))
        if kind == "content_block_delta":
            return self._delta(_block_index(payload), get_dict(payload, "delta"))
        if kind == "message_delta":
            self._merge_counts(get_dict(payload, "usage"))
            return self._chunk({}, _finish_reason(get_dict(payload, "delta").get("stop_reason")))
        if kind == "message_stop":
            self._ended = self._done = True
            if not (self._include_usage and self._counts is not None):
                return _DONE
            usage = {**self._envelope(), "choices": [], "usage": _usage(self._counts)}
            return _sse(usage) + _DONE
        if kind == "error":
            self._ended = True
            error = get_dict(payload, "error")
            text = get_str(error, "message") or "the Anthropic stream reported an error"
            return _sse(_error_object(get_str(error, "type") or "api_error", text))
        return b""  # ping, content_block_stop, anything new

    def _start_block(self, index: int, block: dict[str, Any]) -> bytes:
        if block.get("type") == "tool_use":
            # OpenAI numbers tool calls from 0; Anthropic numbers all content blocks.
            k = self._tool_index[index] = len(self._tool_index)
            function = {"name": get_str(block, "name") or "", "arguments": ""}
            call = {"index": k, "id": get_str(block, "id") or "", "type": "function"}
            return self._chunk({"tool_calls": [{**call, "function": function}]})
        if block.get("type") == "text" and get_str(block, "text"):
            return self._chunk({"content": block["text"]})
        return b""  # thinking, or a text block opening empty as usual

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        if delta.get("type") == "text_delta" and get_str(delta, "text"):
            return self._chunk({"content": delta["text"]})
        k = self._tool_index.get(index)
        partial = get_str(delta, "partial_json")
        if delta.get("type") == "input_json_delta" and k is not None and partial:
            return self._chunk({"tool_calls": [{"index": k, "function": {"arguments": partial}}]})
        return b""  # thinking, signature, citations, an empty piece of JSON

    def _merge_counts(self, usage: dict[str, Any]) -> None:
        if usage:
            # Null or absent counts leave the earlier value alone; later ones override.
            counts = {key: usage[key] for key in _COUNT_FIELDS if has_count(usage, key)}
            self._counts = {**(self._counts or {}), **counts}

    def _envelope(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return _sse({**self._envelope(), "choices": [choice]})


def _block_index(payload: dict[str, Any]) -> int:
    index = payload.get("index")
    return index if type(index) is int else -1  # -1: a block with no usable index


def _sse(value: dict[str, Any]) -> bytes:
    return b"data: " + dump_json(value) + b"\n\n"
