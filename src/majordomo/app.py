"""The HTTP surface: an ASGI app that sends proxied paths to `proxy.handle_proxy` and the
gateway's own endpoints (`/health`, `/readyz`, `/metrics`, the admin API under `/api/v1/`) to a
Quart-Trio app.

The proxy skips the web framework on purpose: it needs the raw ASGI receive channel (to see a
client disconnect while it relays), per-write timeouts, and none of Quart's per-request work
on the hot path. Routes read everything from one `server.GatewayState` that the supervisor builds;
the app owns no lifetimes of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from quart import Response
from quart_trio import QuartTrio

from majordomo.admin import add_routes
from majordomo.cors import CorsPolicy, is_preflight
from majordomo.errors import DatabaseUnavailable
from majordomo.proxy import (
    Message,
    ProxyContext,
    Receive,
    Scope,
    Send,
    Upstreams,
    handle_proxy,
)

if TYPE_CHECKING:
    from majordomo.server import GatewayState

# Readiness answers 503 when the database has not answered a ping within this many seconds.
READINESS_DB_TIMEOUT = 2.0
# Served by the Quart app (with everything under /api/v1/); every other path is proxied.
OWN_PATHS = frozenset({"/health", "/readyz", "/metrics"})
OWN_PREFIX = "/api/v1/"  # the admin API; /api/chat and the like (Ollama) stay proxied


def create_admin_app(state: GatewayState) -> QuartTrio:
    app = QuartTrio("majordomo")
    add_routes(app, state)

    @app.get("/health")
    async def health() -> Response:
        return Response("ok", status=200, content_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> tuple[dict[str, str], int]:
        if state.shutting_down:
            return {"status": "error", "error": "shutting down"}, 503
        try:
            with trio.fail_after(READINESS_DB_TIMEOUT):
                await state.db.ping()
        except trio.TooSlowError:
            return {
                "status": "error",
                "error": f"database did not answer within {READINESS_DB_TIMEOUT:g}s",
            }, 503
        except DatabaseUnavailable as exc:
            return {"status": "error", "error": str(exc)}, 503
        return {"status": "ok"}, 200

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(
            state.metrics.render(), status=200, content_type="text/plain; version=0.0.4"
        )

    return app


def create_app(state: GatewayState) -> Any:
    """The ASGI application hypercorn serves."""
    admin = create_admin_app(state)
    proxy = ProxyContext(
        settings=state.settings,
        http=state.http,
        keys=state.keys,
        credentials=state.credentials,
        records=state.records,
        upstreams=Upstreams.from_settings(state.settings),
        spool=state.spool,
        metrics=state.metrics,
        limits=state.limits,
        prices=state.prices,
    )

    cors = CorsPolicy.from_origins(state.settings.cors.allowed_origins)

    async def own_routes(scope: Scope, receive: Receive, send: Send) -> None:
        # quart-trio cancels its request nursery when the request's messages end, which can
        # land while hypercorn is closing the connection inside our last send: that close
        # then never happens and the connection stays open for good (Connection: close and
        # keep-alive expiry included). Shielded, every send completes.
        async def send_shielded(message: Message) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await admin(scope, receive, send_shielded)  # type: ignore[arg-type]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await own_routes(scope, receive, send)
            return
        if is_preflight(scope["method"], scope["headers"]):
            # Browsers send no credentials with a preflight: never a 401.
            origin = _header(scope["headers"], b"origin")
            headers = (
                cors.preflight_headers(
                    origin, _header(scope["headers"], b"access-control-request-headers")
                )
                if origin is not None
                else []
            )
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if cors.enabled:
            origin = _header(scope["headers"], b"origin")
            if origin is not None and cors.allows(origin):
                send = _with_headers(send, cors.response_headers(origin))
        path: str = scope["path"]
        if path not in OWN_PATHS and not path.startswith(OWN_PREFIX):
            await handle_proxy(proxy, scope, receive, send)
        else:
            await own_routes(scope, receive, send)

    return app


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """`send`, adding `extra` headers to the response start."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending
