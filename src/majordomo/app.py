"""The HTTP surface: health, readiness and (later) the proxy route, on Quart-Trio.

Routes read everything they need from one `GatewayState` that the supervisor builds; the app
owns no lifetimes of its own (no lifespan hooks: the supervisor opens and closes everything
around `serve()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import trio
from quart import Response
from quart_trio import QuartTrio

from majordomo.config import Settings
from majordomo.db import Database
from majordomo.errors import DatabaseUnavailable
from majordomo.records import RequestRecord

# Readiness answers 503 when the database has not answered a ping within this many seconds.
READINESS_DB_TIMEOUT = 2.0


@dataclass
class GatewayState:
    settings: Settings
    db: Database
    http: httpx.AsyncClient
    records: trio.MemorySendChannel[RequestRecord]
    shutting_down: bool = False
    bound_urls: list[str] = field(default_factory=list)


def create_app(state: GatewayState) -> QuartTrio:
    app = QuartTrio("majordomo")

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

    return app
