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
"""

from __future__ import annotations

from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
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

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # pieces of a line whose terminator has not arrived
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
            self._partial.append(data)
            return []
        if self._partial:
            self._partial.append(data)
            data = b"".join(self._partial)
            self._partial = []
        lines = data.splitlines()
        last = data[-1]
        if last == _CR:
            self._skip_lf = True
        elif last != _LF:
            self._partial.append(lines.pop())
        return self._interpret(lines)

    def close(self) -> list[SSEEvent]:
        """End of stream: interpret an unterminated last line and flush the pending event."""
        events: list[SSEEvent] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial = []
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
                self._data.append(line[6:])
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
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id" and b"\x00" not in value:
            self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():  # ASCII digits only, as the spec wants
            self.retry = int(value)
        # Any other field is ignored, as the spec says.

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
        self._event = b""
