"""The fast path over real sockets: ordering, hand-over to aiohttp, framing attacks, errors,
disconnects, idleness, a graceful stop, and TLS on uvloop (as ``kms-enclave serve`` runs)."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
import uvloop
from aiohttp import web

from enclave.fastpath.delegation import FastPathRunner
from enclave.fastpath.framing import MAX_HEAD_BYTES
from enclave.fastpath.routes import FastRoutes
from enclave.fastpath.site import FastPathSite
from tests.support.fastpath import FastPathTestServer
from tests.support.tls import write_self_signed

FAST = (("POST", "/fast"), ("POST", "/boom"), ("POST", "/wait"))
LIMIT = 1000


@dataclass
class Served:
    count: int = 0
    finished: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


def make_app(served: Served) -> web.Application:
    @web.middleware
    async def tag(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers["X-Middleware"] = "ran"
        return response

    async def fast(request: web.Request) -> web.Response:
        served.count += 1
        body = await request.read() if hasattr(request, "read") else await request.content.readany()
        return web.json_response({"via": type(request).__name__, "n": served.count,
                                  "bytes": len(body)})  # fmt: skip

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("handler failed")

    async def wait(request: web.Request) -> web.Response:
        await served.release.wait()
        served.finished += 1
        return web.json_response({"waited": True})

    app = web.Application(middlewares=[tag], client_max_size=LIMIT)
    app.router.add_post("/fast", fast)
    app.router.add_post("/boom", boom)
    app.router.add_post("/wait", wait)
    app.router.add_post("/slow", fast)
    app.router.add_post("/slow-boom", boom)
    app.router.add_post("/slow-wait", wait)
    return app


@dataclass
class Running:
    server: FastPathTestServer
    served: Served

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.server.host, self.server.port)


@pytest_asyncio.fixture
async def running() -> AsyncIterator[Running]:
    served = Served()
    server = FastPathTestServer(make_app(served), body_limit=LIMIT, routes=FAST)
    await server.start_server()
    try:
        yield Running(server, served)
    finally:
        served.release.set()
        await server.close()


def request(path: str, body: bytes = b"{}", *extra: bytes) -> bytes:
    head = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: t", *extra]
    head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body)


async def test_a_fast_request_runs_the_middlewares_and_is_framed_like_aiohttp(
    running: Running,
) -> None:
    reader, writer = await running.open()
    writer.write(request("/fast", b'{"a": 1}'))
    answer = await read_answer(reader)
    assert answer.status == 200
    assert b'"via": "FastRequest"' in answer.body and b'"bytes": 8' in answer.body
    assert answer.headers["x-middleware"] == "ran"
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.headers["server"].startswith("Python/")
    datetime.datetime.strptime(answer.headers["date"], "%a, %d %b %Y %H:%M:%S GMT")
    assert "connection" not in answer.headers  # kept alive
    writer.write(request("/fast"))
    assert (await read_answer(reader)).status == 200
    writer.close()


async def test_pipelined_requests_are_answered_in_order(running: Running) -> None:
    reader, writer = await running.open()
    writer.write(request("/fast") * 3)
    numbers = [(await read_answer(reader)).body for _ in range(3)]
    assert [b'"n": %d' % n in body for n, body in zip((1, 2, 3), numbers, strict=True)] == [
        True, True, True,
    ]  # fmt: skip
    writer.close()


async def test_another_route_is_answered_by_aiohttp_then_the_fast_path_resumes(
    running: Running,
) -> None:
    reader, writer = await running.open()
    writer.write(request("/fast") + request("/slow") + request("/fast"))
    vias = [(await read_answer(reader)).body for _ in range(3)]
    assert b"FastRequest" in vias[0]
    assert b'"via": "Request"' in vias[1]
    assert b"FastRequest" in vias[2]
    writer.write(b"GET /slow?x=1 HTTP/1.1\r\nHost: t\r\n\r\n" + request("/fast"))
    assert (await read_answer(reader)).status == 405  # aiohttp's own answer: GET not routed
    assert b"FastRequest" in (await read_answer(reader)).body
    assert running.server.site is not None
    connections = running.server.site.connections
    assert (connections.served, connections.delegated, connections.handed_over) == (3, 2, 0)
    writer.close()


async def test_a_delegated_request_that_asks_to_close_closes(running: Running) -> None:
    reader, writer = await running.open()
    writer.write(request("/slow", b"{}", b"Connection: close") + request("/fast"))
    answer = await read_answer(reader)
    assert answer.status == 200 and answer.headers.get("connection") == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert running.server.served_fast == 0
    writer.close()


async def test_a_failing_aiohttp_handler_does_not_disturb_the_next_request(
    running: Running,
) -> None:
    reader, writer = await running.open()
    writer.write(request("/slow-boom") + request("/fast"))
    first = await read_answer(reader)
    assert first.status == 500
    rest = await asyncio.wait_for(reader.read(), 5)
    # aiohttp may close after its 500; if it keeps the connection, the next answer is whole
    assert rest == b"" or (b" 200 OK" in rest and b"FastRequest" in rest)
    writer.close()


async def test_a_client_that_leaves_during_a_delegated_request_is_handled_by_aiohttp(
    running: Running,
) -> None:
    await _leave_during(running, "/slow-wait")
    assert running.served.finished == 1  # handler_cancellation off: it ran to its end
    assert running.server.site is not None
    assert not running.server.site.connections.live


async def test_a_body_arriving_in_pieces_is_served_once_complete(running: Running) -> None:
    reader, writer = await running.open()
    whole = request("/fast", b'{"key": "' + b"x" * 300 + b'"}')
    for start in range(0, len(whole), 97):
        writer.write(whole[start : start + 97])
        await writer.drain()
        await asyncio.sleep(0.01)
    answer = await read_answer(reader)
    assert answer.status == 200 and b'"bytes": 311' in answer.body
    assert running.served.count == 1
    writer.close()


async def test_a_chunked_body_goes_to_aiohttp_which_reads_it(running: Running) -> None:
    reader, writer = await running.open()
    writer.write(
        b"POST /fast HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
    )
    answer = await read_answer(reader)
    assert answer.status == 200 and b'"via": "Request"' in answer.body
    assert b'"bytes": 7' in answer.body
    writer.close()


@pytest.mark.parametrize(
    "smuggled",
    [
        b"POST /fast HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\nPOST /fast HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /fast HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}"
        + request("/fast"),
    ],
)
async def test_ambiguous_framing_never_reaches_the_fast_handler(
    running: Running, smuggled: bytes
) -> None:
    reader, writer = await running.open()
    writer.write(smuggled)
    answer = await read_answer(reader)
    assert answer.status == 400  # aiohttp's own refusal
    assert running.served.count == 0
    writer.close()


SECRET = b"eyJhbGciOiJFZERTQSJ9.c2VjcmV0.c2ln"


@pytest.mark.parametrize(
    "unparsable",
    [
        b"POST /fast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + SECRET + b"\x01\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"GET /slow HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + SECRET + b"\x7f\r\n\r\n",
        b"FOO /fast HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + SECRET + b"\r\n\r\n",
        b"POST /fast HTTP/1.1\r\nHost: t\r\nX: " + SECRET + b"\r\nContent-Length: x\r\n\r\n",
        b"POST /f\xc3\xa4st HTTP/1.1\r\nHost: t\r\nX: " + SECRET + b"\r\n\r\n",
    ],
    ids=[
        "bad-header-char-fast-route",
        "bad-header-char-other-route",
        "unknown-method",
        "bad-content-length",
        "raw-non-ascii-path",
    ],
)
async def test_an_unparsable_request_gets_a_problem_that_quotes_nothing(
    running: Running, unparsable: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's own refusal quoted the offending line (here, a bearer token) in its
    answer and in the log."""
    reader, writer = await running.open()
    writer.write(unparsable)
    answer = await read_answer(reader)
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert b'"type": "https://enclave-kms.dev/problems/malformed-http"' in answer.body
    assert SECRET not in answer.body
    assert SECRET.decode() not in caplog.text
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, as aiohttp does
    assert running.served.count == 0
    writer.close()


