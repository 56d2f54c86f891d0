"""A TCP relay in front of PostgreSQL that a test can cut and restore.

The gateway under test connects to the relay's loopback port; the relay forwards to the real
server (TCP or its unix socket). `cut()` drops every open connection and refuses new ones, as
if the server had gone away; `restore()` lets connections through again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import trio

from majordomo.config import PostgresSettings


class PgRelay:
    def __init__(self, upstream: PostgresSettings) -> None:
        self.upstream = upstream
        self.port = 0
        self._up = True
        self._scopes: set[trio.CancelScope] = set()

    @property
    def settings(self) -> PostgresSettings:
        """What a client should use to reach the server through the relay."""
        return dataclasses.replace(self.upstream, host="127.0.0.1", port=self.port)

    def cut(self) -> None:
        self._up = False
        for scope in list(self._scopes):
            scope.cancel()

    def restore(self) -> None:
        self._up = True

    async def _connect_upstream(self) -> trio.abc.Stream:
        host, port = self.upstream.host, self.upstream.port
        if host.startswith("/"):
            return await trio.open_unix_socket(f"{host}/.s.PGSQL.{port}")
        return await trio.open_tcp_stream(host, port)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self._up:
                return
            with trio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    server = await self._connect_upstream()
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(_pump, server, client, nursery.cancel_scope)
                finally:
                    self._scopes.discard(scope)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)


async def _pump(src: trio.abc.Stream, dst: trio.abc.Stream, done: trio.CancelScope) -> None:
    try:
        async for chunk in src:
            await dst.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    done.cancel()
