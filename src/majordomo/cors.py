"""CORS for browser clients: which origins may call the gateway, and the headers that say so.

`cors.allowed_origins` lists them (none by default, `*` for any). A preflight (`OPTIONS` with
`Origin` and `Access-Control-Request-Method`) never needs a Majordomo key — browsers send none
with it — so it is answered by the gateway itself, 204, with permission headers for a listed
origin and none for another (the browser then refuses the real request). Every other answer to
a listed origin, proxied or the gateway's own, gets `Access-Control-Allow-Origin` for it.

The provider's own `Access-Control-*` headers describe its policy for its origin, not ours:
the proxy never relays them (`proxy.headers.downstream_headers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RawHeaders = list[tuple[bytes, bytes]]

_METHODS = b"GET, POST, PUT, PATCH, DELETE, OPTIONS"
# How long a browser may cache a preflight answer (seconds).
MAX_AGE = b"600"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    allowed_origins: frozenset[bytes]
    any_origin: bool

    @classmethod
    def from_origins(cls, origins: Sequence[str]) -> CorsPolicy:
        return cls(frozenset(o.encode() for o in origins if o != "*"), "*" in origins)

    @property
    def enabled(self) -> bool:
        return self.any_origin or bool(self.allowed_origins)

    def allows(self, origin: bytes) -> bool:
        return self.any_origin or origin.lower() in self.allowed_origins

    def preflight_headers(self, origin: bytes, requested_headers: bytes | None) -> RawHeaders:
        """Headers of the 204 answering a preflight from `origin` (none if not allowed)."""
        if not self.allows(origin):
            return [(b"vary", b"Origin")]
        headers = [
            *self.response_headers(origin),
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-max-age", MAX_AGE),
        ]
        if requested_headers:
            headers.append((b"access-control-allow-headers", requested_headers))
        return headers

    def response_headers(self, origin: bytes) -> RawHeaders:
        """Headers that let a browser at `origin` read an answer (none if not allowed)."""
        if not self.allows(origin):
            return []
        return [
            (b"access-control-allow-origin", origin),
            (b"vary", b"Origin"),
            # X-Request-Id, X-Majordomo-*, Retry-After and the provider's own headers.
            (b"access-control-expose-headers", b"*"),
        ]


def is_preflight(method: str, headers: RawHeaders) -> bool:
    return method == "OPTIONS" and any(
        name == b"access-control-request-method" for name, _ in headers
    )