async def test_a_declared_body_over_the_limit_is_refused_by_aiohttp(running: Running) -> None:
    reader, writer = await running.open()
    writer.write(b"POST /fast HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
    writer.write(b"x" * (LIMIT + 1))
    answer = await read_answer(reader)
    assert answer.status == 413
    assert running.server.served_fast == 0
    writer.close()


async def test_connection_close_is_answered_then_closed(running: Running) -> None:
    reader, writer = await running.open()
    writer.write(request("/fast", b"{}", b"Connection: close"))
    answer = await read_answer(reader)
    assert answer.status == 200 and answer.headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_failing_handler_gets_a_500_problem_and_the_connection_closes(
    running: Running,
) -> None:
    reader, writer = await running.open()
    writer.write(request("/boom") + request("/fast"))
    answer = await read_answer(reader)
    assert answer.status == 500
    assert answer.headers["content-type"] == "application/problem+json"
    assert b"handler failed" not in answer.body  # no exception text leaves
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert running.served.count == 0
    writer.close()


async def _leave_during(running: Running, path: str) -> None:
    """Send a request to ``path`` (which waits), hang up, then let the handler go on."""
    _, writer = await running.open()
    writer.write(request(path))
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.close()
    await asyncio.sleep(0.05)
    running.served.release.set()
    for _ in range(100):
        if running.served.finished:
            break
        await asyncio.sleep(0.01)


async def test_a_request_whose_client_left_still_completes(running: Running) -> None:
    await _leave_during(running, "/wait")
    assert running.served.finished == 1


async def test_an_idle_connection_is_closed_after_the_keepalive(running: Running) -> None:
    assert running.server.site is not None
    running.server.site.connections.keepalive_seconds = 0.2
    reader, writer = await running.open()
    writer.write(request("/fast"))
    assert (await read_answer(reader)).status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


@pytest.mark.parametrize("sent", [b"POST /fast HTT", request("/fast", b'{"key": 1}')[:-3]])
async def test_a_request_not_received_in_time_is_answered_408_and_closed(
    running: Running, sent: bytes
) -> None:
    assert running.server.site is not None
    running.server.site.connections.request_read_seconds = 0.2
    reader, writer = await running.open()
    writer.write(request("/fast"))
    assert (await read_answer(reader)).status == 200

    async def trickle() -> None:  # for longer than allowed: every byte is not enough
        for start in range(len(sent)):
            writer.write(sent[start : start + 1])
            await asyncio.sleep(0.4 / len(sent))

    trickling = asyncio.create_task(trickle())
    answer = await read_answer(reader)
    trickling.cancel()
    assert answer.status == 408 and answer.headers["connection"] == "close"
    assert answer.headers["content-type"] == "application/problem+json"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert running.served.count == 1
    writer.close()


async def test_a_request_received_whole_in_time_is_not_timed_out(running: Running) -> None:
    assert running.server.site is not None
    running.server.site.connections.request_read_seconds = 0.3
    reader, writer = await running.open()
    whole = request("/fast")
    writer.write(whole[:5])
    await asyncio.sleep(0.15)
    writer.write(whole[5:])
    assert (await read_answer(reader)).status == 200
    await asyncio.sleep(0.3)  # the timer of the answered request is gone
    writer.write(request("/fast"))
    assert (await read_answer(reader)).status == 200
    writer.close()


@pytest.mark.parametrize("path", ["/fast", "/slow"])  # served here; delegated to aiohttp
async def test_a_client_that_pipelines_without_reading_is_not_buffered_without_bound(
    running: Running, path: str
) -> None:
    assert running.server.site is not None
    _reader, writer = await running.open()
    one = request(path, b'{"key": "' + b"x" * 800 + b'"}')
    writer.write(one * (8 * 1024 * 1024 // len(one)))  # never read: answers back up
    await asyncio.sleep(0.5)
    (connection,) = running.server.site.connections.live
    # one whole request, plus at most one read the transport had under way when paused
    assert connection.buffered_bytes <= LIMIT + MAX_HEAD_BYTES + 4 + 256 * 1024
    writer.transport.abort()


async def test_stopping_lets_a_request_in_flight_finish(running: Running) -> None:
    reader, writer = await running.open()
    writer.write(request("/wait"))
    await writer.drain()
    await asyncio.sleep(0.05)
    asyncio.get_running_loop().call_later(0.2, running.served.release.set)
    assert running.server.runner is not None
    await running.server.runner.cleanup()
    answer = await read_answer(reader)
    assert answer.status == 200 and b"waited" in answer.body
    writer.close()


async def test_with_no_fast_routes_aiohttp_serves_every_connection() -> None:
    """``kms-enclave serve --no-fast-path``: the site hands each connection to aiohttp."""
    served = Served()
    server = FastPathTestServer(make_app(served), body_limit=LIMIT, routes=())
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(request("/fast"))
        answer = await read_answer(reader)
        assert answer.status == 200 and b'"via": "Request"' in answer.body
        assert server.served_fast == 0 and server.delegated == 0
        writer.close()
    finally:
        await server.close()


# -- TLS on uvloop, as the enclave serves -----------------------------------------------------
def _tls_files(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key, _ = write_self_signed(directory, "fastpath.test")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    client.check_hostname = False
    return server, client


def test_over_tls_on_uvloop_the_hand_over_keeps_the_session(tmp_path: Path) -> None:
    server_context, client_context = _tls_files(tmp_path)

    async def scenario() -> list[bytes]:
        served = Served()
        runner = FastPathRunner(make_app(served))
        await runner.setup()
        routes = FastRoutes.of(runner.app, FAST, LIMIT)
        site = FastPathSite(runner, routes, ssl_context=server_context, host="127.0.0.1", port=0)
        await site.start()
        try:
            assert site._server is not None
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
            bodies = []
            for path in ("/fast", "/fast", "/slow", "/fast"):
                writer.write(request(path))
                bodies.append((await read_answer(reader)).body)
            writer.close()
            return bodies
        finally:
            await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        bodies = runner.run(scenario())
    assert [b"FastRequest" in b for b in bodies] == [True, True, False, True]
    assert b'"via": "Request"' in bodies[2]
