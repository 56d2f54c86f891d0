"""A fast fake OpenAI upstream for benchmarks: raw trio sockets writing canned answers.

`tests.fakeupstream` builds every answer from the request (hypercorn, JSON parsing, hashing) and
tops out near 1200 req/s on one core, which would cap the "direct" numbers. This server answers
`POST /v1/chat/completions` with bytes built once at start-up by that same fake (so the payloads
are the ones the tests check against recorded OpenAI traffic), wrapped in the response headers
OpenAI really sends:

* a plain request gets the pretty-printed `chat.completion` body with `content-length`;
* a request with `"stream": true` gets the SSE stream (`transfer-encoding: chunked`), one HTTP
  chunk and one `send` per event, ending in `data: [DONE]`; with `include_usage` in the body
  (the gateway adds `stream_options.include_usage`) the stream carries the usage-only chunk.

Request parsing is the minimum for HTTP/1.1 keep-alive: read the head, find `content-length`,
read the body, look for the two markers. Anything else gets a canned 404.

Run `python -m benchmarks.upstream --port N`: prints its base URL, serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
from dataclasses import dataclass
from email.utils import formatdate
from functools import partial

import trio
from tests.fakeupstream import Reply, answer

# The request the canned answers are built from; the answers do not depend on the caller's
# messages (every request gets the same bytes, as a cache would serve them).
MODEL = "gpt-4o-mini"
PROMPT = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France, and what is it known for?"},
]
# Content chunks of each answer: 5 is tests.fakeupstream's default (≈ 8 SSE events).
CHUNKS = 5
# Heads bigger than this are refused: a benchmark client sends about 600 bytes.
MAX_HEAD = 64 * 1024
RECEIVE_SIZE = 64 * 1024


def _openai_headers(content_type: bytes, *, request_id: bytes) -> list[bytes]:
    """The headers api.openai.com sends with a chat completion (values of one real answer)."""
    return [
        b"date: " + formatdate(usegmt=True).encode(),
        b"content-type: " + content_type,
        b"access-control-expose-headers: X-Request-ID",
        b"openai-organization: user-fakeorg0000000000000000",
        b"openai-processing-ms: 412",
        b"openai-project: proj_FakeProject000000000000",
        b"openai-version: 2020-10-01",
        b"x-envoy-upstream-service-time: 416",
        b"x-ratelimit-limit-requests: 10000",
        b"x-ratelimit-limit-tokens: 10000000",
        b"x-ratelimit-remaining-requests: 9999",
        b"x-ratelimit-remaining-tokens: 9999975",
        b"x-ratelimit-reset-requests: 6ms",
        b"x-ratelimit-reset-tokens: 0s",
        b"x-request-id: " + request_id,
        b"strict-transport-security: max-age=31536000; includeSubDomains; preload",
        b"cf-cache-status: DYNAMIC",
        b"x-content-type-options: nosniff",
        b"server: cloudflare",
        b"cf-ray: 98f0e0c1fa2b5e2a-CDG",
        b'alt-svc: h3=":443"; ma=86400',
    ]


@dataclass(frozen=True)
class CannedAnswers:
    """Whole responses (head and body) as the server writes them, one `bytes` per write."""

    plain: bytes
    stream: list[bytes]
    stream_with_usage: list[bytes]
    not_found: bytes

    @classmethod
    def build(cls) -> CannedAnswers:
        payload: dict[str, object] = {"model": MODEL, "messages": PROMPT}
        headers = [("x-fake-chunks", str(CHUNKS))]

        def reply(body: dict[str, object]) -> Reply:
            return answer(
                "POST", "/v1/chat/completions", json.dumps(body).encode(), headers=headers
            )

        plain = reply(payload)
        stream = reply({**payload, "stream": True})
        with_usage = reply({**payload, "stream": True, "stream_options": {"include_usage": True}})
        assert plain.chunks is None
        assert stream.chunks
        assert with_usage.chunks

        def whole(body: bytes) -> bytes:
            head = [
                b"HTTP/1.1 200 OK",
                *_openai_headers(b"application/json", request_id=b"req_benchplain0000"),
                b"content-length: " + str(len(body)).encode(),
                b"connection: keep-alive",
            ]
            return b"\r\n".join(head) + b"\r\n\r\n" + body

        def chunked(events: list[bytes]) -> list[bytes]:
            head = [
                b"HTTP/1.1 200 OK",
                *_openai_headers(
                    b"text/event-stream; charset=utf-8", request_id=b"req_benchstream000"
                ),
                b"transfer-encoding: chunked",
                b"connection: keep-alive",
            ]
            writes = [b"%x\r\n%s\r\n" % (len(event), event) for event in events]
            writes[0] = b"\r\n".join(head) + b"\r\n\r\n" + writes[0]
            writes[-1] += b"0\r\n\r\n"
            return writes

        not_found = b'{"error":{"message":"not found","type":"invalid_request_error"}}'
        return cls(
            plain=whole(plain.body),
            stream=chunked(stream.chunks),
            stream_with_usage=chunked(with_usage.chunks),
            not_found=b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(not_found), not_found),
        )


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def _serve_connection(canned: CannedAnswers, stream: trio.SocketStream) -> None:
    """Answer requests on one keep-alive connection until the client closes it."""
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = b""
    async with stream:
        while True:
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                if len(buffer) > MAX_HEAD:
                    return
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                buffer += data
            head, body_start = buffer[:end], end + 4
            size = _content_length(head)
            while len(buffer) < body_start + size:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                buffer += data
            body = buffer[body_start : body_start + size]
            buffer = buffer[body_start + size :]
            try:
                if not head.startswith(b"POST /v1/chat/completions"):
                    await stream.send_all(canned.not_found)
                elif b'"stream":true' in body or b'"stream": true' in body:
                    writes = canned.stream_with_usage if b"include_usage" in body else canned.stream
                    for write in writes:
                        await stream.send_all(write)
                else:
                    await stream.send_all(canned.plain)
            except trio.BrokenResourceError:
                return


async def serve(
    host: str, port: int, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; `task_status.started` gets the base URL."""
    canned = CannedAnswers.build()
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
    bound = listeners[0].socket.getsockname()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(trio.serve_listeners, partial(_serve_connection, canned), listeners)
        )
        task_status.started(f"http://{bound[0]}:{bound[1]}")


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.upstream [--host H] [--port N]`: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                url = await nursery.start(partial(serve, args.host, args.port))
                print(url, flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(run)


if __name__ == "__main__":
    main()
