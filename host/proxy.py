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
  both sides (a byte counts as moving when it is received, or when a peer drains some of
  what the proxy holds for it, so a slow but live reader is not cut off);
* each side receives into a fixed buffer of ``read_chunk_bytes``; when the other side's
  write buffer passes ``write_high_water_bytes`` reading stops until it drains, so a slow
  reader stalls its sender instead of growing a buffer;
* EOF one way is passed on as ``write_eof()`` the other way; the connection ends when both
  ways have ended, or when either socket closes (an error on one aborts the other);
* ``stop()`` stops accepting, lets connections finish for ``shutdown_grace`` seconds, then
  aborts what is left.

Why protocols, not streams: this is asyncio's own streams flow control (``drain()`` is
built on ``pause_writing``/``resume_writing``) without a task switch and a future per chunk.
With streams the relay cost as much CPU per request as the HTTPS server behind it, which on
two cores cut keep-alive throughput to about 0.75 of direct (``bench/bench_proxy.py``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import cast

from host.config import EnclaveAddress, ProxyConfig
from host.errors import EnclaveUnreachable, HostError

log = logging.getLogger(__name__)


@dataclass
class ProxyStats:
    """Counters for metrics: plain attributes, updated in place by the event loop."""

    active_connections: int = 0
    total_connections: int = 0  # accepted and connected through to the enclave
    rejected_connections: int = 0  # closed at once: over the limit or shutting down
    enclave_connect_failures: int = 0
    idle_timeouts: int = 0
    aborted_connections: int = 0  # closed because a side errored, idled or at shutdown
    bytes_client_to_enclave: int = 0
    bytes_enclave_to_client: int = 0


class _Side(asyncio.BufferedProtocol):
    """One socket of a relayed connection: what it receives is written to the other side."""

    def __init__(self, relay: _Relay, *, is_client: bool) -> None:
        self.relay = relay
        self.is_client = is_client
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.eof = False
        self.lost = False
        self.early: bytes = b""  # received before the other side was linked (one chunk)
        self._buffer = bytearray(relay.config.read_chunk_bytes)
        self._view = memoryview(self._buffer)

    # asyncio.BaseProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=self.relay.config.write_high_water_bytes)
        if self.is_client:
            self.relay.client_connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        # The receive buffer goes now: the relay and its sides form a reference cycle,
        # which only the cycle collector frees, late (1,000 closed connections kept
        # ~130 MB of these buffers alive between collections).
        self._view = memoryview(b"")
        self._buffer = bytearray()
        self.relay.side_lost(self, exc)

    def pause_writing(self) -> None:
        # Our outgoing buffer is full: stop reading what fills it.
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()
        self.relay.touch()

    # asyncio.BufferedProtocol
    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view  # fixed size: no read is ever larger than read_chunk_bytes

    def buffer_updated(self, nbytes: int) -> None:
        self.relay.forward(self, bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        self.eof = True
        self.relay.side_eof(self)
        return True  # keep our sending half open: the other direction may still flow


class _Relay:
    """One client connection and its enclave connection."""

    def __init__(self, proxy: HostProxy) -> None:
        self.proxy = proxy
        self.config = proxy.config
        self.stats = proxy.stats
        self.loop = asyncio.get_running_loop()
        self.client: _Side | None = None
        self.enclave: _Side | None = None
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.last_activity = self.loop.time()
        self.aborted = False
        self._connecting: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._write_buffers: tuple[int, ...] = ()

    # --- lifecycle -------------------------------------------------------------------
    def client_connected(self, client: _Side) -> None:
        self.client = client
        assert client.transport is not None
        proxy = self.proxy
        if proxy.closing or len(proxy.relays) >= self.config.max_connections:
            self.stats.rejected_connections += 1
            self._finish_quietly()
            client.transport.abort()
            return
        proxy.relays.add(self)
        self.stats.active_connections += 1
        # Hold the client's bytes in the kernel until the enclave side exists. (uvloop
        # starts reading after connection_made regardless: forward() holds such a chunk.)
        client.transport.pause_reading()
        self._connecting = self.loop.create_task(self._connect_enclave())

    async def _connect_enclave(self) -> None:
        enclave = _Side(self, is_client=False)
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                await open_enclave_transport(self.config.enclave, lambda: enclave)
        except (OSError, TimeoutError) as exc:
            self.stats.enclave_connect_failures += 1
            log.warning("enclave %s unreachable: %s", self.config.enclave, exc or "timed out")
            self._abort_transports()  # the client learns at once, not at its own timeout
            return
        finally:
            self._connecting = None
            if self._all_lost():  # the client left (or was aborted) while we connected
                self._finish()
        self.enclave = enclave
        client = self.client
        assert client is not None and client.transport is not None
        assert enclave.transport is not None
        if client.lost:  # the client went away while we connected
            enclave.transport.abort()
            return
        self.stats.total_connections += 1
        client.peer, enclave.peer = enclave, client
        self.touch()
        self._idle_timer = self.loop.call_at(
            self.last_activity + self.config.idle_timeout, self._check_idle
        )
        for side in (client, enclave):  # bytes that arrived before the link, in order
            if side.early:
                early, side.early = side.early, b""
                self.forward(side, early)
        if client.eof:  # the client already half-closed while we connected
            self.side_eof(client)
        if enclave.eof:
            self.side_eof(enclave)
        if enclave.lost:  # the enclave closed before the link: pass that on
            self.side_lost(enclave, None)
        for transport in (client.transport, enclave.transport):
            if not transport.is_closing():
                transport.resume_reading()

    def forward(self, side: _Side, data: bytes) -> None:
        self.last_activity = self.loop.time()
        peer = side.peer
        if peer is None:  # not linked yet: hold this one chunk, read no more until linked
            side.early += data
            if side.transport is not None and not side.transport.is_closing():
                side.transport.pause_reading()
            return
        if peer.transport is None or peer.transport.is_closing():
            return  # the other side is gone; this side is being closed too
        if side.is_client:
            self.stats.bytes_client_to_enclave += len(data)
        else:
            self.stats.bytes_enclave_to_client += len(data)
        peer.transport.write(data)

    def side_eof(self, side: _Side) -> None:
        """Half-close: pass the EOF on; close both once both directions have ended."""
        peer = side.peer
        if peer is None or peer.transport is None:
            return  # not linked yet: _connect_enclave passes it on
        if peer.transport.can_write_eof() and not peer.transport.is_closing():
            peer.transport.write_eof()
        if peer.eof or peer.lost:
            self._close_transports()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        peer = side.peer
        if exc is not None:  # a reset or an error: the other side must not linger
            self._abort_transports()
        elif peer is not None and peer.transport is not None:
            peer.transport.close()  # flush what this side sent, then close
            self._arm_close_timer()
        elif side.is_client and self._connecting is not None:
            self._connecting.cancel()
        if self._all_lost():
            self._finish()

    def _all_lost(self) -> bool:
        sides = [s for s in (self.client, self.enclave) if s is not None]
        return all(s.lost for s in sides) and self._connecting is None

    def _finish(self) -> None:
        if self.done.done():
            return
        for timer in (self._idle_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        if self in self.proxy.relays:
            self.proxy.relays.discard(self)
            self.stats.active_connections -= 1
        self.done.set_result(None)

    def _finish_quietly(self) -> None:
        self.done.set_result(None)

    # --- closing ---------------------------------------------------------------------
    def _transports(self) -> list[asyncio.Transport]:
        return [s.transport for s in (self.client, self.enclave) if s is not None and s.transport]

    def _close_transports(self) -> None:
        for transport in self._transports():
            transport.close()
        self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        # close() waits for the write buffer to drain; a peer that never reads must not
        # keep the connection (and its buffer) forever.
        if self._close_timer is None:
            self._close_timer = self.loop.call_later(
                self.config.close_timeout, self._abort_transports
            )

    def abort(self) -> None:
        """Drop both sides at once, discarding buffered bytes."""
        if self._connecting is not None:
            self._connecting.cancel()
        self._abort_transports()

    def _abort_transports(self) -> None:
        if not self.aborted and not self.done.done():
            self.aborted = True
            self.stats.aborted_connections += 1
        for transport in self._transports():
            transport.abort()
        if self._all_lost():
            self._finish()

    # --- idle timeout ----------------------------------------------------------------
    def touch(self) -> None:
        self.last_activity = self.loop.time()

    def _check_idle(self) -> None:
        now = self.loop.time()
        buffers = tuple(t.get_write_buffer_size() for t in self._transports())
        if buffers != self._write_buffers:  # a peer drained some of what we hold: live
            self._write_buffers = buffers
            self.last_activity = max(self.last_activity, now)
        deadline = self.last_activity + self.config.idle_timeout
        if now >= deadline:
            self.stats.idle_timeouts += 1
            log.debug("idle for %.1f s: closing", self.config.idle_timeout)
            self.abort()
            return
        self._idle_timer = self.loop.call_at(deadline, self._check_idle)

    def buffered_bytes(self) -> int:
        return sum(t.get_write_buffer_size() for t in self._transports())


async def open_enclave_transport(
    address: EnclaveAddress, factory: Callable[[], asyncio.BaseProtocol]
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """Connect to the enclave with a protocol from ``factory``. Raises ``OSError``."""
    loop = asyncio.get_running_loop()
    if address.kind == "unix":
        return await loop.create_unix_connection(factory, address.path)
    if address.kind == "tcp":
        return await loop.create_connection(factory, address.host, address.port)
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise EnclaveUnreachable("AF_VSOCK is not available on this host")
    # asyncio has no vsock helper: connect the socket ourselves, then hand it over.
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await _connect_nonblocking(sock, (address.cid, address.port))
    except BaseException:
        sock.close()
        raise
    return await loop.create_connection(factory, sock=sock)


async def _connect_nonblocking(sock: socket.socket, address: tuple[int, int]) -> None:
    """``connect()`` a non-blocking socket, waiting for writability; raises ``OSError``.

    ``loop.sock_connect`` would do, but uvloop's resolves the address first, which fails
    for a vsock (CID, port) pair.
    """
    error = sock.connect_ex(address)
    if error in (errno.EINPROGRESS, errno.EAGAIN):
        loop = asyncio.get_running_loop()
        writable: asyncio.Future[None] = loop.create_future()
        fd = sock.fileno()

        def ready() -> None:
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(fd, ready)
        try:
            await writable
        finally:
            loop.remove_writer(fd)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


class HostProxy:
    """The proxy as an object: ``await start()``, ``.port``, ``await stop()``.

    Usable in-process (``async with HostProxy(config) as proxy:``) or through ``kms-host``.
    ``stats`` holds the counters; ``buffered_bytes()`` what the proxy holds right now.
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.stats = ProxyStats()
        self.relays: set[_Relay] = set()
        self.closing = False
        self._server: asyncio.Server | None = None

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
        """Bytes held in write buffers now, all connections (receive buffers are fixed)."""
        return sum(relay.buffered_bytes() for relay in self.relays)

    async def start(self) -> None:
        if self._server is not None:
            raise HostError("the proxy is already started")
        self.closing = False
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Side(_Relay(self), is_client=True),
            self.config.listen.host,
            self.config.listen.port,
            backlog=self.config.backlog,
            reuse_address=True,
        )
        log.info("listening on %s, enclave at %s", self.url, self.config.enclave)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; let connections finish for ``grace`` seconds; abort the rest."""
        if self._server is None:
            return
        self.closing = True
        self._server.close()
        grace = self.config.shutdown_grace if grace is None else grace
        pending = {relay.done for relay in self.relays}
        if pending and grace > 0:
            _, pending = await asyncio.wait(pending, timeout=grace)
        if pending:
            log.info("aborting %d connection(s) still open after %.1f s", len(pending), grace)
            for relay in list(self.relays):
                relay.abort()
            await asyncio.wait(pending, timeout=self.config.close_timeout)
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
