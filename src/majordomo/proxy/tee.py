"""What the gateway learns from a response while relaying it: one sans-IO object.

A `Tee` sees every raw chunk of the provider's answer, on its way to the client, exactly once:

    tee = Tee(module, path, ...)
    for raw in upstream:  relay(tee.feed(raw))   # the bytes the client gets for this chunk
    result = tee.close()                          # model, usage, why not, the captured body

Inside, in order: a decompressor when the provider compressed the answer anyway (bounded by
`providers.max_decompressed_size`), then the provider's stream parser (a streamed 2xx) or a
bounded buffer (a complete body, read at the end for usage or an error message), and a capture
of the decoded body for body storage (bounded by `logging.max_body_size`). What the client
gets is the raw chunk, except on an uncompressed stream whose usage chunk the gateway asked for
itself (`inject_stream_usage`): the parser then holds that chunk back. No I/O and no clock, so
the tests replay whole answers split at every byte (`tests/test_tee.py`).

Whatever stops usage from being read — a body or event over its bound, a body that does not
decode, a bomb — is reported in `TeeResult.usage_error`, never a silent missing usage.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from majordomo.providers import ProviderModule, StreamParserLike
from majordomo.records import Usage

# Bound on an error message read from a provider's error body (characters).
MAX_ERROR_MESSAGE = 2000
_COMPRESSED = ("gzip", "x-gzip", "deflate")


@dataclass(frozen=True, slots=True)
class TeeResult:
    """What the answer said about itself, once it ended (or was cut off)."""

    model: str | None
    usage: Usage | None
    usage_error: str | None  # why usage could not be read from a 2xx answer
    error_message: str | None  # a non-2xx answer's message, read from its body
    captured: bytes  # the decoded body, up to the capture limit
    captured_all: bool
    streamed: bool  # a 2xx stream, read event by event
    tail: bytes  # bytes the parser still held back, to relay after the last chunk


def error_message_from(body: bytes) -> str:
    """A bounded, readable error message from a provider's error body."""
    text = body[: MAX_ERROR_MESSAGE * 4].decode("utf-8", "replace").strip()
    try:
        payload = json.loads(body)
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(payload, dict) and isinstance(payload.get("message"), str):
            text = payload["message"]
    except (ValueError, UnicodeDecodeError):
        pass
    return text[:MAX_ERROR_MESSAGE]


class Decompressor:
    """Decodes a gzip/deflate body for the parser while the raw bytes go to the client.

    Output comes in pieces of at most `PIECE` bytes, and stops for good once `budget` bytes
    came out (a gzip bomb) or the data turns out not to decode: `failure` then says why.
    """

    PIECE = 64 * 1024

    def __init__(self, encoding: str, budget: int) -> None:
        wbits = 16 + zlib.MAX_WBITS if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits)
        self._encoding = encoding
        self._limit = self._budget = budget
        self.failure: str | None = None

    def decode(self, data: bytes) -> Iterator[bytes]:
        while data and self.failure is None and not self._z.eof:
            try:
                out = self._z.decompress(data, self.PIECE)
            except zlib.error as exc:
                self.failure = (
                    f"the {self._encoding} response does not decode ({exc}); usage not read"
                )
                return
            data = self._z.unconsumed_tail
            if len(out) > self._budget:
                self.failure = (
                    f"the response decompresses to more than {self._limit} bytes "
                    "(providers.max_decompressed_size); usage not read"
                )
                return
            self._budget -= len(out)
            if out:
                yield out


class Tee:
    """Decompress, parse and capture one response as it is relayed (see the module doc)."""

    def __init__(
        self,
        module: ProviderModule,
        path: str,
        *,
        status: int,
        stream: bool,
        strip_usage_chunk: bool,
        content_encoding: str,
        max_event_size: int,
        max_decompressed_size: int,
        capture_limit: int | None,
        decoded: bool = False,
    ) -> None:
        self._module = module
        # Relay the decoded bytes, not the raw ones (for a translator, which reads them).
        self._decoded = decoded
        self._path = path
        self._ok = 200 <= status < 300
        encoding = content_encoding.lower()
        self._decompressor = (
            Decompressor(encoding, max_decompressed_size) if encoding in _COMPRESSED else None
        )
        # A compressed stream cannot be edited on the fly: then the usage chunk stays.
        self.edits = self._ok and stream and strip_usage_chunk and self._decompressor is None
        self.streamed = self._ok and stream
        self._parser: StreamParserLike | None = (
            module.StreamParser(strip_usage_chunk=self.edits, max_event_size=max_event_size)
            if self.streamed
            else None
        )
        # A complete body is kept to read usage (2xx) or the error message (others) from.
        self._keep_limit = max_event_size if self._ok else MAX_ERROR_MESSAGE * 4
        self._kept = bytearray()
        self._kept_all = True
        self._capture_limit = capture_limit
        self._captured = bytearray()
        self._captured_all = True
        self._result: TeeResult | None = None

    def feed(self, raw: bytes) -> bytes:
        """Take one raw chunk from upstream; return the bytes to relay for it."""
        out = raw
        pieces: Iterable[bytes] = (
            self._decompressor.decode(raw) if self._decompressor is not None else (raw,)
        )
        if self._decoded and self._decompressor is not None:
            pieces = list(pieces)
            out = b"".join(pieces)
        for data in pieces:
            if self._parser is not None:
                relayed = self._parser.feed(data)
                if self.edits:
                    out = relayed
            elif self._kept_all:
                if len(self._kept) + len(data) <= self._keep_limit:
                    self._kept += data
                else:  # too large to read usage from: stop keeping it
                    self._kept_all = False
                    self._kept = self._kept[: self._keep_limit] if not self._ok else bytearray()
            if self._capture_limit is not None:
                room = self._capture_limit - len(self._captured)
                self._captured += data[: max(room, 0)]
                self._captured_all = self._captured_all and len(data) <= room
        return out

    def close(self) -> TeeResult:
        """The end of the answer (complete or not): what it said. Calling it again returns
        the same result."""
        if self._result is not None:
            return self._result
        model: str | None = None
        usage: Usage | None = None
        usage_error: str | None = None
        error_message: str | None = None
        tail = b""
        if self._parser is not None:
            tail = self._parser.close()
            if not self.edits:
                tail = b""  # the raw bytes were relayed as they came
            model, usage, usage_error = self._parser.model, self._parser.usage, self._parser.failure
        elif self._ok and self._kept_all and self._kept:
            model, usage = self._module.usage_from_body(self._path, bytes(self._kept))
        elif self._ok and not self._kept_all:
            usage_error = (
                f"the response body exceeded {self._keep_limit} bytes "
                "(providers.max_event_size); usage not read"
            )
        elif not self._ok:
            error_message = error_message_from(bytes(self._kept))
        if self._decompressor is not None and self._decompressor.failure is not None:
            usage_error = self._decompressor.failure
        self._result = TeeResult(
            model=model,
            usage=usage,
            usage_error=usage_error,
            error_message=error_message,
            captured=bytes(self._captured),
            captured_all=self._captured_all,
            streamed=self.streamed,
            tail=tail,
        )
        return self._result
