"""An aiohttp test server whose connections start on the enclave's fast path, so the KMS
API tests run each request through ``enclave.fastpath`` as ``kms-enclave serve`` does."""

from __future__ import annotations

import socket
from typing import Any

from aiohttp.test_utils import TestServer, get_port_socket
from yarl import URL

from enclave.api.routes import FAST_PATH_ROUTES
from enclave.fastpath.delegation import FastPathRunner
from enclave.fastpath.routes import FastRoutes
from enclave.fastpath.site import FastPathSite


class FastPathTestServer(TestServer):
    def __init__(
        self,
        app: Any,
        *,
        body_limit: int,
        routes: tuple[tuple[str, str], ...] = FAST_PATH_ROUTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.body_limit = body_limit
        self.wanted = routes
        self.site: FastPathSite | None = None

    async def _make_runner(self, **kwargs: Any) -> FastPathRunner:
        return FastPathRunner(self.app, **kwargs)

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(**kwargs)
        await self.runner.setup()
        sock = get_port_socket(self.host, 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        routes = FastRoutes.of(self.app, self.wanted, self.body_limit)
        assert routes or not self.wanted, "the fast routes were not found"
        self.site = FastPathSite(self.runner, routes, ssl_context=None, sock=sock)
        await self.site.start()
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    @property
    def delegated(self) -> int:
        return 0 if self.site is None else self.site.connections.delegated

    @property
    def served_fast(self) -> int:
        return 0 if self.site is None else self.site.connections.served
