"""Incremental decoder of the AWS event-stream framing (sans-IO).

Theory of operation
-------------------
Amazon Bedrock streams (`application/vnd.amazon.eventstream`) are a sequence of binary
messages, each self-delimiting and checksummed (big-endian throughout):

    total length  u32 ─┐
    headers length u32 ├ prelude (12 bytes)
    prelude CRC32  u32 ─┘ over the 8 bytes before it
    headers            name length u8, name (UTF-8), value type u8, value
    payload            total - headers - 16 bytes
    message CRC32  u32 over every byte before it, prelude included

Header values are typed: 0 true, 1 false, 2 byte, 3 short, 4 int, 5 long (signed integers),
6 bytes and 7 string (u16 length first), 8 timestamp (i64 milliseconds since the epoch),
9 UUID (16 bytes). Bedrock itself only sends strings (`:message-type`, `:event-type`,
`:content-type`, `:exception-type`); the others are decoded all the same.

`EventStreamDecoder.feed()` takes whatever the network delivered and returns the messages
those bytes completed. Complete messages are cut straight out of the chunk that holds them.
Of a message still incomplete at the end of a chunk, the decoder keeps the pieces in a list
with their total size: a big message arriving in many small chunks costs one join when its
last byte arrives, never a re-scan per chunk. The prelude is checked as soon as its 12 bytes
are in, so a length under 16 (smaller than an empty message) or over `max_message_size` is
refused before any of the payload is held: the decoder never buffers more than one message
of at most `max_message_size` bytes (or an incomplete prelude).

Every fault is an `EventStreamError`: a prelude or message CRC that does not match, a length
out of bounds, a header that runs past its section, an unknown value type, a duplicate name.
The stream cannot be resynchronised after one (the lengths are what delimit messages), so
the decoder is then spent and every later `feed` raises again. The messages the failing call
completed before the fault are sound, and ride on the error (`EventStreamError.messages`).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = ["EventMessage", "EventStreamDecoder", "EventStreamError", "HeaderValue"]

# What a header decodes to, by type: bool (0, 1), int (2-5), bytes (6), str (7),
# datetime (8, UTC), UUID (9).
HeaderValue = bool | int | bytes | str | datetime | uuid.UUID

_PRELUDE = struct.Struct(">III")  # total length, headers length, prelude CRC
_PRELUDE_SIZE = _PRELUDE.size
_CRC = struct.Struct(">I")
# The smallest message: a prelude and a message CRC, no headers, no payload.
_MIN_MESSAGE_SIZE = _PRELUDE_SIZE + _CRC.size
_LENGTH = struct.Struct(">H")  # of a bytes or string header value
# Fixed-size header values by type: signed integers of each width, and the timestamp.
_NUMBERS = {
    2: struct.Struct(">b"),  # byte
    3: struct.Struct(">h"),  # short
    4: struct.Struct(">i"),  # int
    5: struct.Struct(">q"),  # long
    8: struct.Struct(">q"),  # timestamp
}
_BYTES, _STRING, _TIMESTAMP, _UUID = 6, 7, 8, 9
_UUID_SIZE = 16
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class EventStreamError(ValueError):
    """The bytes are not a valid event stream (or a message is over the size limit).

    `messages` holds what the failing `feed` call completed before the fault: those messages
    were whole and sound, and are delivered all the same.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.messages: list[EventMessage] = []


@dataclass(frozen=True, slots=True)
class EventMessage:
    """One decoded message: its headers by name, and its payload."""

    headers: dict[str, HeaderValue]
    payload: bytes


