"""An aiohttp site whose connections start on the fast path.

``FastPathSite`` listens like aiohttp's ``TCPSite``/``UnixSite``/``SockSite`` (one of
``host``+``port``, ``path`` or ``sock``; TLS when given a context) but makes each
connection a ``FastPathConnection``, which serves the fast routes and hands anything else
to the runner's aiohttp server. On stop it stops listening, lets requests being answered on
the fast path finish (within the runner's shutdown timeout) and closes its connections;
the runner then shuts down the connections aiohttp has, as before.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from aiohttp import web

from enclave.fastpath.connection import ConnectionSet
from enclave.fastpath.delegation import FastPathRunner
from enclave.fastpath.fallback import problem_handlers
from enclave.fastpath.routes import FastRoutes

LISTEN_BACKLOG = 128  # aiohttp's sites' default


class FastPathSite(web.BaseSite):
    def __init__(
        self,
        runner: FastPathRunner,
        routes: FastRoutes,
        *,
        ssl_context: ssl.SSLContext | None,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        sock: socket.socket | None = None,
        shutdown_timeout: float = 60.0,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=LISTEN_BACKLOG)
        if not isinstance(runner, FastPathRunner):
            raise TypeError("a FastPathSite needs a FastPathRunner")
        if sum(x is not None for x in (port, path, sock)) != 1:
            raise ValueError("listen on one of host+port, path or sock")
        server = runner.server
        assert server is not None  # BaseSite checked it
        self._connections = ConnectionSet(routes, problem_handlers(server))
        self._where = (host, port, path, sock)
        self._shutdown_timeout = shutdown_timeout

    @property
    def connections(self) -> ConnectionSet:
        return self._connections

    @property
    def name(self) -> str:
        host, port, path, sock = self._where
        if path is not None:
            return f"unix:{path}"
        if sock is not None:
            return f"sock:{sock.getsockname()}"
        return f"tcp:{host}:{port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        host, port, path, sock = self._where
        factory = self._connections.protocol
        if path is not None:
            self._server = await loop.create_unix_server(
                factory, path, ssl=self._ssl_context, backlog=self._backlog
            )
        elif sock is not None:
            self._server = await loop.create_server(
                factory, sock=sock, ssl=self._ssl_context, backlog=self._backlog
            )
        else:
            assert port is not None
            self._server = await loop.create_server(
                factory, host, port, ssl=self._ssl_context, backlog=self._backlog
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._connections.drain(self._shutdown_timeout)
        await super().stop()
