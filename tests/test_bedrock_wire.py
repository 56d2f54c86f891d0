"""Amazon Bedrock's wire format: the event-stream decoder, then the provider module.

The encoder in `tests/eventstream.py` is checked against botocore's own decoder, and every
fixture against botocore's own parsers with the bedrock-runtime service model, so the bytes
here are what boto3 reads from AWS. Every stream is also fed cut in two at every byte offset
and byte by byte: the messages, the usage and the relayed bytes must not move.
"""

from __future__ import annotations

import base64
import json
import struct
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import botocore.eventstream
import botocore.exceptions
import botocore.parsers
import botocore.serialize
import botocore.session
import pytest
from genai_prices import data as genai_data
from genai_prices.data_snapshot import DataSnapshot

import majordomo.providers.bedrock as bedrock
from majordomo.eventstream import EventMessage, EventStreamDecoder, EventStreamError, HeaderValue
from majordomo.providers.common import ProviderModule, RequestInfo
from majordomo.records import Usage
from tests.eventstream import (
    Byte,
    Long,
    Short,
    bedrock_event,
    bedrock_exception,
    encode_message,
)

pytestmark = pytest.mark.fast

FIXTURES = Path(__file__).parent / "fixtures" / "bedrock"
SERVICE = botocore.session.get_session().get_service_model("bedrock-runtime")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX = 16 * 1024 * 1024

# The module has every fact and function the registry expects of a provider.
MODULE: ProviderModule = bedrock


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def splits(stream: bytes) -> Iterator[tuple[bytes, ...]]:
    """The stream whole, cut in two at every offset, and byte by byte."""
    yield (stream,)
    for cut in range(len(stream) + 1):
        yield stream[:cut], stream[cut:]
    yield tuple(stream[i : i + 1] for i in range(len(stream)))


def decode(*chunks: bytes, max_message_size: int = MAX) -> list[EventMessage]:
    decoder = EventStreamDecoder(max_message_size)
    messages: list[EventMessage] = []
    for chunk in chunks:
        messages += decoder.feed(chunk)
    assert decoder.buffered == 0
    return messages


def raw_message(
    headers: bytes,
    payload: bytes = b"",
    *,
    total: int | None = None,
    headers_length: int | None = None,
) -> bytes:
    """A message with sound CRCs around whatever header bytes and lengths it is given."""
    prelude = struct.pack(
        ">II",
        16 + len(headers) + len(payload) if total is None else total,
        len(headers) if headers_length is None else headers_length,
    )
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def flip(stream: bytes, offset: int) -> bytes:
    return stream[:offset] + bytes([stream[offset] ^ 0x01]) + stream[offset + 1 :]


