"""Where a request goes: the configured upstreams, the one HTTP client, and which request
targets may be forwarded at all."""

from __future__ import annotations

from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import unquote_to_bytes

import httpx

from majordomo.config import Settings

# Longest piece of a refused request target quoted back in the error message.
_MAX_QUOTED_TARGET = 80


@dataclass(frozen=True, slots=True)
class Upstream:
    """One provider's configured base URL, split once into the parts every request reuses.

    The scheme, host and port of every upstream URL come from here and nowhere else: the
    request's own path is appended to `prefix` as bytes, never parsed for an authority.
    """

    scheme: str
    host: str
    port: int | None
    prefix: bytes  # the base URL's path, without a trailing slash (b"" for none)

    @classmethod
    def parse(cls, base_url: str) -> Upstream:
        url = httpx.URL(base_url)
        return cls(url.scheme, url.host, url.port, url.raw_path.split(b"?", 1)[0].rstrip(b"/"))

    def url(self, target: bytes) -> httpx.URL:
        """The upstream URL for an origin-form request target (path and query, as received)."""
        return httpx.URL(
            scheme=self.scheme, host=self.host, port=self.port, raw_path=self.prefix + target
        )


@dataclass
class Upstreams:
    """The providers' upstreams, from settings."""

    by_provider: dict[str, Upstream]

    @classmethod
    def from_settings(cls, settings: Settings) -> Upstreams:
        """The built-in providers' and `providers.extra`'s."""
        urls = settings.providers.base_urls()
        return cls({name: Upstream.parse(base_url) for name, base_url in urls.items()})


def check_target(method: str, raw_path: bytes) -> str | None:
    """Why a request target cannot be forwarded (a message for a 400), or None if it can.

    Only origin-form targets are forwarded: a path that starts with a single `/`. Whatever
    could make the upstream read another authority or climb out of the base URL's path
    prefix is refused rather than repaired: CONNECT, absolute-form (`http://host/...`) and
    other non-path targets, a leading `//`, backslashes, and dot-segments (`.` and `..`,
    percent-encoded too, since an upstream may decode before it normalises). Everything else,
    `@`, `%2F` and `%40` included, is an ordinary path character once the authority is fixed,
    and goes upstream as received.
    """
    shown = raw_path[:_MAX_QUOTED_TARGET].decode("latin-1")
    if method == "CONNECT":
        return (
            "CONNECT is not supported: Majordomo is an API gateway, not a forward proxy; "
            "send the provider's API path (e.g. POST /v1/chat/completions)"
        )
    if not raw_path.startswith(b"/") or raw_path.startswith(b"//"):
        return (
            f"the request target {shown!r} is not a path: send the provider's API path, "
            "starting with a single / (e.g. /v1/chat/completions); Majordomo is not a "
            "forward proxy"
        )
    decoded = unquote_to_bytes(raw_path)
    if b"\\" in decoded:
        return f"the request path {shown!r} contains a backslash, which no provider API uses"
    if any(segment in (b".", b"..") for segment in decoded.split(b"/")):
        return (
            f"the request path {shown!r} contains a dot-segment ('.' or '..'); Majordomo "
            "forwards paths as received and refuses ones that could leave the provider's API"
        )
    return None


def new_http_client() -> httpx.AsyncClient:
    """The one upstream client: no default headers, a cookie jar that keeps nothing, no
    redirects."""
    client = httpx.AsyncClient(
        timeout=None,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        # A shared client must never carry one caller's cookies to another.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        trust_env=False,
    )
    client.headers.clear()  # the caller's headers, not httpx's, go upstream
    return client
