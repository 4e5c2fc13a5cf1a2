"""One client connection on the fast path.

A ``FastPathConnection`` reads HTTP/1.1 requests off its transport (TLS already removed by
the event loop's SSL transport), one at a time and in order (pipelined requests wait in the
buffer). Each request it frames (``enclave.fastpath.framing``) is either

- for a route it serves (``FastRoutes``): answered by the application's own middlewares and
  handler (``FastRoute.answer``) with a light request object; or
- for any other route: given whole to a fresh aiohttp handler, which answers it as usual;
  then the connection comes back here (``enclave.fastpath.delegation``).

A request it does not frame (chunked body, ``Expect``, ``Upgrade``, HTTP/1.0, a malformed
or oversized head or body...) makes it hand the connection to aiohttp for good: a fresh
aiohttp ``RequestHandler`` becomes the transport's protocol and is given every byte from
the start of that request, so aiohttp sees a stream that simply starts there.

Like aiohttp (``handler_cancellation`` off), a request being answered is not cancelled when
the client goes away: its audit record and effects complete, only the answer is dropped.
Idle keep-alive connections are closed after ``keepalive_seconds`` (aiohttp's default).
A request must arrive whole (head and declared body) within ``request_read_seconds`` of its
first byte reaching the buffer, or it is answered 408 and the connection closed: a client
that sends a head or body slowly, or never finishes it, holds a connection that long only.

Must never: answer a request out of order, frame a request differently from aiohttp (when
in doubt it hands over), or put a header value or body in a log.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Callable
from typing import cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from enclave.fastpath.delegation import DelegatedTransport
from enclave.fastpath.framing import MAX_HEAD_BYTES, HeadParser, RequestHead
from enclave.fastpath.request import FastRequest
from enclave.fastpath.routes import FastRoute, FastRoutes
from enclave.problems import problem_response

log = logging.getLogger("enclave.fastpath")

# aiohttp's RequestHandler default: an idle keep-alive connection is closed after this.
KEEPALIVE_SECONDS = 3630.0
# From the first byte of a request to its last: a slower client is answered 408 and closed.
REQUEST_READ_SECONDS = 30.0
_HEAD_END = b"\r\n\r\n"
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n".encode()


class HttpDate:
    """The ``Date`` header line, formatted once per second."""

    __slots__ = ("_line", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n".encode()
        return self._line


class ConnectionSet:
    """The live fast-path connections of one listener (for a graceful stop)."""

    def __init__(self, routes: FastRoutes, fallback: Callable[[], asyncio.Protocol]) -> None:
        self.routes = routes
        self.fallback = fallback  # aiohttp's protocol factory (``AppRunner.server``)
        self.date = HttpDate()
        self.heads = HeadParser()
        self.keepalive_seconds = KEEPALIVE_SECONDS
        self.request_read_seconds = REQUEST_READ_SECONDS
        self.live: set[FastPathConnection] = set()
        self.served = 0  # requests answered on the fast path (tests, diagnostics)
        self.delegated = 0  # requests answered by aiohttp, the connection kept
        self.handed_over = 0  # connections given to aiohttp for good

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory for ``loop.create_server``."""
        if not self.routes:
            return self.fallback()
        return FastPathConnection(self)

    async def drain(self, timeout: float) -> None:
        """Let requests being answered finish (at most ``timeout`` s), then close all."""
        busy = [c.in_flight for c in self.live if c.in_flight is not None]
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for connection in list(self.live):
            connection.close()