class _Body:
    """The little of urllib3's response that botocore's `EventStream` reads."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self) -> Iterator[bytes]:
        yield self._data

    def close(self) -> None:
        pass


def boto3_events(stream: bytes, operation: str) -> list[dict[str, Any]]:
    """The events boto3 yields for `stream` as the answer to `operation`."""
    output = SERVICE.operation_model(operation).output_shape
    shape = output.members["stream" if operation == "ConverseStream" else "body"]
    parser = botocore.parsers.EventStreamJSONParser()
    return list(botocore.eventstream.EventStream(_Body(stream), shape, parser, operation))


# ------------------------------------------------------------------------------- decoder

EVERY_TYPE: dict[str, HeaderValue] = {
    "true": True,
    "false": False,
    "byte": Byte(-7),
    "short": Short(-300),
    "int": 70_000,
    "long": Long(2**40),
    "big int": -(2**35),  # past 32 bits: sent as a long
    "bytes": b"\x00\xff\x10",
    "string": "Lumière — 東京",
    "timestamp": datetime(2025, 5, 14, 9, 30, 12, 345000, tzinfo=UTC),
    "uuid": uuid.UUID("6f3c2a1e-8b4d-4e2f-9a7c-1d5e0b3f4a21"),
    "": "an empty name",
}
STREAMS = {
    "converse_stream": fixture("converse_stream.bin"),
    "invoke_stream_anthropic": fixture("invoke_stream_anthropic.bin"),
    "every header type": encode_message(EVERY_TYPE, b'{"ok":true}'),
    "empty": encode_message({}, b""),
    "mixed": encode_message({}, b"")
    + bedrock_event("messageStart", {"role": "assistant"})
    + bedrock_exception("throttlingException", "Too many tokens, please wait.")
    + encode_message({"uuid": uuid.UUID(int=1), "": b""}, b"\x00" * 70),
}


def comparable(value: HeaderValue) -> Any:
    """A header value as botocore decodes it: timestamps in ms, UUIDs as bytes."""
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, uuid.UUID):
        return value.bytes
    return value


def test_round_trip_of_every_header_type() -> None:
    (message,) = decode(STREAMS["every header type"])
    assert message == EventMessage(headers=EVERY_TYPE, payload=b'{"ok":true}')
    kinds = [type(value) for value in message.headers.values()]
    assert kinds == [bool, bool, *[int] * 5, bytes, str, datetime, uuid.UUID, str]
    assert list(message.headers) == list(EVERY_TYPE)


@pytest.mark.parametrize("name", STREAMS)
def test_botocore_decodes_the_encoder_output_the_same(name: str) -> None:
    buffer = botocore.eventstream.EventStreamBuffer()
    buffer.add_data(STREAMS[name])
    theirs = [(message.headers, message.payload) for message in buffer]
    ours = [
        ({key: comparable(value) for key, value in message.headers.items()}, message.payload)
        for message in decode(STREAMS[name])
    ]
    assert ours == theirs
    assert ours


@pytest.mark.parametrize("name", STREAMS)
def test_every_split_gives_the_same_messages(name: str) -> None:
    stream = STREAMS[name]
    whole = decode(stream)
    for chunks in splits(stream):
        assert decode(*chunks) == whole, [len(chunk) for chunk in chunks]


def test_messages_come_out_as_soon_as_complete() -> None:
    first, second = bedrock_event("messageStart", {"role": "assistant"}), encode_message({}, b"")
    decoder = EventStreamDecoder(MAX)
    assert decoder.feed(first[:-1]) == []
    assert decoder.buffered == len(first) - 1
    assert [m.headers[":event-type"] for m in decoder.feed(first[-1:] + second[:5])] == [
        "messageStart"
    ]
    assert decoder.buffered == 5
    assert decoder.feed(second[5:]) == [EventMessage(headers={}, payload=b"")]
    assert decoder.buffered == 0


HEADER_TYPE_7 = b"\x04name\x07"
# (case, stream, error): a faulty stream raises wherever the network cut it.
FAULTS: list[tuple[str, bytes, str]] = [
    (
        "prelude crc",
        flip(STREAMS["empty"], 9),
        r"event-stream prelude CRC mismatch \(the stream says 0x\w{8}, the bytes give 0x\w{8}\)",
    ),
    ("prelude crc of a later message", STREAMS["empty"] + flip(STREAMS["empty"], 3), "prelude CRC"),
    (
        "message crc",
        flip(STREAMS["every header type"], 40),
        r"event-stream message CRC mismatch \(the stream says 0x\w{8}, the bytes give 0x\w{8}\)",
    ),
    ("message crc itself", flip(STREAMS["empty"], 14), "message CRC mismatch"),
    (
        "undersize",
        raw_message(b"", total=15),
        "claims 15 bytes, fewer than the 16 of an empty message",
    ),
    ("zero length", raw_message(b"", total=0), "claims 0 bytes"),
    (  # refused at its prelude, before any of it is held
        "oversize",
        raw_message(b"", total=MAX + 1),
        f"an event-stream message of {MAX + 1} bytes exceeds the limit of {MAX} bytes",
    ),
    (
        "headers longer than the message",
        raw_message(b"", b"abcd", headers_length=5),
        "of 20 bytes claims 5 bytes of headers, more than it holds",
    ),
    ("unknown header type", raw_message(b"\x01a\x0a"), "'a' has value type 10, which does not"),
    ("header type 255", raw_message(b"\x01a\xff"), "value type 255"),
    (
        "name past the end",
        raw_message(b"\x09short"),
        "an event-stream header runs past the end of the headers",
    ),
    (
        "no type byte",
        raw_message(b"\x04name"),
        "an event-stream header runs past the end of the headers",
    ),
    ("string past the end", raw_message(HEADER_TYPE_7 + b"\x00\x09abc"), "'name' runs past"),
    ("string length cut", raw_message(HEADER_TYPE_7 + b"\x00"), "'name' runs past"),
    ("int past the end", raw_message(b"\x01i\x04\x00\x00"), "'i' runs past"),
    ("uuid past the end", raw_message(b"\x01u\x09" + b"\x00" * 15), "'u' runs past"),
    ("bad utf-8 name", raw_message(b"\x02\xc3\x28\x00"), "header name is not valid UTF-8"),
    (
        "bad utf-8 string",
        raw_message(HEADER_TYPE_7 + b"\x00\x01\xff"),
        "header 'name' is not valid UTF-8",
    ),
    ("duplicate", raw_message(b"\x01a\x00\x01a\x01"), "header 'a' appears twice in one message"),
    (
        "timestamp out of range",
        raw_message(b"\x01t\x08" + struct.pack(">q", 2**63 - 1)),
        "'t' holds a timestamp out of range",
    ),
]


@pytest.mark.parametrize(("stream", "error"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_faults_raise_wherever_the_stream_is_cut(stream: bytes, error: str) -> None:
    for chunks in [(stream,), (stream[:7], stream[7:]), tuple(bytes([b]) for b in stream)]:
        with pytest.raises(EventStreamError, match=error):
            decode(*chunks)


def test_messages_before_a_fault_are_delivered_with_it() -> None:
    good = bedrock_event("messageStart", {"role": "assistant"})
    decoder = EventStreamDecoder(MAX)
    with pytest.raises(EventStreamError, match="message CRC mismatch") as raised:
        decoder.feed(good + good + flip(good, 30) + good)
    assert raised.value.messages == decode(good, good)


def test_the_decoder_is_spent_after_a_fault() -> None:
    decoder = EventStreamDecoder(MAX)
    with pytest.raises(EventStreamError):
        decoder.feed(flip(STREAMS["empty"], 9))
    assert decoder.buffered == 0
    with pytest.raises(EventStreamError, match="the event stream already failed: event-stream"):
        decoder.feed(STREAMS["empty"])


def test_an_oversized_message_is_refused_at_its_prelude() -> None:
    limit = 256
    fits = encode_message({":event-type": "chunk"}, b"x" * (limit - 16 - 20))
    assert len(fits) == limit
    decoder = EventStreamDecoder(limit)
    for i in range(len(fits) - 1):
        assert decoder.feed(fits[i : i + 1]) == []
        assert decoder.buffered <= limit + 12
    assert len(decoder.feed(fits[-1:])) == 1

    too_big = encode_message({}, b"x" * (limit - 15))
    decoder = EventStreamDecoder(limit)
    assert decoder.feed(too_big[:11]) == []
    with pytest.raises(EventStreamError, match="of 257 bytes exceeds the limit of 256 bytes"):
        decoder.feed(too_big[11:12])  # the prelude is complete: nothing of the payload held


def test_a_big_message_in_small_chunks_is_held_in_pieces() -> None:
    # 8 MiB in 1 KiB chunks: what is held grows by each chunk, and the message comes out whole.
    message = encode_message({":event-type": "chunk"}, b"x" * (8 * 1024 * 1024))
    decoder = EventStreamDecoder(MAX)
    messages: list[EventMessage] = []
    for start in range(0, len(message), 1024):
        messages += decoder.feed(message[start : start + 1024])
        assert decoder.buffered == (start + 1024 if not messages else 0)
    assert len(messages) == 1
    assert len(messages[0].payload) == 8 * 1024 * 1024


# ------------------------------------------------------------------------ request facts


def test_declared_facts() -> None:
    assert bedrock.NAME == "bedrock"
    assert bedrock.BASE_URL == ""  # derived from providers.bedrock.region
    assert bedrock.base_url_for("eu-west-3") == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    assert bedrock.base_url_for("cn-north-1") == (
        "https://bedrock-runtime.cn-north-1.amazonaws.com.cn"
    )
    assert (bedrock.CREDENTIAL_HEADER, bedrock.CREDENTIAL_SCHEME) == (b"authorization", b"Bearer ")
    assert (bedrock.PRICE_PROVIDER, bedrock.LLM_PRICES_VENDOR) == ("aws", "amazon")


@pytest.mark.parametrize(
    "model",
    [
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "us.anthropic.claude-sonnet-4-20250514-v1:0",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "amazon.nova-lite-v1:0",
        "us.amazon.nova-lite-v1:0",
        "meta.llama3-1-8b-instruct-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0",
    ],
)
def test_genai_prices_knows_bedrock_model_ids(model: str) -> None:
    # genai-prices matches aws models by substring: bare ids, inference profiles and ARNs.
    snapshot = DataSnapshot(providers=genai_data.providers, from_auto_update=False)
    provider = snapshot.find_provider(None, bedrock.PRICE_PROVIDER, None)
    assert provider.find_model(model) is not None


HAIKU_3 = "anthropic.claude-3-haiku-20240307-v1:0"
PROFILE_ARN = (
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
    "us.anthropic.claude-3-5-haiku-20241022-v1:0"
)
APPLICATION_ARN = (
    "arn:aws:bedrock:eu-west-3:123456789012:application-inference-profile/a1b2c3d4e5f6"
)


@pytest.mark.parametrize(
    ("operation", "model", "stream"),
    [
        ("Converse", HAIKU_3, False),
        ("ConverseStream", "us.anthropic.claude-sonnet-4-20250514-v1:0", True),
        ("InvokeModel", "amazon.nova-lite-v1:0", False),
        ("InvokeModelWithResponseStream", HAIKU_3, True),
        ("CountTokens", HAIKU_3, False),
        ("Converse", PROFILE_ARN, False),
        ("InvokeModelWithResponseStream", APPLICATION_ARN, True),
    ],
)
def test_request_info_reads_the_path_boto3_sends(operation: str, model: str, stream: bool) -> None:
    params: dict[str, Any] = {"modelId": model, "body": b"{}", "messages": []}
    if operation == "CountTokens":
        params = {"modelId": model, "input": {"converse": {"messages": []}}}
    elif operation.startswith("Converse"):
        del params["body"]
    else:
        del params["messages"]
    serializer = botocore.serialize.create_serializer("rest-json")
    raw_path = serializer.serialize_to_request(params, SERVICE.operation_model(operation))[
        "url_path"
    ]
    assert "%3A" in raw_path
    body = b'{"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}'
    # The raw path, and the ASGI `path` (decoded once: an ARN's %2F is a `/` again).
    for path in (raw_path, unquote(raw_path)):
        info = bedrock.request_info(path, "", body)
        assert info == RequestInfo(model=model, stream=stream, body=body)
        assert info.body is body
        assert bedrock.model_from_path(path) == model
        assert bedrock.operation(path) == raw_path.rpartition("/")[2]


@pytest.mark.parametrize(
    "path",
    ["/model/", "/model/x", "/model/x/", "/model//converse", "/v1/chat/completions", "/models/x/y"],
)
def test_request_info_of_other_paths(path: str) -> None:
    body = b'{"modelId": "amazon.nova-lite-v1:0"}'
    assert bedrock.request_info(path, "", body) == RequestInfo(model=None, stream=False, body=body)
    assert (bedrock.model_from_path(path), bedrock.operation(path)) == (None, None)


# ------------------------------------------------------------------------ usage, bodies

CONVERSE_MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"
# 21 uncached + 1024 cache reads + 512 cache writes.
CONVERSE_USAGE = Usage(
    input_tokens=1557, output_tokens=64, cached_tokens=1024, cache_creation_tokens=512
)
# 38 uncached + 1536 cache reads.
CONVERSE_STREAM_USAGE = Usage(input_tokens=1574, output_tokens=71, cached_tokens=1536)
HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
# 9 uncached + 2048 cache reads.
INVOKE_USAGE = Usage(input_tokens=2057, output_tokens=10, cached_tokens=2048)

NOVA_BODY = {
    "output": {"message": {"content": [{"text": "Paris."}], "role": "assistant"}},
    "stopReason": "end_turn",
    "usage": {
        "inputTokens": 7,
        "outputTokens": 3,
        "totalTokens": 1034,
        "cacheReadInputTokenCount": 1024,
        "cacheWriteInputTokenCount": 0,
    },
}
LLAMA_BODY = {
    "generation": " The capital of France is Paris.",
    "prompt_token_count": 18,
    "generation_token_count": 8,
    "stop_reason": "stop",
}
GPT_OSS_BODY = {
    "id": "chatcmpl-8f1c2b7e",
    "object": "chat.completion",
    "created": 1754400000,
    "model": "openai.gpt-oss-120b-1:0",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 21, "completion_tokens": 35, "total_tokens": 56},
}
TITAN_TEXT_BODY = {
    "inputTextTokenCount": 5,
    "results": [{"tokenCount": 12, "outputText": "Paris.", "completionReason": "FINISH"}],
}


def bedrock_path(model: str, operation: str) -> str:
    return f"/model/{model.replace(':', '%3A').replace('/', '%2F')}/{operation}"


# (path, body, model, usage)
BODY_CASES: list[tuple[str, bytes, str | None, Usage | None]] = [
    (
        bedrock_path(CONVERSE_MODEL, "converse"),
        fixture("converse.json"),
        CONVERSE_MODEL,
        CONVERSE_USAGE,
    ),
    (bedrock_path(HAIKU, "invoke"), fixture("invoke_anthropic.json"), HAIKU, INVOKE_USAGE),
    (
        bedrock_path("amazon.nova-lite-v1:0", "invoke"),
        json.dumps(NOVA_BODY).encode(),
        "amazon.nova-lite-v1:0",
        Usage(input_tokens=1031, output_tokens=3, cached_tokens=1024),
    ),
    (
        bedrock_path("meta.llama3-1-8b-instruct-v1:0", "invoke"),
        json.dumps(LLAMA_BODY).encode(),
        "meta.llama3-1-8b-instruct-v1:0",
        Usage(input_tokens=18, output_tokens=8),
    ),
    (
        bedrock_path("openai.gpt-oss-120b-1:0", "invoke"),
        json.dumps(GPT_OSS_BODY).encode(),
        "openai.gpt-oss-120b-1:0",
        Usage(input_tokens=21, output_tokens=35),
    ),
    (
        bedrock_path("amazon.titan-text-express-v1", "invoke"),
        json.dumps(TITAN_TEXT_BODY).encode(),
        "amazon.titan-text-express-v1",
        Usage(input_tokens=5, output_tokens=12),
    ),
    (
        bedrock_path("amazon.titan-embed-text-v2:0", "invoke"),
        b'{"embedding": [0.0123, -0.0456], "inputTextTokenCount": 6}',
        "amazon.titan-embed-text-v2:0",
        Usage(input_tokens=6),
    ),
    (  # Mistral's older models answer without usage (Bedrock tells it in headers only)
        bedrock_path("mistral.mistral-7b-instruct-v0:2", "invoke"),
        b'{"outputs": [{"text": " Paris.", "stop_reason": "stop"}]}',
        "mistral.mistral-7b-instruct-v0:2",
        None,
    ),
    (bedrock_path(HAIKU, "count-tokens"), b'{"inputTokens": 42}', HAIKU, Usage(input_tokens=42)),
    (  # a whole stream read at once still yields its usage
        bedrock_path(CONVERSE_MODEL, "converse-stream"),
        fixture("converse_stream.bin"),
        CONVERSE_MODEL,
        CONVERSE_STREAM_USAGE,
    ),
    (
        bedrock_path(HAIKU, "invoke-with-response-stream"),
        fixture("invoke_stream_anthropic.bin"),
        HAIKU,
        INVOKE_USAGE,
    ),
    (bedrock_path(HAIKU, "converse"), b'{"message": "Too many tokens"}', HAIKU, None),
    (bedrock_path(HAIKU, "converse"), b"<html>", HAIKU, None),
    ("/v1/messages", fixture("invoke_anthropic.json"), None, None),
]


@pytest.mark.parametrize(
    ("path", "body", "model", "usage"),
    BODY_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(BODY_CASES)],
)
def test_usage_from_body(path: str, body: bytes, model: str | None, usage: Usage | None) -> None:
    assert bedrock.usage_from_body(path, body) == (model, usage)


def test_usage_from_body_reads_one_spelling_of_the_cache_figures() -> None:
    body = json.loads(fixture("converse.json"))
    assert body["usage"]["cacheReadInputTokenCount"] == body["usage"]["cacheReadInputTokens"]
    del body["usage"]["cacheReadInputTokens"], body["usage"]["cacheWriteInputTokenCount"]
    _, usage = bedrock.usage_from_body(bedrock_path(HAIKU, "converse"), json.dumps(body).encode())
    assert usage == CONVERSE_USAGE


ODD_BODIES = [
    b"",
    b"null",
    b"[]",
    b"{",
    b"\xff\xfe\x00",
    b'{"usage": "lots"}',
    b'{"usage": {"inputTokens": "12", "outputTokens": null}}',
    b'{"usage": {"input_tokens": -4, "output_tokens": 1.5}}',
    b'{"prompt_token_count": true, "results": 7, "inputTextTokenCount": 3}',
    b"[" * 100_000,
    b"\x00\x00\x00\x10\x00\x00\x00\x00garbage!",
]


@pytest.mark.parametrize(
    "operation",
    ["converse", "converse-stream", "invoke", "invoke-with-response-stream", "count-tokens"],
)
def test_usage_from_body_never_raises(operation: str) -> None:
    for body in ODD_BODIES:
        model, usage = bedrock.usage_from_body(bedrock_path(HAIKU, operation), body)
        assert model == HAIKU
        assert usage is None or min(usage.input_tokens, usage.output_tokens) >= 0


def test_fixture_bodies_are_what_boto3_reads() -> None:
    parser = botocore.parsers.RestJSONParser()
    converse = parser.parse(
        {"status_code": 200, "headers": {}, "body": fixture("converse.json")},
        SERVICE.operation_model("Converse").output_shape,
    )
    assert converse["stopReason"] == "end_turn"
    assert converse["usage"] == {
        "inputTokens": 21,
        "outputTokens": 64,
        "totalTokens": 1621,
        "cacheReadInputTokens": 1024,
        "cacheWriteInputTokens": 512,
    }
    assert converse["usage"]["totalTokens"] == CONVERSE_USAGE.input_tokens + 64
    assert converse["output"]["message"]["content"][0]["text"].startswith("Under clause 14.2")
    message = json.loads(fixture("invoke_anthropic.json"))
    assert message["content"] == [{"type": "text", "text": "The capital of France is Paris."}]


# ------------------------------------------------------------------------------- errors

MESSAGE = "Too many tokens, please wait before trying again."
# (status, the code boto3 must see)
ERRORS = [
    (400, "ValidationException"),
    (401, "AccessDeniedException"),
    (403, "AccessDeniedException"),
    (404, "ResourceNotFoundException"),
    (408, "ModelTimeoutException"),
    (413, "ValidationException"),
    (418, "ValidationException"),
    (424, "ModelErrorException"),
    (429, "ThrottlingException"),
    (500, "InternalServerException"),
    (502, "InternalServerException"),
    (503, "ServiceUnavailableException"),
    (504, "InternalServerException"),
]
# Statuses the service model itself gives these errors.
MODELED_STATUS = {400, 403, 404, 408, 424, 429, 500, 503}


@pytest.fixture(scope="module")
def client_exceptions() -> Any:
    client = botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="not-used",
    )
    return client.exceptions


@pytest.mark.parametrize(("status", "code"), ERRORS)
def test_error_bodies_reach_boto3_as_its_own(
    status: int, code: str, client_exceptions: Any
) -> None:
    for message in (MESSAGE, "Modèle « indisponible »"):
        response = {
            "status_code": status,
            "headers": {},
            "body": bedrock.error_body(status, message),
        }
        for operation in ("Converse", "ConverseStream", "InvokeModel"):
            parsed = botocore.parsers.RestJSONParser().parse(
                response, SERVICE.operation_model(operation).output_shape
            )
            assert (parsed["Error"]["Code"], parsed["Error"]["Message"]) == (code, message)
    shape = SERVICE.shape_for(code)
    assert shape.metadata["exception"]
    if status in MODELED_STATUS:
        assert shape.metadata["error"]["httpStatusCode"] == status
    # boto3 raises its modeled class for the code, not the bare ClientError.
    raised = client_exceptions.from_code(code)
    assert raised is not botocore.exceptions.ClientError
    assert issubclass(raised, botocore.exceptions.ClientError)


# ---------------------------------------------------------------------------- streaming


def run_stream(
    chunks: tuple[bytes, ...], max_event_size: int = MAX
) -> tuple[bytes, str | None, Usage | None, str | None]:
    parser = bedrock.StreamParser(max_event_size=max_event_size)
    relayed = [parser.feed(chunk) for chunk in chunks]
    relayed.append(parser.close())
    return b"".join(relayed), parser.model, parser.usage, parser.failure


def chunk(native: dict[str, Any], padding: str = "abcdefgh") -> bytes:
    """An InvokeModelWithResponseStream `chunk` event around one native event."""
    raw = base64.b64encode(json.dumps(native, separators=(",", ":")).encode()).decode()
    return bedrock_event("chunk", {"bytes": raw, "p": padding})


ANTHROPIC_EVENTS = [
    json.loads(c["chunk"]["bytes"])
    for c in boto3_events(fixture("invoke_stream_anthropic.bin"), "InvokeModelWithResponseStream")
]
LLAMA_STREAM = b"".join(
    [
        chunk(
            {
                "generation": " Paris",
                "prompt_token_count": 18,
                "generation_token_count": 1,
                "stop_reason": None,
            }
        ),
        chunk(
            {
                "generation": ".",
                "prompt_token_count": None,
                "generation_token_count": 2,
                "stop_reason": None,
            }
        ),
        chunk(
            {
                "generation": "",
                "prompt_token_count": None,
                "generation_token_count": 3,
                "stop_reason": "stop",
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": 18,
                    "outputTokenCount": 3,
                    "invocationLatency": 301,
                    "firstByteLatency": 122,
                },
            }
        ),
    ]
)
NOVA_STREAM = b"".join(
    [
        chunk({"messageStart": {"role": "assistant"}}),
        chunk({"contentBlockDelta": {"delta": {"text": "Paris."}, "contentBlockIndex": 0}}),
        chunk({"contentBlockStop": {"contentBlockIndex": 0}}),
        chunk({"messageStop": {"stopReason": "end_turn"}}),
        chunk(
            {
                "metadata": {
                    "usage": {
                        "inputTokens": 7,
                        "outputTokens": 3,
                        "cacheReadInputTokenCount": 1024,
                    },
                    "metrics": {},
                    "trace": {},
                },
                "amazon-bedrock-invocationMetrics": {"inputTokenCount": 7, "outputTokenCount": 3},
            }
        ),
    ]
)
THROTTLED = bedrock_exception("throttlingException", MESSAGE)

# (case, stream, usage): every stream is fed whole, cut at every offset and byte by byte.
STREAM_CASES: list[tuple[str, bytes, Usage | None]] = [
    ("converse_stream.bin", fixture("converse_stream.bin"), CONVERSE_STREAM_USAGE),
    ("invoke_stream_anthropic.bin", fixture("invoke_stream_anthropic.bin"), INVOKE_USAGE),
    ("llama: invocation metrics only", LLAMA_STREAM, Usage(input_tokens=18, output_tokens=3)),
    (
        "nova: its metadata",
        NOVA_STREAM,
        Usage(input_tokens=1031, output_tokens=3, cached_tokens=1024),
    ),
    (  # throttled before the metadata event: no usage was ever told
        "converse throttled",
        bedrock_event("messageStart", {"p": "abcdefghij", "role": "assistant"}) + THROTTLED,
        None,
    ),
    (  # cut by an exception after message_start: its usage is all there is
        "anthropic cut short",
        chunk(ANTHROPIC_EVENTS[0])
        + chunk(ANTHROPIC_EVENTS[2])
        + bedrock_exception("modelStreamErrorException", "boom"),
        Usage(input_tokens=2057, output_tokens=1, cached_tokens=2048),
    ),
    (  # the model's own figures win over Bedrock's (which lack the cache split here)
        "anthropic and metrics",
        b"".join(chunk(e) for e in ANTHROPIC_EVENTS[:-1])
        + chunk(
            {
                "type": "message_stop",
                "amazon-bedrock-invocationMetrics": {
                    "inputTokenCount": 2057,
                    "outputTokenCount": 10,
                },
            }
        ),
        INVOKE_USAGE,
    ),
    (
        "odd chunks are skipped",
        bedrock_event("chunk", {"bytes": "not base64!"})
        + bedrock_event("chunk", {"bytes": base64.b64encode(b'"metadata" but not JSON').decode()})
        + bedrock_event("chunk", {"p": "no bytes"})
        + encode_message({":message-type": "event", ":event-type": "metadata"}, b"not json")
        + encode_message({":message-type": "error", ":error-code": "InternalFailure"}, b"")
        + LLAMA_STREAM,
        Usage(input_tokens=18, output_tokens=3),
    ),
]


@pytest.mark.parametrize(
    ("stream", "usage"), [c[1:] for c in STREAM_CASES], ids=[c[0] for c in STREAM_CASES]
)
def test_stream_parser_split_at_every_byte(stream: bytes, usage: Usage | None) -> None:
    for chunks in splits(stream):
        assert run_stream(chunks) == (stream, None, usage, None), [len(c) for c in chunks]


def test_relayed_chunks_are_the_very_bytes_objects_received() -> None:
    parser = bedrock.StreamParser()
    stream = fixture("invoke_stream_anthropic.bin")
    for piece in (stream[:100], stream[100:]):
        assert parser.feed(piece) is piece


def test_stream_fixtures_are_what_boto3_reads() -> None:
    events = boto3_events(fixture("converse_stream.bin"), "ConverseStream")
    assert [next(iter(event)) for event in events] == [
        "messageStart",
        *["contentBlockDelta"] * 4,
        "contentBlockStop",
        "contentBlockStart",
        *["contentBlockDelta"] * 3,
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    text = "".join(
        e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e
    )
    assert text == "I'll check the current weather in Paris for you."
    assert events[-1]["metadata"]["usage"] == {
        "inputTokens": 38,
        "outputTokens": 71,
        "totalTokens": 1645,
        "cacheReadInputTokens": 1536,
        "cacheWriteInputTokens": 0,
    }
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}
    assert [e["type"] for e in ANTHROPIC_EVENTS] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert (
        ANTHROPIC_EVENTS[-1]["amazon-bedrock-invocationMetrics"]["cacheReadInputTokenCount"] == 2048
    )


def test_exceptions_reach_boto3_as_its_own() -> None:
    stream = bedrock_event("messageStart", {"role": "assistant"}) + THROTTLED
    with pytest.raises(botocore.exceptions.EventStreamError) as raised:
        boto3_events(stream, "ConverseStream")
    assert raised.value.response["Error"] == {"Code": "throttlingException", "Message": MESSAGE}


@pytest.mark.parametrize(
    ("stream", "usage"),
    [
        (fixture("converse_stream.bin"), None),
        (
            fixture("invoke_stream_anthropic.bin"),
            Usage(input_tokens=2057, output_tokens=1, cached_tokens=2048),
        ),
    ],
)
def test_a_corrupt_stream_stops_usage_but_not_the_bytes(stream: bytes, usage: Usage | None) -> None:
    (first_length,) = struct.unpack_from(">I", stream)
    corrupt = flip(stream, first_length + 20)  # in the second message's headers
    for chunks in [(corrupt,), tuple(corrupt[i : i + 1] for i in range(len(corrupt)))]:
        relayed, model, seen, failure = run_stream(chunks)
        assert (relayed, model, seen) == (corrupt, None, usage)
        assert failure is not None
        assert failure.startswith("event-stream message CRC mismatch")
        assert failure.endswith("the response is corrupt; usage not read")


def test_a_message_over_max_event_size_stops_usage() -> None:
    stream = fixture("converse_stream.bin")
    relayed, _, usage, failure = run_stream((stream,), max_event_size=100)
    assert (relayed, usage) == (stream, None)
    assert failure is not None
    assert "exceeds the limit of 100 bytes (providers.max_event_size); usage not read" in failure
