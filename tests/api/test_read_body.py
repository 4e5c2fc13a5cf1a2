"""``read_body``: a body that does not arrive in time is refused (408), not waited for."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestServer

from enclave.api.errors import problem_for
from enclave.api.models import BadInput
from enclave.api.routes import read_body


async def _echo(request: web.Request) -> web.Response:
    try:
        body = await read_body(request, 1024, seconds=0.2)
    except BadInput as refused:
        return web.Response(status=refused.status, text=refused.slug)
    return web.Response(body=body)


async def _exchange(head_and_body: bytes) -> bytes:
    app = web.Application()
    app.router.add_post("/echo", _echo)
    server = TestServer(app)
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(head_and_body)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        return answer
    finally:
        await server.close()


CHUNKED = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"


async def test_a_chunked_body_never_finished_is_refused_408() -> None:
    answer = await _exchange(CHUNKED + b"5\r\nabcde\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_a_chunked_body_never_started_is_refused_408() -> None:
    assert (await _exchange(CHUNKED)).startswith(b"HTTP/1.1 408 ")


async def test_a_body_received_in_time_is_read() -> None:
    answer = await _exchange(CHUNKED + b"5\r\nabcde\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")


def test_the_api_answers_a_body_timeout_as_a_408_problem() -> None:
    problem = problem_for(BadInput("late", slug="request-timeout", status=408))
    assert (problem.status, problem.slug) == (408, "request-timeout")
