"""The host proxy on real loopback sockets: forwarding, limits, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time

import pytest

from host import EnclaveAddress, HostProxy

from .conftest import BackendFactory, ProxyFactory, TlsIdentity, echo

# Every wait in these tests is bounded, so a proxy bug fails a test instead of hanging it.
STEP = 5.0


async def connect(proxy: HostProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), STEP)


async def assert_closed_promptly(reader: asyncio.StreamReader, within: float = 2.0) -> float:
    """The peer closed: EOF or a reset, within ``within`` seconds. Returns the time taken."""
    start = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(1), within)
        assert data == b"", f"expected the connection closed, got {data!r}"
    except (ConnectionResetError, BrokenPipeError):
        pass
    return time.monotonic() - start


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_bytes_are_forwarded_intact_both_ways(
    kind: str, start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    backend = await start_backend(kind)
    proxy = await start_proxy(backend.address)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    reader, writer = await connect(proxy)

    async def send() -> None:
        for offset in range(0, len(payload), 100_000):
            writer.write(payload[offset : offset + 100_000])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    echoed = await read_exactly(reader, len(payload))
    await sender
    assert echoed == payload
    assert await asyncio.wait_for(reader.read(), STEP) == b""  # EOF came back after ours
    writer.close()
    assert proxy.stats.bytes_client_to_enclave == len(payload)
    assert proxy.stats.bytes_enclave_to_client == len(payload)
    assert proxy.stats.total_connections == 1


async def test_tls_passes_through_and_the_client_sees_the_backends_certificate(
    tls_identity: TlsIdentity, start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls_identity.cert_path, tls_identity.key_path)
    backend = await start_backend("unix", ssl=server_ctx)
    proxy = await start_proxy(backend.address)

    client_ctx = ssl.create_default_context(cafile=str(tls_identity.cert_path))
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            "127.0.0.1", proxy.port, ssl=client_ctx, server_hostname="localhost"
        ),
        STEP,
    )
    ssl_object = writer.get_extra_info("ssl_object")
    assert ssl_object.getpeercert(binary_form=True) == tls_identity.cert_der
    writer.write(b"hello through an opaque pipe")
    await writer.drain()
    assert await read_exactly(reader, 28) == b"hello through an opaque pipe"
    writer.close()
    # The proxy saw only ciphertext: more bytes than the plaintext, and never the plaintext.
    assert proxy.stats.bytes_client_to_enclave > 28


async def test_connection_limit_closes_excess_connections_at_once(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    backend = await start_backend("unix")
    proxy = await start_proxy(backend.address, max_connections=2)
    held = [await connect(proxy) for _ in range(2)]
    for reader, writer in held:  # both are really connected through to the echo backend
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"

    extra_reader, extra_writer = await connect(proxy)
    assert await assert_closed_promptly(extra_reader, within=1.0) < 1.0
    extra_writer.close()
    assert proxy.stats.rejected_connections == 1
    assert len(backend.connections) == 2  # the rejected one never reached the enclave

    held[0][1].close()
    await asyncio.wait_for(backend.closed[0].wait(), STEP)
    for _ in range(100):  # the proxy notices the close on its next loop turn
        if proxy.stats.active_connections < 2:
            break
        await asyncio.sleep(0.01)
    reader, writer = await connect(proxy)
    writer.write(b"again")
    assert await read_exactly(reader, 5) == b"again"
    writer.close()
    held[1][1].close()


async def test_idle_connection_is_closed_on_both_sides(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    backend = await start_backend("unix")
    proxy = await start_proxy(backend.address, idle_timeout=0.3)
    reader, writer = await connect(proxy)
    writer.write(b"x")
    assert await read_exactly(reader, 1) == b"x"
    start = time.monotonic()
    await assert_closed_promptly(reader, within=2.0)
    assert 0.25 <= time.monotonic() - start < 1.5
    await asyncio.wait_for(backend.closed[0].wait(), STEP)  # the enclave side is closed too
    assert proxy.stats.idle_timeouts == 1
    writer.close()


async def test_active_connection_outlives_the_idle_timeout(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    backend = await start_backend("tcp")
    proxy = await start_proxy(backend.address, idle_timeout=0.3)
    reader, writer = await connect(proxy)
    for _ in range(8):  # 0.8 s of traffic every 0.1 s
        writer.write(b"tick")
        assert await read_exactly(reader, 4) == b"tick"
        await asyncio.sleep(0.1)
    assert proxy.stats.idle_timeouts == 0
    writer.close()


async def test_half_close_is_propagated_and_the_other_direction_stays_open(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    got_eof = asyncio.Event()

    async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's EOF arrives through the proxy
        got_eof.set()
        await asyncio.sleep(0.1)  # the reply travels after the EOF, on the open half
        writer.write(b"reply to " + request)
        await writer.drain()
        writer.write_eof()
        writer.close()

    for kind in ("unix", "tcp"):
        got_eof.clear()
        backend = await start_backend(kind, reply_after_eof)
        proxy = await start_proxy(backend.address)
        reader, writer = await connect(proxy)
        writer.write(b"request")
        writer.write_eof()
        await asyncio.wait_for(got_eof.wait(), STEP)
        assert await asyncio.wait_for(reader.read(), STEP) == b"reply to request"
        writer.close()


async def test_slow_reader_keeps_the_proxys_buffers_bounded(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    total = 16 * 1024 * 1024
    block = os.urandom(256 * 1024)
    sent = 0

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        while sent < total:
            writer.write(block)
            sent += len(block)
            await writer.drain()
        writer.write_eof()

    backend = await start_backend("unix", firehose)
    proxy = await start_proxy(backend.address)
    cap = proxy.config.max_buffered_bytes_per_connection
    # Small kernel buffers on the client, so what runs ahead of the reader is mostly the
    # proxy's doing (the kernel's share between proxy and client is still autotuned).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.connect(("127.0.0.1", proxy.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    peak = 0
    received = 0
    lead = []
    while True:
        data = await asyncio.wait_for(reader.read(64 * 1024), STEP)
        if not data:
            break
        received += len(data)
        peak = max(peak, proxy.buffered_bytes())
        lead.append(sent - received)
        if received < total // 2:
            await asyncio.sleep(0.001)  # a slow reader for the first half
    writer.close()
    assert received == total
    assert 0 < peak <= cap, f"proxy held {peak} bytes, cap {cap}"
    # The sender was held back: an unbounded proxy would have let it run the whole 16 MiB
    # ahead at once; here it stays within the proxy's cap plus the kernel's socket buffers.
    assert max(lead) < total // 2, f"sender ran {max(lead)} bytes ahead"


async def test_backend_down_closes_the_client_promptly(
    start_proxy: ProxyFactory, short_dir: object
) -> None:
    for address in (
        EnclaveAddress.parse(f"unix:{short_dir}/nobody-listens.sock"),
        EnclaveAddress.parse("tcp:127.0.0.1:1"),
        EnclaveAddress.parse("vsock:3:5000"),  # no vsock device here: fails like a down enclave
    ):
        proxy = await start_proxy(address, connect_timeout=1.0)
        reader, writer = await connect(proxy)
        assert await assert_closed_promptly(reader, within=1.5) < 1.5
        writer.close()
        assert proxy.stats.enclave_connect_failures == 1
        assert proxy.stats.active_connections == 0


async def test_backend_reset_mid_stream_closes_the_client(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    async def abort_after_hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(5)
        writer.transport.abort()

    backend = await start_backend("tcp", abort_after_hello)
    proxy = await start_proxy(backend.address)
    reader, writer = await connect(proxy)
    writer.write(b"hello")
    await assert_closed_promptly(reader, within=2.0)
    writer.close()


async def test_stop_lets_in_flight_connections_finish_and_refuses_new_ones(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    backend = await start_backend("unix")
    proxy = await start_proxy(backend.address, shutdown_grace=5.0)
    port = proxy.port
    reader, writer = await connect(proxy)
    writer.write(b"before")
    assert await read_exactly(reader, 6) == b"before"

    stopping = asyncio.create_task(proxy.stop())
    await asyncio.sleep(0.1)
    with pytest.raises(OSError):  # no longer accepting
        await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"during")  # the in-flight connection still works
    assert await read_exactly(reader, 6) == b"during"
    assert not stopping.done()
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), STEP) == b""
    await asyncio.wait_for(stopping, STEP)  # stop returns as soon as the last one finished
    writer.close()
    assert proxy.stats.aborted_connections == 0


async def test_stop_aborts_connections_still_open_after_the_grace_period(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    backend = await start_backend("unix")
    proxy = await start_proxy(backend.address)
    reader, writer = await connect(proxy)
    writer.write(b"x")
    assert await read_exactly(reader, 1) == b"x"
    start = time.monotonic()
    await asyncio.wait_for(proxy.stop(grace=0.3), STEP)
    assert 0.25 <= time.monotonic() - start < 2.0
    await assert_closed_promptly(reader, within=1.0)
    await asyncio.wait_for(backend.closed[0].wait(), STEP)
    assert proxy.stats.aborted_connections == 1
    writer.close()


async def test_context_manager_and_port(start_backend: BackendFactory) -> None:
    from host import ListenAddress, ProxyConfig

    backend = await start_backend("unix")
    config = ProxyConfig(ListenAddress("127.0.0.1", 0), backend.address)
    async with HostProxy(config) as proxy:
        assert proxy.port > 0
        assert proxy.url == f"tcp://127.0.0.1:{proxy.port}"
        reader, writer = await connect(proxy)
        writer.write(b"ok")
        assert await read_exactly(reader, 2) == b"ok"
        writer.close()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_many_concurrent_connections_stay_separate_and_are_all_released(
    kind: str, start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    backend = await start_backend(kind)
    proxy = await start_proxy(backend.address, max_connections=64)

    async def session(index: int) -> bytes:
        payload = index.to_bytes(2, "big") + os.urandom(64 * 1024)
        reader, writer = await connect(proxy)
        writer.write(payload)
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), STEP)
        writer.close()
        assert echoed == payload
        return echoed[:2]

    tags = await asyncio.gather(*(session(i) for i in range(40)))
    assert sorted(int.from_bytes(t, "big") for t in tags) == list(range(40))
    for _ in range(200):
        if proxy.stats.active_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert proxy.stats.active_connections == 0
    assert proxy.stats.total_connections == 40
    assert proxy.stats.aborted_connections == 0
    assert proxy.buffered_bytes() == 0
    assert proxy.stats.bytes_client_to_enclave == 40 * (2 + 64 * 1024)


async def test_client_reset_aborts_the_enclave_side(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    backend = await start_backend("unix")
    proxy = await start_proxy(backend.address)
    reader, writer = await connect(proxy)
    writer.write(b"abc")
    assert await read_exactly(reader, 3) == b"abc"
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.transport.abort()  # with linger 0: a TCP reset, not a FIN
    await asyncio.wait_for(backend.closed[0].wait(), STEP)
    assert proxy.stats.aborted_connections == 1


async def test_bytes_sent_before_the_enclave_link_are_kept_in_order(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    """Both sides speak at once, before the proxy has linked them (uvloop reads early)."""

    async def banner_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner;")
        await echo(reader, writer)

    backend = await start_backend("unix", banner_then_echo)
    proxy = await start_proxy(backend.address)
    for _ in range(20):
        reader, writer = await connect(proxy)
        writer.write(b"first;second;")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), STEP) == b"banner;first;second;"
        writer.close()
    assert proxy.stats.bytes_client_to_enclave == 20 * len(b"first;second;")


async def test_client_socket_has_tcp_nodelay(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    backend = await start_backend("tcp")
    proxy = await start_proxy(backend.address)
    reader, writer = await connect(proxy)
    writer.write(b"x")
    assert await read_exactly(reader, 1) == b"x"
    (relay,) = proxy.relays
    for side in (relay.client, relay.enclave):
        assert side is not None and side.transport is not None
        sock = side.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    writer.close()


async def test_a_closed_connections_buffers_are_freed_without_the_cycle_collector(
    start_backend: BackendFactory, start_proxy: ProxyFactory
) -> None:
    """A relay and its two sides form a reference cycle; their receive buffers (64 KiB
    each) once stayed until the collector ran: 1,000 closed connections kept ~130 MB."""
    import gc
    import tracemalloc

    backend = await start_backend("unix")
    proxy = await start_proxy(backend.address)
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
        while proxy.relays:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert kept < 20 * 64 * 1024, f"{kept} bytes kept after 20 closed connections"