class EventStreamDecoder:
    """Turn a byte stream into `EventMessage`s, one chunk at a time.

    `max_message_size` bounds one whole message (prelude and CRCs included).
    """

    def __init__(self, max_message_size: int) -> None:
        self._max = max_message_size
        self._pieces: list[bytes] = []  # the start of a message whose end has not arrived
        self._held = 0  # bytes in `_pieces`
        self._expected = 0  # that message's total length, once its prelude is in; else 0
        self._failure: EventStreamError | None = None

    @property
    def buffered(self) -> int:
        """How many bytes of an incomplete message the decoder holds."""
        return self._held

    def feed(self, data: bytes) -> list[EventMessage]:
        """Consume `data` and return the messages it completed (possibly none).

        Raises `EventStreamError` on the first fault, and on every call after it.
        """
        if self._failure is not None:
            raise EventStreamError(f"the event stream already failed: {self._failure}")
        messages: list[EventMessage] = []
        if not data:
            return messages
        try:
            self._feed(data, messages)
        except EventStreamError as exc:
            exc.messages = messages
            self._failure = exc
            self._pieces, self._held = [], 0
            raise
        return messages

    def _feed(self, data: bytes, messages: list[EventMessage]) -> None:
        start = 0
        if self._held:
            start = self._complete_held(data, messages)
            if start < 0:
                return
        end = len(data)
        while end - start >= _PRELUDE_SIZE:
            total = self._check_prelude(data, start)
            if end - start < total:
                self._expected = total
                break
            messages.append(self._decode(data[start : start + total]))
            start += total
        if start < end:
            self._hold(data[start:] if start else data)

    def _complete_held(self, data: bytes, messages: list[EventMessage]) -> int:
        """Add `data` to the held message; return where the rest of `data` starts, or -1
        when all of it was held."""
        taken = 0
        if not self._expected:  # fewer than 12 bytes held: the prelude first
            taken = _PRELUDE_SIZE - self._held
            if len(data) < taken:
                self._hold(data)
                return -1
            prelude = b"".join([*self._pieces, data[:taken]])
            self._expected = self._check_prelude(prelude, 0)
            self._pieces, self._held = [prelude], _PRELUDE_SIZE
        missing = self._expected - self._held
        if len(data) - taken < missing:
            self._hold(data[taken:] if taken else data)
            return -1
        message = b"".join([*self._pieces, data[taken : taken + missing]])
        self._pieces, self._held, self._expected = [], 0, 0
        messages.append(self._decode(message))
        return taken + missing

    def _hold(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._held += len(piece)

    def _check_prelude(self, data: bytes, start: int) -> int:
        """The total length the prelude at `start` announces, once it proved sound."""
        fields: tuple[int, int, int] = _PRELUDE.unpack_from(data, start)
        total, headers_length, crc = fields
        computed = zlib.crc32(memoryview(data)[start : start + 8])
        if crc != computed:
            raise EventStreamError(
                f"event-stream prelude CRC mismatch (the stream says {crc:#010x}, the bytes "
                f"give {computed:#010x}): the response is corrupt or not an event stream"
            )
        if total < _MIN_MESSAGE_SIZE:
            raise EventStreamError(
                f"an event-stream message claims {total} bytes, fewer than the "
                f"{_MIN_MESSAGE_SIZE} of an empty message: the response is corrupt"
            )
        if total > self._max:
            raise EventStreamError(
                f"an event-stream message of {total} bytes exceeds the limit of {self._max} "
                "bytes (providers.max_event_size)"
            )
        if headers_length > total - _MIN_MESSAGE_SIZE:
            raise EventStreamError(
                f"an event-stream message of {total} bytes claims {headers_length} bytes of "
                "headers, more than it holds: the response is corrupt"
            )
        return total

    def _decode(self, message: bytes) -> EventMessage:
        """One whole message whose prelude was checked: verify its CRC, read it."""
        total = len(message)
        (crc,) = _CRC.unpack_from(message, total - _CRC.size)
        computed = zlib.crc32(memoryview(message)[: total - _CRC.size])
        if crc != computed:
            raise EventStreamError(
                f"event-stream message CRC mismatch (the stream says {crc:#010x}, the bytes "
                f"give {computed:#010x}): the response is corrupt"
            )
        headers_end = _PRELUDE_SIZE + _PRELUDE.unpack_from(message)[1]
        return EventMessage(
            headers=_decode_headers(message, _PRELUDE_SIZE, headers_end),
            payload=message[headers_end : total - _CRC.size],
        )


def _decode_headers(data: bytes, start: int, end: int) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    position = start
    while position < end:
        name_end = position + 1 + data[position]
        if name_end >= end:  # the name, and then at least the type byte, must fit
            raise EventStreamError(
                "an event-stream header runs past the end of the headers: the response is corrupt"
            )
        name = _text(data[position + 1 : name_end], "header name")
        value, position = _decode_value(data, name, data[name_end], name_end + 1, end)
        if name in headers:
            raise EventStreamError(f"event-stream header {name!r} appears twice in one message")
        headers[name] = value
    return headers


def _decode_value(
    data: bytes, name: str, kind: int, start: int, end: int
) -> tuple[HeaderValue, int]:
    """The value of type `kind` at `start`, and where the next header starts."""
    if kind <= 1:
        return kind == 0, start
    if kind in (_BYTES, _STRING):
        value_start = _fits(name, start, _LENGTH.size, end)
        value_end = _fits(name, value_start, _LENGTH.unpack_from(data, start)[0], end)
        raw = data[value_start:value_end]
        return (_text(raw, f"header {name!r}") if kind == _STRING else raw), value_end
    if kind == _UUID:
        value_end = _fits(name, start, _UUID_SIZE, end)
        return uuid.UUID(bytes=data[start:value_end]), value_end
    number = _NUMBERS.get(kind)
    if number is None:
        raise EventStreamError(
            f"event-stream header {name!r} has value type {kind}, which does not exist (0-9 do)"
        )
    value_end = _fits(name, start, number.size, end)
    (integer,) = number.unpack_from(data, start)
    if kind != _TIMESTAMP:
        return integer, value_end
    try:
        return _EPOCH + timedelta(milliseconds=integer), value_end
    except OverflowError:
        raise EventStreamError(
            f"event-stream header {name!r} holds a timestamp out of range ({integer} ms)"
        ) from None


def _fits(name: str, start: int, size: int, end: int) -> int:
    if start + size > end:
        raise EventStreamError(
            f"event-stream header {name!r} runs past the end of the headers: the response is "
            "corrupt"
        )
    return start + size


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EventStreamError(f"event-stream {what} is not valid UTF-8") from None
