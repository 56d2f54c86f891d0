"""The answer of a translated exchange (`anthropic-openai`), turned into the client's format.

The `Tee` reads the provider's own answer (usage exactly as Anthropic counted it); what comes
out of it, decoded, goes through an `AnswerTranslator` on its way to the client:

* a 2xx stream is translated event by event (`anthropic_openai.StreamTranslator`): each
  Anthropic event becomes its OpenAI chunks as soon as it is complete, nothing is held longer;
* anything else (a whole answer, an error) is held, bounded by `providers.max_event_size`,
  and translated once complete: its status and `Content-Length` go out with it. One that is
  over the bound cannot be translated and becomes a 502 saying so.
"""

from __future__ import annotations

from majordomo.providers import anthropic_openai, openai
from majordomo.proxy.headers import RawHeaders, downstream_headers

# Headers of the provider's answer that describe its body, which the client does not get.
_BODY_HEADERS = frozenset({b"content-type", b"content-encoding", b"content-length"})


class AnswerTranslator:
    """Translate one answer as it is relayed (see the module doc). No I/O."""

    def __init__(
        self, *, status: int, stream: bool, include_usage: bool, created: int, max_size: int
    ) -> None:
        self.status = status
        self._created = created
        self._max = max_size
        # A 2xx stream is relayed as it goes; everything else once whole.
        self.streamed = 200 <= status < 300 and stream
        self._stream = (
            anthropic_openai.StreamTranslator(
                created=created, include_usage=include_usage, max_event_size=max_size
            )
            if self.streamed
            else None
        )
        self._held = bytearray()
        self._over = False
        self.error_message: str | None = None

    def headers(self, upstream: RawHeaders) -> RawHeaders:
        """The client's response headers: the provider's, less those of its body."""
        kept = [
            (name, value)
            for name, value in downstream_headers(upstream, keep_length=False)
            if name not in _BODY_HEADERS
        ]
        kind = b"text/event-stream; charset=utf-8" if self.streamed else b"application/json"
        kept.append((b"content-type", kind))
        return kept

    def feed(self, data: bytes) -> bytes:
        """Take decoded bytes of the provider's answer; return the client's bytes for them."""
        if self._stream is not None:
            return self._stream.feed(data)
        if not self._over:
            if len(self._held) + len(data) > self._max:
                self._over = True
                self._held = bytearray()
            else:
                self._held += data
        return b""

    def finish(self) -> bytes:
        """The end of the answer: the client's last bytes (a whole answer: all of them).
        `status` may change here, for an answer too large to translate."""
        if self._stream is not None:
            return self._stream.close()
        if self._over:
            self.status = 502
            self.error_message = (
                f"the provider's answer exceeded {self._max} bytes "
                "(providers.max_event_size) and could not be translated"
            )
            return openai.error_body(502, self.error_message)
        if 200 <= self.status < 300:
            return anthropic_openai.translate_response(bytes(self._held), created=self._created)
        return anthropic_openai.translate_error(self.status, bytes(self._held))
