"""Hostile input to the K/V key service: a clear 4xx, audited, never a 5xx or a crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from enclave.pakv.formats import EncryptionKey, FormatError, parse_encryption_keys
from enclave.pakv.h2server import H2Limits, H2Server
from enclave.pakv.http import create_pakv_app
from enclave.pakv.service import PakvRequest, PakvServiceConfig
from tests.pakv.conftest import Identity
from tests.pakv.helpers import Recorder, make_service, real_now_clock
from verifier.verify import Verifier

PROBLEM = "application/problem+json"


@pytest.fixture
async def setup(aiohttp_client, sim_verifier: Verifier, identity: Identity):  # type: ignore[no-untyped-def]
    clock, audit = real_now_clock(), Recorder()
    service, _ = make_service(sim_verifier, identity, audit, clock)
    client = await aiohttp_client(create_pakv_app(service))
    return client, service, audit


# superscript two, circled one (int() refuses them: was a 500), Arabic-Indic three (int()
# reads 3): all digits to str.isdigit(), none is the ASCII integer the parameter is
@pytest.mark.parametrize("digits", ["%C2%B2", "%E2%91%A0", "%D9%A3"])
async def test_max_age_in_non_ascii_digits_is_400(setup, digits: str) -> None:  # type: ignore[no-untyped-def]
    client, _, audit = setup
    response = await client.get("/v1alpha/encryptionKeys:recent?maxAgeSeconds=" + digits)
    assert response.status == 400
    assert response.headers["Content-Type"] == PROBLEM
    assert [(r["operation"], r["outcome"]) for r in audit.records] == [
        ("pakv.keys.recent", "invalid")
    ]


def test_millis_in_non_ascii_digits_is_a_format_error() -> None:
    document = {
        "name": "encryptionKeys/4000000000000000",
        "encryptionKeyType": "SINGLE_PARTY_HYBRID_KEY",
        "publicKeysetHandle": "{}",
        "publicKeyMaterial": "87ey8XZPXAd+/+ytKv2GFUWW5j9zdepSJ2G4gebDwyM=",
        "creationTime": "\u00b2",
        "activationTime": "0",
        "expirationTime": "0",
        "keyData": [{"publicKeySignature": "", "keyEncryptionKeyUri": "", "keyMaterial": ""}],
    }
    with pytest.raises(FormatError):
        EncryptionKey.from_json(document)


NESTED = b"[" * 100_000 + b"]" * 100_000  # under the size limit, deeper than json's recursion


async def test_session_body_nested_too_deep_is_400(setup) -> None:  # type: ignore[no-untyped-def]
    client, _, audit = setup
    response = await client.post("/v1alpha/attestation:session", data=NESTED)
    assert response.status == 400
    assert response.headers["Content-Type"] == PROBLEM
    assert [(r["operation"], r["outcome"]) for r in audit.records] == [("pakv.attest", "invalid")]


def test_a_key_list_nested_too_deep_is_a_format_error() -> None:
    with pytest.raises(FormatError):
        parse_encryption_keys(b'{"keys":' + NESTED + b"}")


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
        await asyncio.sleep(0.05)  # each piece arrives on its own


async def test_a_body_in_pieces_is_read_whole(setup) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = setup
    response = await client.post(
        "/v1alpha/attestation:session", data=_pieces(b'{"platform":', b'"none"}')
    )
    problem = await response.json(content_type=PROBLEM)
    assert response.status == 400
    assert problem["detail"].startswith("platform is one of")  # not "the body is not JSON"


async def test_a_body_over_the_limit_in_pieces_is_413(setup) -> None:  # type: ignore[no-untyped-def]
    client, service, _ = setup
    piece = b" " * (service.config.max_request_bytes // 4)
    response = await client.post("/v1alpha/attestation:session", data=_pieces(*[piece] * 5))
    assert response.status == 413
    assert response.headers["Content-Type"] == PROBLEM


async def test_a_body_that_does_not_decode_is_400(setup) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = setup
    response = await client.post(
        "/v1alpha/attestation:session", data=b"{}", headers={"Content-Encoding": "gzip"}
    )
    assert response.status == 400
    assert response.headers["Content-Type"] == PROBLEM


async def test_a_body_never_finished_is_408_not_a_connection_held(  # type: ignore[no-untyped-def]
    aiohttp_client, sim_verifier: Verifier, identity: Identity
) -> None:
    config = PakvServiceConfig(body_read_seconds=0.3)
    service, _ = make_service(sim_verifier, identity, Recorder(), real_now_clock(),
                              config=config)  # fmt: skip
    client = await aiohttp_client(create_pakv_app(service))

    async def never_ends() -> AsyncIterator[bytes]:
        yield b"{"
        await asyncio.sleep(30)

    async with asyncio.timeout(10):
        response = await client.post("/v1alpha/attestation:session", data=never_ends())
    assert response.status == 408
    assert response.headers["Content-Type"] == PROBLEM


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
# HEADERS on stream 1, END_HEADERS without END_STREAM (a body is to follow), HPACK:
# :method POST, :scheme http, :path /, :authority x (indexed and literal fields).
OPEN_STREAM = b"\x00\x00\x07\x01\x04\x00\x00\x00\x01" + b"\x83\x86\x84\x41\x01x"


async def _closed_within(port: int, sent: bytes, seconds: float) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


@pytest.mark.parametrize(
    "sent",
    [PREFACE[:10], PREFACE, PREFACE + EMPTY_SETTINGS, PREFACE + EMPTY_SETTINGS + OPEN_STREAM],
    ids=["half-preface", "preface", "idle", "body-pending"],
)
async def test_h2c_connection_left_half_open_is_closed(
    sim_verifier: Verifier, identity: Identity, sent: bytes
) -> None:
    service, _ = make_service(sim_verifier, identity, Recorder(), real_now_clock())
    limits = H2Limits(keep_alive_timeout=1.0, read_timeout=1)
    async with H2Server(service, limits=limits) as server:
        assert await _closed_within(server.port, sent, 4.0)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "operation", "outcome"),
    [
        ("DELETE", "/v1alpha/publicKeys", b"", 405, "pakv.request", "invalid"),
        ("GET", "/v1alpha/nothing", b"", 404, "pakv.request", "invalid"),
        ("GET", "/v1alpha/../etc/passwd", b"", 404, "pakv.request", "invalid"),
        ("POST", "/v1alpha/attestation:session", b" " * (512 * 1024 + 1), 413, "pakv.request",
         "invalid"),
        ("POST", "/v1alpha/attestation:challenge", b"", 200, "pakv.challenge", "allowed"),
        ("GET", "/v1alpha/encryptionKeys/zz", b"", 400, "pakv.keys.get", "invalid"),
    ],
)  # fmt: skip
async def test_every_answer_of_the_h2_front_end_is_audited_once(
    sim_verifier: Verifier,
    identity: Identity,
    method: str,
    path: str,
    body: bytes,
    status: int,
    operation: str,
    outcome: str,
) -> None:
    """What the service answers is all the HTTP/2 front end answers: it has no audit
    middleware, so refusals made before a handler ran must be recorded by the service."""
    audit = Recorder()
    service, _ = make_service(sim_verifier, identity, audit, real_now_clock())
    answer = await service.handle(PakvRequest(method, path, body=body, transport="http/2"))
    assert answer.status == status
    assert [(r["operation"], r["outcome"], r["status"]) for r in audit.records] == [
        (operation, outcome, status)
    ]
