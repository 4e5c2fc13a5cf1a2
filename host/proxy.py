"""The untrusted L4 proxy: TCP clients in, the enclave's unix / vsock / TCP socket out.

This module owns moving bytes between a client and the enclave, and the limits on doing so:
a connection cap, idle and connect timeouts, bounded buffers with back-pressure, half-close
propagation and a graceful shutdown. It must never terminate, inspect, log or alter what it
forwards: TLS ends inside the enclave, and the client checks the enclave's attestation over
that TLS connection, so anything this host could do to the bytes is detected there. It must
never import enclave code (the host is untrusted; see the import contracts).

Limits (see ``ProxyConfig``):

* connections over ``max_connections`` are accepted and closed at once (no waiting room);
* a connection with no byte moving either way for ``idle_timeout`` seconds is closed on
  both sides (a byte counts as moving when it is read, or when a peer drains some of what
  the proxy buffered for it, so a slow but live reader is not cut off);
* each direction reads at most ``read_chunk_bytes`` at a time and awaits ``drain()`` before
  reading again, so a slow reader stalls its sender instead of growing a buffer;
* EOF one way is passed on as ``write_eof()`` the other way; the connection ends when both
  ways have ended, or at once when either side errors (then both are aborted);
* ``stop()`` stops accepting, lets connections finish for ``shutdown_grace`` seconds, then
  aborts what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from types import TracebackType

from host.config import EnclaveAddress, ProxyConfig
from host.errors import EnclaveUnreachable, HostError

log = logging.getLogger(__name__)


@dataclass
class ProxyStats:
    """Counters for metrics: plain attributes, updated in place by the event loop."""

    active_connections: int = 0
    total_connections: int = 0  # accepted and forwarded to the enclave
    rejected_connections: int = 0  # closed at once: over the limit or shutting down
    enclave_connect_failures: int = 0
    idle_timeouts: int = 0
    aborted_connections: int = 0  # closed because a side errored, timed out or at shutdown
    bytes_client_to_enclave: int = 0
    bytes_enclave_to_client: int = 0


async def open_enclave_connection(
    address: EnclaveAddress, *, limit: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a stream to the enclave. Raises ``EnclaveUnreachable`` or ``OSError``."""
    if address.kind == "unix":
        return await asyncio.open_unix_connection(address.path, limit=limit)
    if address.kind == "tcp":
        return await asyncio.open_connection(address.host, address.port, limit=limit)
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise EnclaveUnreachable("AF_VSOCK is not available on this host")
    # asyncio has no vsock helper: connect the socket ourselves, then hand it over.
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (address.cid, address.port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=limit)


def _reader_buffered(reader: asyncio.StreamReader) -> int:
    # StreamReader keeps its buffer private; this is diagnostics only, never control flow.
    buffer = getattr(reader, "_buffer", b"")
    return len(buffer)


