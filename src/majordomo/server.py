"""The supervisor: one trio program that owns every lifetime.

    listening sockets                 bound first: a busy address fails before anything starts
     └─ db.open_database             the trio-asyncio loop (asyncpg runs on it) and the pool
         └─ httpx.AsyncClient, the spool, the body store
             └─ background nursery    (long-lived helpers, e.g. the pricing refresher)
                 └─ writer nursery
                     ├─ log writer    ← memory channel ← request handlers (send_nowait)
                     └─ hypercorn serve(app, shutdown_trigger)

Shutdown, in order: a signal (or the injected trigger) fires → readiness answers 503 →
hypercorn stops accepting and gives in-flight requests `server.shutdown_timeout` to finish →
`serve()` returns → the channel's send side closes → the writer drains every queued record
(within `logging.drain_timeout`) and returns → background helpers are cancelled → the client
and the pool close → the loop closes. Nothing queued is dropped on the way.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from majordomo.admin import LoginThrottle, jwt_secret
from majordomo.app import create_app
from majordomo.auth import KeyCache
from majordomo.bodystore import BodyStore, open_body_store
from majordomo.config import PostgresSettings, Settings
from majordomo.credentials import HeldCredentials
from majordomo.db import Database, describe, open_database
from majordomo.errors import MajordomoError
from majordomo.limits import LeaseManager
from majordomo.logwriter import LogWriter
from majordomo.metrics import Metrics
from majordomo.pricing import PriceBook, refresh_prices
from majordomo.proxy import new_http_client
from majordomo.records import RequestRecord
from majordomo.spool import Spool
from majordomo.vault import Vault, open_vault

log = logging.getLogger("majordomo.server")

ShutdownTrigger = Callable[[], Awaitable[None]]


@dataclass
class GatewayState:
    """Everything the running gateway shares, built once by `_run` and owned there: the
    routes (`app.py`) and the background tasks read it, nothing else makes one."""

    settings: Settings
    db: Database
    http: httpx.AsyncClient
    records: trio.MemorySendChannel[RequestRecord]
    keys: KeyCache
    credentials: HeldCredentials
    spool: Spool
    metrics: Metrics
    bodies: BodyStore
    prices: PriceBook
    limits: LeaseManager
    vault: Vault | None = None  # None: held credentials are off
    jwt_secret: str | None = None  # None: the admin API is off
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    shutting_down: bool = False
    bound_urls: list[str] = field(default_factory=list)


class BackgroundTask(Protocol):
    """A long-lived helper: started with `nursery.start` (it says when it is running) and
    cancelled once the writer has drained."""

    async def __call__(
        self, state: GatewayState, *, task_status: trio.TaskStatus[None] = ...
    ) -> None: ...


async def forget_changed_keys(
    state: GatewayState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Drop a key from the auth cache the moment it is revoked or changed, anywhere."""

    def on_change(key_hash: str | None) -> None:
        if key_hash is None:
            state.keys.clear()
        else:
            state.keys.invalidate(key_hash)

    # Running from here on; the notification connection opens in the background (and its
    # first connection clears the cache: see `Database.listen`).
    task_status.started()
    await state.db.keys.listen_for_changes(on_change)


