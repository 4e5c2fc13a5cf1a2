"""Retries, backoff and failover of the client, against the real enclave app."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from aiohttp import web

from kms.client import AsyncKmsClient
from kms.errors import AllEndpointsFailed, ServerError, TransportError
from kms.retry import RetryPolicy, is_idempotent, parse_retry_after
from simulator.testing import InProcessEnclave, SimulatedLaunch

# -- pure decisions -----------------------------------------------------------------------


@pytest.mark.parametrize("retry", [1, 2, 3, 4, 10])
def test_backoff_is_full_jitter_under_an_exponential_cap(retry: int) -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    ceiling = min(1.0, 0.1 * 2 ** (retry - 1))
    rng = random.Random(7)
    waits = [policy.backoff(retry, rng) for _ in range(200)]
    assert all(0 <= w <= ceiling for w in waits)
    assert max(waits) > ceiling * 0.8  # jitter spreads over the whole window


def test_retry_after_is_respected_but_capped() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0, max_retry_after=10.0)
    assert policy.delay(1, 3.0, random.Random(1)) == 3.0
    assert policy.delay(1, 3600.0, random.Random(1)) == 10.0


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None


def test_idempotent_methods() -> None:
    assert is_idempotent("GET") and is_idempotent("put") and is_idempotent("DELETE")
    assert not is_idempotent("POST") and not is_idempotent("PATCH")


# -- against the enclave --------------------------------------------------------------------


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> SimulatedLaunch:
    return SimulatedLaunch.prepare(tmp_path_factory.mktemp("state"))


def _flaky_routes(failures: dict[str, list[int]]) -> list[web.RouteDef]:
    async def flaky(request: web.Request) -> web.Response:
        queue = failures[request.match_info["name"]]
        if queue:
            status = queue.pop(0)
            if status == 0:  # drop the connection without answering
                assert request.transport is not None
                request.transport.close()
                raise web.HTTPInternalServerError()
            headers = {"Retry-After": "2"} if status == 429 else {}
            return web.json_response({"type": "x"}, status=status, headers=headers)
        return web.json_response({"ok": True})

    return [web.get("/test/{name}", flaky), web.post("/test/{name}", flaky)]


@pytest.fixture
async def flaky(
    launch: SimulatedLaunch, tmp_path: Path
) -> AsyncIterator[tuple[InProcessEnclave, dict[str, list[int]]]]:
    failures: dict[str, list[int]] = {}
    enclave = InProcessEnclave(launch, tmp_path / "e.sock", extra_routes=_flaky_routes(failures))
    async with enclave:
        yield enclave, failures


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_503_then_200_is_retried(
    launch: SimulatedLaunch, flaky: tuple[InProcessEnclave, dict[str, list[int]]]
) -> None:
    enclave, failures = flaky
    failures["a"] = [503, 503]
    sleeps = Sleeps()
    async with AsyncKmsClient(launch.profile([enclave.url]), sleep=sleeps) as client:
        assert await client.get("/test/a") == {"ok": True}
    assert len(sleeps.waits) == 2
    assert enclave.request_log.paths() == ["/v1/attestation"] + ["/test/a"] * 3


async def test_429_waits_for_retry_after(
    launch: SimulatedLaunch, flaky: tuple[InProcessEnclave, dict[str, list[int]]]
) -> None:
    enclave, failures = flaky
    failures["b"] = [429]
    sleeps = Sleeps()
    async with AsyncKmsClient(launch.profile([enclave.url]), sleep=sleeps) as client:
        assert await client.get("/test/b") == {"ok": True}
    assert sleeps.waits and sleeps.waits[0] >= 2.0


async def test_non_idempotent_post_is_not_retried_after_delivery(
    launch: SimulatedLaunch, flaky: tuple[InProcessEnclave, dict[str, list[int]]]
) -> None:
    enclave, failures = flaky
    failures["c"] = [503]
    async with AsyncKmsClient(launch.profile([enclave.url]), sleep=Sleeps()) as client:
        with pytest.raises(ServerError) as error:
            await client.post("/test/c", {"x": 1})
    assert error.value.status == 503
    assert enclave.request_log.paths().count("/test/c") == 1


async def test_connection_loss_is_retried_for_idempotent_requests(
    launch: SimulatedLaunch, flaky: tuple[InProcessEnclave, dict[str, list[int]]]
) -> None:
    enclave, failures = flaky
    failures["d"] = [0]
    async with AsyncKmsClient(launch.profile([enclave.url]), sleep=Sleeps()) as client:
        assert await client.get("/test/d") == {"ok": True}
        with pytest.raises(TransportError):
            failures["e"] = [0]
            await client.post("/test/e", {})


async def test_retries_give_up_after_max_attempts(
    launch: SimulatedLaunch, flaky: tuple[InProcessEnclave, dict[str, list[int]]]
) -> None:
    enclave, failures = flaky
    failures["f"] = [503] * 10
    async with AsyncKmsClient(launch.profile([enclave.url]), sleep=Sleeps()) as client:
        with pytest.raises(ServerError) as error:
            await client.get("/test/f")
    assert error.value.status == 503
    assert enclave.request_log.paths().count("/test/f") == 4  # RetryPolicy.max_attempts


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"https://127.0.0.1:{port}"


async def test_fails_over_to_the_next_endpoint_after_attesting_it(
    launch: SimulatedLaunch, flaky: tuple[InProcessEnclave, dict[str, list[int]]]
) -> None:
    enclave, _ = flaky
    dead = _dead_url()
    async with AsyncKmsClient(launch.profile([dead, enclave.url]), sleep=Sleeps()) as client:
        assert await client.get("/healthz") == {"status": "ok"}
        assert client.endpoint == enclave.url
        attested = client.attested(enclave.url)
        assert attested is not None and attested.measurement == launch.measurement.hex()
    assert enclave.request_log.paths() == ["/v1/attestation", "/healthz"]


async def test_all_endpoints_dead(launch: SimulatedLaunch) -> None:
    async with AsyncKmsClient(launch.profile([_dead_url(), _dead_url()]), sleep=Sleeps()) as client:
        with pytest.raises(AllEndpointsFailed):
            await client.attest()


async def test_an_endpoint_closing_during_the_handshake_is_named(launch: SimulatedLaunch) -> None:
    # Accepts, then closes at once: ssl raises with no message, and the reason must still say
    # what happened (it used to read "cannot connect: ").
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)  # the ClientHello
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with AsyncKmsClient(launch.profile([url]), sleep=Sleeps()) as client:
            with pytest.raises(TransportError) as refused:
                await client.attest()
    finally:
        server.close()
        await server.wait_closed()
    assert refused.value.detail.startswith("cannot connect: ")
    assert "closed the connection during the TLS handshake" in refused.value.detail
