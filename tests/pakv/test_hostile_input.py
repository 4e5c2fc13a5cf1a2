"""Hostile input to the K/V key service: a clear 4xx, audited, never a 5xx or a crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from enclave.pakv.formats import EncryptionKey, FormatError, parse_encryption_keys
from enclave.pakv.http import create_pakv_app
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
