"""A raw HTTP/1.1 client for requests no SDK (nor httpx) would send, and a listener that
records who connects to it.

`exchange` writes the given bytes as they are and reads one response with h11, so a test can
send absolute-form targets, CONNECT, undecodable paths or conflicting framing headers, and see
exactly what came back (and whether the server closed the connection afterwards).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import h11
import trio


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    # Whether the server closed the connection once the response was complete.
    closed: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").partition(":")
    return host, int(port.split("/")[0])


async def exchange(
    url: str, request: bytes, *, deadline: float = 10, close_wait: float = 0
) -> RawResponse:
    """Send `request` verbatim to the server at `url` and read one response; with a
    `close_wait`, then wait that long at most for the server to close the connection."""
    host, port = host_port(url)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request)
        client = h11.Connection(h11.CLIENT)
        # The request went out raw; tell h11 what it was so it can frame the response.
        client.send(h11.Request(method="GET", target="/", headers=[("Host", host)]))
        client.send(h11.EndOfMessage())
        status, headers, body = 0, [], bytearray()
        with trio.fail_after(deadline):
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = [(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers]
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        response = RawResponse(status, headers, bytes(body))
        if close_wait:
            with trio.move_on_after(close_wait):
                response.closed = await stream.receive_some(1) == b""
        return response


@dataclass
class Tripwire:
    """A TCP listener that should never be reached: it records every connection it gets."""

    port: int = 0
    connections: list[bytes] = field(default_factory=list)

    async def serve(
        self, *, task_status: trio.TaskStatus[Tripwire] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)

        async def handle(stream: trio.SocketStream) -> None:
            async with stream:
                with trio.move_on_after(1):
                    self.connections.append(await stream.receive_some(65536))

        await trio.serve_listeners(handle, listeners)