class _Connection:
    """One client connection and its enclave connection, relayed both ways."""

    def __init__(
        self,
        proxy: HostProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        enclave: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self._proxy = proxy
        self._config = proxy.config
        self._loop = asyncio.get_running_loop()
        self.client_reader, self.client_writer = client
        self.enclave_reader, self.enclave_writer = enclave
        self.last_activity = self._loop.time()
        self._write_buffers = (0, 0)
        self._pumps: list[asyncio.Task[None]] = []
        self._idle_timer: asyncio.TimerHandle | None = None
        self.aborted = False
        for writer in (self.client_writer, self.enclave_writer):
            writer.transport.set_write_buffer_limits(high=self._config.write_high_water_bytes)

    def buffered_bytes(self) -> int:
        return (
            _reader_buffered(self.client_reader)
            + _reader_buffered(self.enclave_reader)
            + self.client_writer.transport.get_write_buffer_size()
            + self.enclave_writer.transport.get_write_buffer_size()
        )

    async def run(self) -> None:
        self._idle_timer = self._loop.call_at(
            self.last_activity + self._config.idle_timeout, self._check_idle
        )
        self._pumps = [
            asyncio.create_task(self._pump(self.client_reader, self.enclave_writer, True)),
            asyncio.create_task(self._pump(self.enclave_reader, self.client_writer, False)),
        ]
        try:
            await asyncio.gather(*self._pumps, return_exceptions=True)
        finally:
            self._idle_timer.cancel()
            for pump in self._pumps:
                pump.cancel()
            await self._close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_enclave: bool
    ) -> None:
        stats = self._proxy.stats
        chunk = self._config.read_chunk_bytes
        try:
            while True:
                data = await reader.read(chunk)
                if not data:
                    break
                self.last_activity = self._loop.time()
                if to_enclave:
                    stats.bytes_client_to_enclave += len(data)
                else:
                    stats.bytes_enclave_to_client += len(data)
                writer.write(data)
                await writer.drain()  # back-pressure: a slow reader stalls this direction
            # Half-close: pass the EOF on, keep the other direction open.
            if writer.can_write_eof() and not writer.transport.is_closing():
                writer.write_eof()
        except (OSError, RuntimeError):
            # A reset or a write to a closed side ends the whole connection.
            self.abort()

    def _check_idle(self) -> None:
        now = self._loop.time()
        buffers = (
            self.client_writer.transport.get_write_buffer_size(),
            self.enclave_writer.transport.get_write_buffer_size(),
        )
        if buffers != self._write_buffers:  # a peer drained some of what we hold: live
            self._write_buffers = buffers
            self.last_activity = max(self.last_activity, now)
        deadline = self.last_activity + self._config.idle_timeout
        if now >= deadline:
            self._proxy.stats.idle_timeouts += 1
            log.debug("idle for %.1f s: closing", self._config.idle_timeout)
            self.abort()
            return
        self._idle_timer = self._loop.call_at(deadline, self._check_idle)

    def abort(self) -> None:
        """Drop both sides at once, discarding buffered bytes."""
        if not self.aborted:
            self.aborted = True
            self._proxy.stats.aborted_connections += 1
        for writer in (self.client_writer, self.enclave_writer):
            writer.transport.abort()
        for pump in self._pumps:
            pump.cancel()

    async def _close(self) -> None:
        writers = (self.client_writer, self.enclave_writer)
        for writer in writers:
            writer.close()  # flushes what is buffered, then closes
        try:
            async with asyncio.timeout(self._config.close_timeout):
                for writer in writers:
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            for writer in writers:
                writer.transport.abort()


class HostProxy:
    """The proxy as an object: ``await start()``, ``.port``, ``await stop()``.

    Usable in-process (``async with HostProxy(config) as proxy:``) or through ``kms-host``.
    ``stats`` holds the counters; ``buffered_bytes()`` what the proxy holds right now.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def host(self) -> str:
        return self._bound()[0]

    @property
    def port(self) -> int:
        return self._bound()[1]

    def _bound(self) -> tuple[str, int]:
        if self._server is None or not self._server.sockets:
            raise HostError("the proxy is not listening")
        name = self._server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    @property
    def url(self) -> str:
        host = self.host
        return f"tcp://[{host}]:{self.port}" if ":" in host else f"tcp://{host}:{self.port}"

    def buffered_bytes(self) -> int:
        """Bytes the proxy currently holds in its read and write buffers, all connections."""
        return sum(c.buffered_bytes() for c in self._connections)

    async def start(self) -> None:
        if self._server is not None:
            raise HostError("the proxy is already started")
        self._closing = False
        self._server = await asyncio.start_server(
            self._handle,
            self.config.listen.host,
            self.config.listen.port,
            limit=self.config.stream_limit_bytes,
            backlog=self.config.backlog,
            reuse_address=True,
        )
        log.info("listening on %s, enclave at %s", self.url, self.config.enclave)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; let connections finish for ``grace`` seconds; abort the rest."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        grace = self.config.shutdown_grace if grace is None else grace
        pending = set(self._handlers)
        if pending and grace > 0:
            _, pending = await asyncio.wait(pending, timeout=grace)
        if pending:
            log.info("aborting %d connection(s) still open after %.1f s", len(pending), grace)
            for connection in list(self._connections):
                connection.abort()
            await asyncio.wait(pending, timeout=self.config.close_timeout)
            for task in pending:
                task.cancel()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> HostProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._closing or len(self._handlers) >= self.config.max_connections:
            self.stats.rejected_connections += 1
            writer.transport.abort()
            return
        assert task is not None
        self._handlers.add(task)
        self.stats.active_connections += 1
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self.stats.active_connections -= 1
            self._handlers.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                enclave = await open_enclave_connection(
                    self.config.enclave, limit=self.config.stream_limit_bytes
                )
        except (OSError, TimeoutError) as exc:
            self.stats.enclave_connect_failures += 1
            log.warning("enclave %s unreachable: %s", self.config.enclave, exc or "timed out")
            writer.transport.abort()  # the client learns at once, rather than at its timeout
            return
        self.stats.total_connections += 1
        connection = _Connection(self, (reader, writer), enclave)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
