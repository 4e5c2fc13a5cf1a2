"""HTTP/2 front end for the K/V key service: h2 over TLS (ALPN) and h2c (prior knowledge).

The K/V servers' key client speaks HTTP/2 only; aiohttp's server speaks HTTP/1.1 only.
We serve an ASGI adapter of the one ``PakvService`` with **hypercorn**, a maintained ASGI
server built on the python-hyper ``h2`` state machine, rather than a hand-written ``h2``
server loop: hypercorn already does ALPN negotiation, h2c prior knowledge (it detects the
HTTP/2 connection preface on a plain socket), flow control, stream limits and graceful
shutdown, which are exactly the parts a hand-written server gets wrong. The adapter holds
no logic: requests become ``PakvRequest`` and answers are written back unchanged.

TLS: the caller passes an ``ssl.SSLContext`` (the enclave's in-memory TLS identity, see
``enclave.tls.TlsIdentity.server_context``); the key is never written to a file, which
hypercorn's own certfile/keyfile configuration would require. ALPN offers ``h2`` (and
``http/1.1`` for ordinary clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from enclave.pakv.service import PakvRequest, PakvService

UNIX_SOCKET_MODE = 0o660
LISTEN_BACKLOG = 128

log = logging.getLogger("enclave.pakv.h2server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class PakvAsgi:
    """ASGI 3 application over a ``PakvService``."""

    def __init__(self, service: PakvService) -> None:
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        limit = self.service.config.max_request_bytes
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body")) and len(body) <= limit
        query: dict[str, str] = {}
        from urllib.parse import parse_qsl

        for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
            query.setdefault(name, value)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        answer = await self.service.handle(
            PakvRequest(
                method=scope["method"],
                path=scope["path"],
                query=query,
                headers=headers,
                body=bytes(body),
                transport=f"http/{scope.get('http_version', '1.1')}",
            )
        )
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    (n.lower().encode("latin-1"), v.encode("latin-1"))
                    for n, v in answer.all_headers()
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})


class _Config(Config):
    """hypercorn config taking an in-memory SSLContext instead of key files."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._context = context

    @property
    def ssl_enabled(self) -> bool:
        return self._context is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._context


@dataclass(frozen=True)
class H2Limits:
    max_concurrent_streams: int = 100
    keep_alive_timeout: float = 30.0
    # A connection that sends nothing for this long is closed, whatever state it is in:
    # hypercorn's keep-alive timeout only runs while no stream is open, and not at all on
    # an h2c connection that has not finished a request, so a half-sent preface, header
    # block or body would otherwise hold its socket for ever.
    read_timeout: int = 30  # seconds (hypercorn takes whole seconds here)
    graceful_timeout: float = 3.0
    max_app_queue_size: int = 10


class H2Server:
    """One listener: TLS with ALPN h2 when ``ssl_context`` is given, h2c otherwise; on
    ``host:port`` (TCP) or, with ``path``, on a unix socket (the enclave's listener behind
    the host proxy)."""

    def __init__(
        self,
        service: PakvService,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: Path | None = None,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: H2Limits | None = None,
    ) -> None:
        self._app = PakvAsgi(service)
        self._host, self._port, self._path = host, port, path
        self._sock = sock  # an already listening socket (vsock), taken over by start()
        self._limits = limits or H2Limits()
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self._context = ssl_context
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def tls(self) -> bool:
        return self._context is not None

    async def start(self) -> int:
        """Bind, start serving in the background, and return the bound port."""
        sock = self._listen()
        config = _Config(self._context)
        config.bind = [f"fd://{sock.detach()}"]  # hypercorn takes ownership of the fd
        config.alpn_protocols = ["h2", "http/1.1"]
        config.h2_max_concurrent_streams = self._limits.max_concurrent_streams
        config.keep_alive_timeout = self._limits.keep_alive_timeout
        config.read_timeout = self._limits.read_timeout
        config.graceful_timeout = self._limits.graceful_timeout
        config.max_app_queue_size = self._limits.max_app_queue_size
        config.include_date_header = False  # the service sets Date from its own clock
        config.include_server_header = False
        config.accesslog = None
        config.errorlog = log  # through logging, not hypercorn's own stderr handler
        self._stop.clear()
        self._task = asyncio.create_task(
            serve(self._app, config, shutdown_trigger=self._stop.wait, mode="asgi")  # type: ignore[arg-type]
        )
        # The socket listens already, so connections queue until hypercorn accepts them.
        await asyncio.sleep(0.05)
        if self._task.done():
            self._task.result()  # raises what made hypercorn fail to start
            raise RuntimeError("the HTTP/2 server stopped at start")
        return self.port

    def _listen(self) -> socket.socket:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            return sock
        if self._path is not None:
            _remove_stale_socket(self._path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(str(self._path))
                os.chmod(self._path, UNIX_SOCKET_MODE)
                sock.listen(LISTEN_BACKLOG)
            except OSError:
                sock.close()
                raise
            return sock
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        return sock

    @property
    def address(self) -> str:
        """Where it listens, as ``unix:PATH`` or ``tcp:HOST:PORT``."""
        if self._path is not None:
            return f"unix:{self._path}"
        return f"tcp:{self._host}:{self.port}"

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def __aenter__(self) -> H2Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _remove_stale_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket")
        path.unlink()


def h2_cleanup_ctx(
    service: PakvService,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    path: Path | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Callable[[Any], AsyncIterator[None]]:
    """An aiohttp ``cleanup_ctx`` entry that runs the HTTP/2 listener beside the app."""

    async def context(_app: Any) -> AsyncIterator[None]:
        server = H2Server(service, host=host, port=port, path=path, ssl_context=ssl_context)
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    return context
