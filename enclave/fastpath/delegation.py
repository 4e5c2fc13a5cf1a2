"""One request on a fast-path connection answered by aiohttp, after which the connection
returns to the fast path.

A request the fast path frames but does not serve (another route, a query string...) is
given, alone and whole, to a fresh aiohttp ``RequestHandler`` whose transport is a
``DelegatedTransport``: its writes go to the connection's real transport, its reads never
happen (the bytes are fed to it), and it ends when aiohttp has written the whole answer.
aiohttp says so through its access logger, a public extension point: ``DelegationTracker``
(installed by ``FastPathRunner``) tells the transport, and the connection detaches the
handler and serves what follows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

log = logging.getLogger("enclave.fastpath")


class DelegatedTransport(asyncio.Transport):
    """The transport a delegated aiohttp handler sees. ``finished`` is called once: with
    False when aiohttp has answered, True when it closed the connection first."""

    def __init__(self, real: asyncio.Transport, finished: Callable[[bool], None]) -> None:
        super().__init__()
        self._real = real
        self._finished: Callable[[bool], None] | None = finished
        self._attached = True
        self.close_requested = False
        self._protocol: asyncio.BaseProtocol | None = None

    def request_done(self) -> None:
        self._finish(closing=False)

    def detach(self) -> None:
        """From now on the handler's writes and closes go nowhere."""
        self._attached = False
        self._finished = None

    def _finish(self, *, closing: bool) -> None:
        finished, self._finished = self._finished, None
        if finished is not None:
            finished(closing)

    # -- asyncio.Transport ---------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return not self._attached or self._real.is_closing()

    def close(self) -> None:
        if self._attached:
            self.close_requested = True
            self._finish(closing=True)

    def abort(self) -> None:
        self.close()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._attached:
            self._real.write(data)

    def writelines(self, list_of_data: Any) -> None:
        if self._attached:
            self._real.writelines(list_of_data)

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._real.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None  # the real transport's limits stay the connection's

    # The request was fed whole: there is nothing to pause.
    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def is_reading(self) -> bool:
        return self._attached

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol


class DelegationTracker(AbstractAccessLogger):
    """aiohttp's access logger, called once each answer is fully written: ends a
    delegated request. It logs nothing (the enclave keeps its own request log)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        transport = request.transport
        if isinstance(transport, DelegatedTransport):
            transport.request_done()


class FastPathRunner(web.AppRunner):
    """An ``AppRunner`` whose connections can be delegated to (``FastPathSite`` needs
    one): its aiohttp handlers report each finished answer to ``DelegationTracker``."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, access_log_class=DelegationTracker, access_log=log, **kwargs)
