"""A hostile upstream: a raw TCP server that answers with whatever bytes a test hands it.

A real provider never sends a stream without line ends, a gzip bomb, or both `Content-Length`
and `Transfer-Encoding`; a broken or malicious one (or something in between) may. The fake
upstream speaks correct HTTP through hypercorn and cannot; this one writes the head and body
chunks it is given, verbatim, then closes the connection.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

# What to answer: (head bytes, body chunks), from the request head received.
Answer = Callable[[bytes], tuple[bytes, Iterable[bytes]]]


@dataclass
class HostileUpstream:
    answer: Answer
    base_url: str = ""
    requests: list[bytes] = field(default_factory=list)

    async def serve(
        self, *, task_status: trio.TaskStatus[HostileUpstream] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.base_url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                data = await stream.receive_some(65536)
                if not data:
                    return
                request += data
            # Read the body too: closing with unread data makes the kernel send a reset, which
            # can destroy the end of what was sent.
            head_part, _, body = request.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head_part)
            while length is not None and len(body) < int(length.group(1)):
                data = await stream.receive_some(65536)
                if not data:
                    return
                body += data
            self.requests.append(request)
            head, chunks = self.answer(request)
            try:
                await stream.send_all(head)
                for chunk in chunks:
                    await stream.send_all(chunk)
            except trio.BrokenResourceError:
                pass  # the gateway hung up


def chunked(pieces: Iterable[bytes]) -> Iterable[bytes]:
    """`pieces` in HTTP/1.1 chunked framing, ending with the last chunk."""
    for piece in pieces:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def gzip_bomb(expanded: int, piece: int = 1 << 20) -> bytes:
    """A gzip body of `expanded` zero bytes (about a thousandth of that, compressed)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(piece)
    out = [z.compress(zeros) for _ in range(expanded // piece)]
    out.append(z.flush())
    return b"".join(out)
