"""A test-side encoder of the AWS event-stream framing, and Bedrock's messages in it.

The inverse of `majordomo.eventstream`, checked against botocore's own decoder in
`test_bedrock_wire.py`. A header's value type follows its Python type: bool (0/1), int (4,
or 5 past 32 bits), bytes (6), str (7), datetime (8), UUID (9); `Byte`, `Short` and `Long`
ask for the other integer widths. Bedrock's own messages carry three string headers, in the
order AWS sends them, and a compact JSON payload.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from majordomo.eventstream import HeaderValue

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT32 = range(-(2**31), 2**31)


class Byte(int):
    """A header value sent as a signed byte (type 2)."""


class Short(int):
    """A header value sent as a signed 16-bit integer (type 3)."""


class Long(int):
    """A header value sent as a signed 64-bit integer (type 5)."""


def encode_header(name: str, value: HeaderValue) -> bytes:
    """One header: name length, name, value type, value."""
    raw_name = name.encode()
    head = struct.pack(">B", len(raw_name)) + raw_name
    if isinstance(value, bool):
        return head + (b"\x00" if value else b"\x01")
    if isinstance(value, Byte):
        return head + struct.pack(">Bb", 2, value)
    if isinstance(value, Short):
        return head + struct.pack(">Bh", 3, value)
    if isinstance(value, int):
        if isinstance(value, Long) or value not in _INT32:
            return head + struct.pack(">Bq", 5, value)
        return head + struct.pack(">Bi", 4, value)
    if isinstance(value, bytes):
        return head + struct.pack(">BH", 6, len(value)) + value
    if isinstance(value, str):
        raw = value.encode()
        return head + struct.pack(">BH", 7, len(raw)) + raw
    if isinstance(value, datetime):
        return head + struct.pack(">Bq", 8, (value - _EPOCH) // timedelta(milliseconds=1))
    return head + b"\x09" + value.bytes


def encode_message(headers: Mapping[str, HeaderValue], payload: bytes) -> bytes:
    """One whole message: prelude and its CRC, headers, payload, message CRC."""
    encoded = b"".join(encode_header(name, value) for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def bedrock_event(event_type: str, payload: dict[str, Any]) -> bytes:
    """A Bedrock stream event (`messageStart`, `chunk`, `metadata` ...) with a JSON payload."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_message(headers, _compact(payload))


def bedrock_exception(exception_type: str, message: str) -> bytes:
    """A Bedrock stream exception (`throttlingException`, `modelStreamErrorException` ...)."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, _compact({"message": message}))
