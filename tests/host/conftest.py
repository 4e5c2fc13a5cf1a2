"""Loopback fixtures for the host proxy: backends (TCP, unix), a TLS identity, a proxy.

The in-process proxy tests (``test_proxy.py``) run on asyncio's loop and, where it is
installed, on uvloop's, which ``kms-host`` uses by default: the two differ in details the
relay depends on (uvloop starts reading a new connection even if ``connection_made``
paused it).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from host import EnclaveAddress, HostProxy, ListenAddress, ProxyConfig
from tests.support.tls import write_self_signed

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop
}
try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    pass
else:
    LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name == "test_proxy.py":
        return LOOP_FACTORIES
    return {"asyncio": asyncio.new_event_loop}


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class TlsIdentity:
    cert_path: Path
    key_path: Path
    cert_der: bytes


def make_tls_identity(directory: Path, common_name: str = "enclave.test") -> TlsIdentity:
    cert_path, key_path, der = write_self_signed(directory, common_name, stem=common_name)
    return TlsIdentity(cert_path, key_path, der)


@pytest.fixture(scope="session")
def tls_identity(tmp_path_factory: pytest.TempPathFactory) -> TlsIdentity:
    return make_tls_identity(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path is at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="kh-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then half-close back."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    finally:
        writer.close()


@dataclass
class Backend:
    """A backend server standing in for the enclave; records its connections."""

    address: EnclaveAddress
    server: asyncio.Server
    connections: list[asyncio.StreamWriter] = field(default_factory=list)
    closed: list[asyncio.Event] = field(default_factory=list)


BackendFactory = Callable[..., Awaitable[Backend]]


@pytest.fixture
async def start_backend(short_dir: Path) -> AsyncIterator[BackendFactory]:
    servers: list[asyncio.Server] = []
    counter = 0

    async def start(kind: str = "unix", handler: Handler = echo, **kwargs: Any) -> Backend:
        nonlocal counter
        backend: Backend

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            done = asyncio.Event()
            backend.connections.append(writer)
            backend.closed.append(done)
            try:
                await handler(reader, writer)
            except (OSError, asyncio.CancelledError):
                writer.transport.abort()
            finally:
                done.set()

        if kind == "unix":
            counter += 1
            path = short_dir / f"b{counter}.sock"
            server = await asyncio.start_unix_server(handle, str(path), **kwargs)
            address = EnclaveAddress.parse(f"unix:{path}")
        else:
            server = await asyncio.start_server(handle, "127.0.0.1", 0, **kwargs)
            port = server.sockets[0].getsockname()[1]
            address = EnclaveAddress.parse(f"tcp:127.0.0.1:{port}")
        servers.append(server)
        backend = Backend(address, server)
        return backend

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


ProxyFactory = Callable[..., Awaitable[HostProxy]]


@pytest.fixture
async def start_proxy() -> AsyncIterator[ProxyFactory]:
    proxies: list[HostProxy] = []

    async def start(enclave: EnclaveAddress, **limits: Any) -> HostProxy:
        config = ProxyConfig(listen=ListenAddress("127.0.0.1", 0), enclave=enclave, **limits)
        proxy = HostProxy(config)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        await proxy.stop(grace=0)
