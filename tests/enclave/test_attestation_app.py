"""The enclave app: /v1/attestation, health, and problem+json for every error."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from enclave.app import REQUEST_LOG, TLS_IDENTITY, create_app
from enclave.attestation.evidence import attested_tls_report_data
from enclave.config import ConfigError, EnclaveConfig, ListenAddress
from enclave.tls import BOOT_EVIDENCE_OID, decode_boot_evidence
from simulator.testing import SimulatedLaunch
from verifier.roots import TrustRoots
from verifier.verify import Verifier

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> SimulatedLaunch:
    return SimulatedLaunch.prepare(tmp_path_factory.mktemp("state"))


@pytest.fixture
async def client(
    launch: SimulatedLaunch, aiohttp_client: Callable[..., Any]
) -> TestClient[web.Request, web.Application]:
    config = EnclaveConfig.create(
        platform="sev-snp", state_dir=launch.state, listen="tcp:127.0.0.1:0"
    )
    return await aiohttp_client(create_app(config))  # type: ignore[no-any-return]


async def test_fresh_evidence_is_bound_to_tls_key_and_nonce(
    launch: SimulatedLaunch, client: TestClient[web.Request, web.Application]
) -> None:
    import base64

    nonce = bytes(range(32))
    response = await client.get(f"/v1/attestation?nonce={nonce.hex()}")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"platform", "evidence", "certs", "collateral", "nonce"}
    assert body["nonce"] == nonce.hex() and body["platform"] == "sev-snp"
    roots = TrustRoots.from_pem({"sev-snp": launch.roots_pem}, simulated=True, label="t")
    claims = Verifier(roots).verify(
        "sev-snp",
        base64.b64decode(body["evidence"]),
        at=datetime.datetime.now(datetime.UTC),
        certs=[base64.b64decode(c) for c in body["certs"]],
    )
    identity = client.app[TLS_IDENTITY]
    assert claims.report_data == attested_tls_report_data(identity.spki_der, nonce)
    assert claims.measurement == launch.measurement


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?nonce=",
        "?nonce=" + "ab" * 31,
        "?nonce=" + "ab" * 33,
        "?nonce=" + "zz" * 32,
        "?nonce=" + "ab" * 31 + "%20a",
        "?nonce=" + "ab" * 32 + "&nonce=" + "cd" * 32,
        "?nonce=0x" + "ab" * 31,
    ],
    ids=["missing", "empty", "short", "long", "not-hex", "space", "twice", "0x-prefix"],
)
async def test_bad_nonce_is_400_problem(
    client: TestClient[web.Request, web.Application], query: str
) -> None:
    response = await client.get("/v1/attestation" + query)
    assert response.status == 400
    assert response.content_type == PROBLEM
    problem = await response.json()
    assert problem["type"].endswith("/invalid-nonce") and problem["status"] == 400


async def test_unknown_route_and_method_are_problems(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/nope")
    assert response.status == 404 and response.content_type == PROBLEM
    assert (await response.json())["type"].endswith("/not-found")
    response = await client.post("/v1/attestation")
    assert response.status == 405 and response.content_type == PROBLEM
    assert "GET" in response.headers["Allow"]


async def test_health_and_readiness(client: TestClient[web.Request, web.Application]) -> None:
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["status"] == "ready"
    assert client.app[REQUEST_LOG].paths() == ["/healthz", "/readyz"]


def test_boot_certificate_extension(launch: SimulatedLaunch) -> None:
    from cryptography import x509

    from enclave.attestation.providers import launch as open_launch
    from enclave.tls import create_identity

    config = EnclaveConfig.create(platform="sev-snp", state_dir=launch.state, listen="tcp:h:1")
    identity = create_identity(open_launch(config).provider)
    assert "_private_key" not in repr(identity)
    cert = x509.load_der_x509_certificate(identity.certificate_der)
    assert cert.extensions.get_extension_for_oid(BOOT_EVIDENCE_OID).critical is False
    assert BOOT_EVIDENCE_OID.dotted_string.startswith("2.25.")
    boot = decode_boot_evidence(identity.certificate_der)
    assert boot.platform == "sev-snp" and boot.evidence == identity.boot_evidence.evidence
    identity.server_context()  # loads from memory, no file


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/kms.sock", "unix:/run/kms.sock"),
        ("vsock:3:5000", "vsock:3:5000"),
        ("vsock:any:5000", "vsock:4294967295:5000"),
        ("tcp:127.0.0.1:8443", "tcp:127.0.0.1:8443"),
        ("tcp:[::1]:8443", "tcp:[::1]:8443"),
    ],
)
def test_listen_addresses(text: str, expected: str) -> None:
    assert str(ListenAddress.parse(text)) == expected


@pytest.mark.parametrize(
    "text", ["", "unix:", "vsock:3", "vsock:x:1", "vsock:3:0", "tcp:1", "tcp:h:99999", "udp:h:1",
             "unix:/" + "x" * 200],
)  # fmt: skip
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError):
        ListenAddress.parse(text)


def test_hardware_mode_fails_closed(tmp_path: Path, launch: SimulatedLaunch) -> None:
    from enclave.attestation.providers import ProviderError
    from enclave.attestation.providers import launch as open_launch

    config = EnclaveConfig.create(platform="sev-snp", state_dir=launch.state,
                                  listen="tcp:h:1", attestation="hardware")  # fmt: skip
    with pytest.raises(ProviderError):
        open_launch(config)