async def forget_changed_credentials(
    state: GatewayState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Drop every remembered credential the moment one changes or a proxy key is revoked."""
    task_status.started()
    await state.db.credentials.listen_for_changes(lambda _: state.credentials.clear())


async def refresh_price_table(
    state: GatewayState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Keep prices current from `pricing.remote_url`; the bundled table serves meanwhile."""
    p = state.settings.pricing
    await refresh_prices(
        state.prices,
        state.http,
        p.remote_url,
        interval=p.refresh_interval,
        timeout=p.refresh_timeout,
        task_status=task_status,
    )


# Helpers started next to the server, one line each.
BACKGROUND_TASKS: Sequence[BackgroundTask] = (
    forget_changed_keys,
    forget_changed_credentials,
    refresh_price_table,
)


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            return


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    host = settings.server.host
    config.bind = [
        f"[{host}]:{settings.server.port}" if ":" in host else f"{host}:{settings.server.port}"
    ]
    config.graceful_timeout = settings.server.shutdown_timeout
    # Idle connections close after this, and at once when shutdown begins.
    config.keep_alive_timeout = settings.server.keepalive_timeout
    # hypercorn's own read_timeout would also cut long streamed answers (the client sends
    # nothing meanwhile); our read/write timeouts are applied by the proxy route instead.
    config.read_timeout = None
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.include_server_header = False
    return config


def bind_sockets(settings: Settings) -> Sockets:
    """Bind and listen on `server.host:server.port`, or say in one line why not."""
    config = hypercorn_config(settings)
    try:
        sockets = config.create_sockets()
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
    except OSError as exc:
        where = config.bind[0]
        raise MajordomoError(
            f"cannot listen on {where}: {exc.strerror or exc}; another process (a second "
            "'majordomo serve'?) may hold it: stop it, or choose another server.port "
            "(MAJORDOMO_SERVER_PORT)"
        ) from None
    return sockets


async def run_gateway(
    settings: Settings,
    postgres: PostgresSettings,
    *,
    create_database: bool = False,
    shutdown_trigger: ShutdownTrigger = wait_for_signal,
    background_tasks: Sequence[BackgroundTask] = BACKGROUND_TASKS,
    sockets: Sockets | None = None,
    task_status: trio.TaskStatus[GatewayState] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the gateway until `shutdown_trigger` returns, then shut down in order.

    `sockets` are the listening sockets (`bind_sockets`); bound here, first, when not given.
    `task_status.started` receives the running `GatewayState` once the server listens; its
    `bound_urls` say where.
    """
    if sockets is None:
        sockets = bind_sockets(settings)
    vault, where = open_vault(settings)  # a bad key file stops start-up here, in one line
    log.info("held provider credentials: %s", "on, " + where if vault else where)
    secret, where = jwt_secret(settings)
    log.info("admin API: %s", "on, signing secret " + where if secret else where)
    try:
        await _run(
            settings,
            postgres,
            vault,
            secret,
            create_database,
            shutdown_trigger,
            background_tasks,
            sockets,
            task_status,
        )
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()
    log.info("stopped")


async def _run(
    settings: Settings,
    postgres: PostgresSettings,
    vault: Vault | None,
    secret: str | None,
    create_database: bool,
    shutdown_trigger: ShutdownTrigger,
    background_tasks: Sequence[BackgroundTask],
    sockets: Sockets,
    task_status: trio.TaskStatus[GatewayState],
) -> None:
    async with open_database(
        postgres, create_database=create_database, wait=settings.storage.startup_wait
    ) as db:
        if settings.storage.auto_migrate:
            version = await db.migrate()
            log.info("schema is at version %d", version, extra={"database": describe(postgres)})
        async with new_http_client() as http:
            # Capacity from logging.queue_size; when it is full the handler is told at once
            # (send_nowait) and never waits for the database.
            send, receive = trio.open_memory_channel[RequestRecord](settings.logging.queue_size)
            keys = KeyCache(
                db.keys.find,
                ttl=settings.auth.cache_ttl,
                negative_ttl=settings.auth.negative_cache_ttl,
            )
            credentials = HeldCredentials(
                find_proxy_key=db.credentials.find_proxy_key,
                find_key_credential=db.credentials.find_key_credential,
                vault=vault,
                defaults=settings.providers.default_credentials(),
                ttl=settings.auth.cache_ttl,
                negative_ttl=settings.auth.negative_cache_ttl,
            )
            spool = Spool(Path(settings.logging.spool_dir))
            bodies = open_body_store(settings)
            prices = PriceBook.for_settings(settings)
            metrics = Metrics(
                queue_depth=lambda: receive.statistics().current_buffer_used,
                body_uploads_failed=lambda: bodies.failed_uploads,
            )
            limits = LeaseManager(
                db.limits.lease,
                db.limits.give_back,
                fail_open=settings.limits.fail_open,
                metrics=metrics,
            )
            state = GatewayState(
                settings=settings,
                db=db,
                http=http,
                records=send,
                keys=keys,
                credentials=credentials,
                spool=spool,
                metrics=metrics,
                bodies=bodies,
                prices=prices,
                limits=limits,
                vault=vault,
                jwt_secret=secret,
            )
            try:
                await _supervise(
                    state, receive, shutdown_trigger, background_tasks, sockets, task_status
                )
            finally:
                # After the writer: it is the last user of both.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(spool.close)
                    await bodies.aclose()


async def _supervise(
    state: GatewayState,
    receive: trio.MemoryReceiveChannel[RequestRecord],
    shutdown_trigger: ShutdownTrigger,
    background_tasks: Sequence[BackgroundTask],
    sockets: Sockets,
    task_status: trio.TaskStatus[GatewayState],
) -> None:
    settings = state.settings

    async def begin_shutdown() -> None:
        await shutdown_trigger()
        state.shutting_down = True  # readiness answers 503 from here on

    async with trio.open_nursery() as background:
        await background.start(state.limits.run)  # gives unused leases back when cancelled
        for task in background_tasks:
            await background.start(task, state)
        async with trio.open_nursery() as writers:

            async def serve_then_close(*, task_status: trio.TaskStatus[list[str]]) -> None:
                async with state.records:  # closing it lets the writer drain and return
                    # hypercorn's serve() minus binding: the sockets were bound before anything
                    # else started, so a busy address fails fast and clearly.
                    await worker_serve(
                        wrap_app(create_app(state), 0, "asgi"),
                        hypercorn_config(settings),
                        sockets=sockets,
                        shutdown_trigger=begin_shutdown,
                        task_status=task_status,
                    )
                    log.info(
                        "server stopped; writing queued usage records",
                        extra={"queued": receive.statistics().current_buffer_used},
                    )
                writers.cancel_scope.deadline = trio.current_time() + settings.logging.drain_timeout

            writer = LogWriter(
                state.db.requests,
                state.spool,
                state.metrics,
                bodies=state.bodies,
                prices=state.prices,
                write_timeout=settings.logging.write_timeout,
                access_log=settings.logging.access_log,
            )
            await writers.start(writer.run, receive)
            state.bound_urls = await writers.start(serve_then_close)
            log.info("listening on %s", ", ".join(state.bound_urls))
            task_status.started(state)
        background.cancel_scope.cancel()
