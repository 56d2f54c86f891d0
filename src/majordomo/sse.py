"""Incremental Server-Sent Events decoder (sans-IO).

Theory of operation
-------------------
`SSEDecoder` implements the WHATWG "event stream interpretation" algorithm over bytes: you
`feed()` it whatever the network delivered and get back the events those bytes completed.
It never blocks, never does I/O and never looks at a byte twice in the common case:

* Only complete lines are interpreted. A chunk holding no line terminator is parked as-is
  (no scan of what was parked before), so a long `data:` line split over many chunks costs
  one join when its terminator finally arrives, not one scan per chunk.
* Lines end at CR LF, LF or CR (`bytes.splitlines` splits on exactly these three). A CR at the
  very end of a chunk may be the first half of a CR LF split across chunks, so the decoder
  remembers it and drops a LF that starts the next chunk.
* Line terminators are ASCII, so a line never ends inside a UTF-8 sequence: decoding whole
  lines (with replacement, as the spec says) handles characters split across chunks for free.
* Fields are compared as bytes; only the data of a dispatched event is decoded to `str`.

`close()` flushes a trailing event that lacks its final blank line. The spec would drop it,
but a gateway wants the usage a cut-short stream did carry.

Memory is bounded: a line still waiting for its terminator, or the data of an event still
waiting for its blank line, may not grow past `max_event_size` bytes. Past it `feed` raises
`EventTooLarge` (a hostile or broken upstream: a stream without newlines); the decoder is then
spent, and its owner stops reading usage while the bytes keep flowing to the client.
"""

from __future__ import annotations

from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
# The default bound on one line or one event's data (bytes).
DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024


class EventTooLarge(ValueError):
    """A line or an event grew past the decoder's `max_event_size`."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"one event of the response exceeded {limit} bytes (providers.max_event_size); "
            "usage not read"
        )


_LF = 0x0A
_CR = 0x0D
_COLON = 0x3A


@dataclass(frozen=True, slots=True, kw_only=True)
class SSEEvent:
    """One dispatched event: its type, its data lines joined by LF, and the last event id."""

    event: str = "message"
    data: str
    id: str | None = None


class SSEDecoder:
    """Turn a byte stream into `SSEEvent`s, one chunk at a time.

    `retry` holds the last valid `retry:` value (milliseconds), if any.
    """

    def __init__(self, max_event_size: int = DEFAULT_MAX_EVENT_SIZE) -> None:
        self._max = max_event_size
        self._partial: list[bytes] = []  # pieces of a line whose terminator has not arrived
        self._partial_size = 0
        self._data_size = 0  # bytes in `_data`
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to it
        self._at_start = True  # a byte-order mark may open the stream
        self._data: list[bytes] = []  # data lines of the event being built
        self._event = b""
        self._last_id: str | None = None
        self.retry: int | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Consume `data` and return the events it completed (possibly none)."""
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == _LF:
                data = data[1:]
                if not data:
                    return []
        if b"\n" not in data and b"\r" not in data:
            self._park(data)
            return []
        if self._partial:
            self._partial.append(data)
            data = b"".join(self._partial)
            self._partial = []
            self._partial_size = 0
        lines = data.splitlines()
        last = data[-1]
        if last == _CR:
            self._skip_lf = True
        elif last != _LF:
            self._park(lines.pop())
        return self._interpret(lines)

    def _park(self, piece: bytes) -> None:
        self._partial_size += len(piece)
        if self._partial_size > self._max:
            raise EventTooLarge(self._max)
        self._partial.append(piece)

    def close(self) -> list[SSEEvent]:
        """End of stream: interpret an unterminated last line and flush the pending event."""
        events: list[SSEEvent] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial = []
            self._partial_size = 0
            events = self._interpret([line])
        self._skip_lf = False
        self._dispatch(events)
        return events

    def _interpret(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if self._at_start and lines:
            self._at_start = False
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][len(_BOM) :]
        for line in lines:
            if not line:
                self._dispatch(events)
            # The overwhelmingly common line comes first.
            elif line.startswith(b"data: "):
                self._add_data(line[6:])
            elif line[0] == _COLON:
                continue  # a comment, e.g. a keep-alive
            else:
                self._interpret_field(line)
        return events

    def _interpret_field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._add_data(value)
        elif name == b"event":
            self._event = value
        elif name == b"id" and b"\x00" not in value:
            self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():  # ASCII digits only, as the spec wants
            self.retry = int(value)
        # Any other field is ignored, as the spec says.

    def _add_data(self, value: bytes) -> None:
        self._data_size += len(value) + 1
        if self._data_size > self._max:
            raise EventTooLarge(self._max)
        self._data.append(value)

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(
                SSEEvent(
                    event=self._event.decode("utf-8", "replace") if self._event else "message",
                    data=b"\n".join(self._data).decode("utf-8", "replace"),
                    id=self._last_id,
                )
            )
            self._data = []
            self._data_size = 0
        self._event = b""