class FastPathConnection(asyncio.Protocol):
    def __init__(self, connections: ConnectionSet) -> None:
        self._connections = connections
        self._routes = connections.routes
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.in_flight: asyncio.Future[None] | None = None
        self._delegated: asyncio.Protocol | None = None  # aiohttp's handler, while delegated
        self._reading_paused = False
        self._writing_paused = False
        self._last_active = 0.0
        # The most this connection buffers: one whole request (pipelined ones wait in the
        # kernel). Reading pauses above it and resumes only once served back under it.
        self._buffer_limit = connections.routes.body_limit + MAX_HEAD_BYTES + len(_HEAD_END)
        self._idle_timer: asyncio.TimerHandle | None = None
        self._read_timer: asyncio.TimerHandle | None = None  # a request is half received

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._connections.live.add(self)
        loop = asyncio.get_running_loop()
        self._last_active = loop.time()
        self._idle_timer = loop.call_at(
            self._last_active + self._connections.keepalive_seconds, self._check_idle
        )

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self.in_flight is None and not self._writing_paused:
            self._serve_buffered()
        if len(self._buffer) > self._buffer_limit:
            self._pause_reading()

    def eof_received(self) -> bool:
        return False  # close: a client that stops sending gets no further answers

    def connection_lost(self, exc: Exception | None) -> None:
        self._detach()
        self._transport = None
        if self._delegated is not None:  # aiohttp handles the loss as it always does
            self._delegated.connection_lost(exc)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._delegated is not None:
            self._delegated.pause_writing()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._delegated is not None:
            self._delegated.resume_writing()
        elif self.in_flight is None:
            self._serve_buffered()

    # -- serving -------------------------------------------------------------------------
    def _serve_buffered(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        buffer = self._buffer
        if not buffer:
            return
        end = buffer.find(_HEAD_END, 0, MAX_HEAD_BYTES + len(_HEAD_END))
        if end < 0:
            if len(buffer) >= MAX_HEAD_BYTES + len(_HEAD_END):
                self._hand_over()
            else:
                self._await_rest()
            return
        head = self._connections.heads.parse(bytes(buffer[:end]))
        if head is None or head.content_length > self._routes.body_limit:
            self._hand_over()
            return
        start = end + len(_HEAD_END)
        stop = start + head.content_length
        if len(buffer) < stop:
            self._await_rest()  # the body is still arriving
            return
        self._cancel_read_timer()
        loop = asyncio.get_running_loop()
        self._last_active = loop.time()
        route = self._routes.by_target.get(head.target)
        if route is None or route.method != head.method:
            raw = bytes(buffer[:stop])
            del buffer[:stop]
            self._delegate(raw, head.close)
            return
        body = bytes(buffer[start:stop])
        del buffer[:stop]
        self._connections.served += 1
        self.in_flight = loop.create_task(self._answer(route, head, body))

    async def _answer(self, route: FastRoute, head: RequestHead, body: bytes) -> None:
        request = FastRequest(
            self._routes.app, method=head.method, path=route.path, headers=head.headers,
            match_info=route.match_info, body=body,
        )  # fmt: skip
        close = head.close
        try:
            # The same composed middlewares aiohttp would run, with a request that offers
            # what they and the fast routes' handlers use (see enclave.fastpath.request).
            response = await route.answer(cast(web.Request, request))
            encoded = _encode(response, close, self._connections.date)
        except Exception:
            log.exception("fast path: answering %s %s failed", head.method, route.path)
            close = True
            failed = problem_response(500, "internal-error", "Internal error",
                                      instance=route.path)  # fmt: skip
            encoded = _encode(failed, close, self._connections.date)
        finally:
            self.in_flight = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(encoded)
        self._next(close)

    def _next(self, close: bool) -> None:
        """After an answer: close, or go on with what is buffered."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._last_active = asyncio.get_running_loop().time()
        if close:
            transport.close()
            return
        if not self._writing_paused:
            self._serve_buffered()
        if self._reading_paused and len(self._buffer) <= self._buffer_limit:
            transport = self._transport  # None once handed over (which resumed reading)
            if transport is not None and not transport.is_closing():
                self._reading_paused = False
                transport.resume_reading()

    # -- one request answered by aiohttp -------------------------------------------------
    def _delegate(self, raw: bytes, close: bool) -> None:
        """``raw`` (one whole request) to a fresh aiohttp handler; back here once it has
        answered (see enclave.fastpath.delegation)."""
        transport = self._transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self.in_flight = done

        def finished(closing: bool) -> None:
            # Two loop turns later: aiohttp's handler first finishes its own bookkeeping
            # for the request (and closes, when it means to).
            loop.call_soon(loop.call_soon, self._delegation_over, handler, shim, close)
            if not done.done():
                done.set_result(None)

        shim = DelegatedTransport(transport, finished)
        handler = self._connections.fallback()
        self._delegated = handler
        self._connections.delegated += 1
        handler.connection_made(shim)
        handler.data_received(raw)

    def _delegation_over(
        self, handler: asyncio.Protocol, shim: DelegatedTransport, close: bool
    ) -> None:
        closing = shim.close_requested
        shim.detach()
        self._delegated = None
        self.in_flight = None
        handler.connection_lost(None)
        self._next(close or closing)

    # -- hand-over, idleness, closing -----------------------------------------------------
    def _hand_over(self) -> None:
        """Give the connection, and every byte from the start of the current request, to
        a new aiohttp request handler."""
        transport = self._transport
        if transport is None:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        self._detach()
        self._transport = None
        self._connections.handed_over += 1
        protocol = self._connections.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        if data:
            protocol.data_received(data)

    def _await_rest(self) -> None:
        """Part of a request is buffered: it must be whole within ``request_read_seconds``."""
        if self._read_timer is None:
            self._read_timer = asyncio.get_running_loop().call_later(
                self._connections.request_read_seconds, self._request_read_timed_out
            )

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _request_read_timed_out(self) -> None:
        self._read_timer = None
        transport = self._transport
        if transport is None or transport.is_closing() or self.in_flight is not None:
            return
        log.info("a request was not received within %.1f s: closing its connection",
                 self._connections.request_read_seconds)  # fmt: skip
        self._buffer.clear()
        if self._writing_paused:  # it does not read either: nothing more is sent to it
            transport.abort()
            return
        timeout = problem_response(408, "request-timeout", "Request Timeout",
                                   "the request was not received in time")  # fmt: skip
        transport.write(_encode(timeout, True, self._connections.date))
        transport.close()

    def _check_idle(self) -> None:
        self._idle_timer = None
        transport = self._transport
        if transport is None:
            return
        loop = asyncio.get_running_loop()
        deadline = self._last_active + self._connections.keepalive_seconds
        if self.in_flight is None and loop.time() >= deadline:
            transport.close()
            return
        self._idle_timer = loop.call_at(
            max(deadline, loop.time() + 1.0), self._check_idle
        )  # fmt: skip

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _detach(self) -> None:
        self._connections.live.discard(self)
        self._cancel_read_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    @property
    def buffered_bytes(self) -> int:
        """Received bytes not yet served (at most one request's worth past the limit)."""
        return len(self._buffer)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _encode(response: web.StreamResponse, close: bool, date: HttpDate) -> bytes:
    """The response as bytes on the wire, with the headers aiohttp's writer adds (Date,
    Server, Content-Length, and Connection: close when closing)."""
    if not isinstance(response, web.Response) or response.prepared:
        raise TypeError(f"the fast path cannot send a {type(response).__name__}")
    body = response.body
    if body is None:
        body = b""
    if not isinstance(body, bytes | bytearray):
        raise TypeError("the fast path sends byte bodies only")
    lines = [f"HTTP/1.1 {response.status} {response.reason}\r\n".encode("latin-1")]
    for name, value in response.headers.items():
        if name.lower() == "content-length":
            continue  # counted below, from the body sent
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError("a response header contains a line break")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(date.line())
    lines.append(_SERVER)
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(bytes(body))
    return b"".join(lines)
