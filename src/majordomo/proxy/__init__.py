"""The proxy: one request, from the client's first byte to its usage record.

Theory of operation
-------------------
`handle_proxy` is a raw ASGI handler (the hot path skips the web framework). A request reads
top to bottom in `handler.py`:

    detect provider → authenticate → read body (≤ max_request_body) → inspect (pure)
      → send upstream (httpx, streamed) → relay every chunk as it arrives, teeing it
      into the provider's sans-IO parser → record

The package:

- `handler.py` — the request's steps, and the I/O: ASGI in, httpx out.
- `upstream.py` — where requests go: the configured upstreams (scheme, host and port always
  the configured ones), the request targets that may be forwarded, the one HTTP client.
- `headers.py` — pure: hop-by-hop headers, the caller's metadata, the credential hash.
- `tee.py` — sans-IO: decompress, parse and capture an answer while it is relayed.
- `outcome.py` — how forwarding ended (`Outcome`), and the record built from it (pure).

Errors the gateway answers itself (400, 401, 404, 408, 413, 503 before forwarding; 502 and 504
when the provider cannot be reached or stalls) use the detected provider's JSON error shape, so
each SDK raises its usual exception with our message. Provider answers, errors included, pass
through untouched.

Every request that was forwarded (or tried to be) ends in exactly one `RequestRecord`, sent
with `send_nowait` on the log channel: success, provider error, upstream failure, timeout, or
the client going away mid-stream (status 499). Requests refused before forwarding are not
recorded: they cost nothing and may carry no valid key.

While the response is relayed, a watcher task reads the ASGI receive channel: hypercorn reports
a client disconnect there, and the relay is cancelled at once. A stream the client received in
full counts as a success even if the client hung up right after (the openai SDK closes the
connection as soon as it has read `data: [DONE]`).
"""

from majordomo.proxy.handler import (
    Message,
    ProxyContext,
    Receive,
    Scope,
    Send,
    handle_proxy,
)
from majordomo.proxy.upstream import Upstream, Upstreams, check_target, new_http_client

__all__ = [
    "Message",
    "ProxyContext",
    "Receive",
    "Scope",
    "Send",
    "Upstream",
    "Upstreams",
    "check_target",
    "handle_proxy",
    "new_http_client",
]
