"""The K/V key service end to end against a real ``kms-sim up`` (subprocesses, real proxy).

A browser-like client fetches the public keys over HTTPS through the host proxy (the
enclave's attested TLS, pinned after ``kms attest``), checks ``Date``, ``Cache-Control``
and the KMS identity signature, and encrypts a K/V request (OHTTP, K/V labels). A simulated
attested K/V server (evidence from the sim's own fake AMD-SP in ``STATE/hw``, for the
launch that ``launch.json``'s ``pakv.release_policy`` names) fetches its private keys over
HTTP/2, h2 over TLS and h2c, decrypts the request and encrypts the response, which the
client decrypts. A server of another measurement gets 403 and no key material. Every
answer is checked against ``schemas/pakv`` and every fetch against the audit log on disk.
"""

from __future__ import annotations

import base64
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.attestation.launch import LaunchIdentity
from enclave.kms.release import release_report_data
from enclave.pakv.formats import (
    CHALLENGE_PATH,
    RECENT_KEYS_PATH,
    SESSION_PATH,
    SIGNED_PUBLIC_KEYS_PATH,
    SignedPublicKeys,
    parse_encryption_keys,
)
from kms.client import AsyncKmsClient
from kms.pakv.client import (
    check_public_keys_answer,
    choose_key,
    encrypt_request,
    verify_signed_public_keys,
)
from kms.pakv.server import KeyFetchError, KmsEndpoint, PakvKeyFetcher, pinned_tls_context
from kms.pakv.simulated import SIM_KV_SERVER, kv_server_evidence_provider, other_kv_server
from kms.profile import Profile
from tests.pakv.helpers import validator

BIN = Path(sys.executable).parent
KV_REQUEST = b'{"metadata":{"hostname":"example.com"},"partitions":[{"id":0,"arguments":[]}]}'
KV_RESPONSE = b'{"compressionGroups":[{"compressionGroupId":0,"content":"cafe"}]}'
WEEK = 604_800
WINDOW = str(45 * 86_400)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Sim:
    state: Path
    url: str
    pakv: dict[str, Any]


def _ready(process: subprocess.Popen[str], timeout: float = 120.0) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([process.stdout], [], [], 1.0)[0]:
            line = process.stdout.readline()
            if line.startswith("ready "):
                return line.removeprefix("ready ").strip()
            if not line and process.poll() is not None:
                break
    stderr = process.stderr.read() if process.stderr and process.poll() is not None else ""
    raise AssertionError(f"kms-sim did not get ready: {stderr}")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    state = tmp_path_factory.mktemp("pakv-sim") / "state"
    process = subprocess.Popen(
        [str(BIN / "kms-sim"), "up", "--state", str(state), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = _ready(process)
        yield Sim(state, url, json.loads((state / "pakv.json").read_text()))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()


@dataclass(frozen=True)
class Attested:
    certificate_der: bytes
    fingerprint: bytes


@pytest.fixture
async def attested(sim: Sim) -> Attested:
    """``kms attest`` through the host proxy: the enclave's TLS certificate, proven."""
    async with AsyncKmsClient(Profile.load(sim.state / "client.toml")) as client:
        result = await client.attest()
    return Attested(result.certificate_der, result.certificate_sha256)


@pytest.fixture
async def https(attested: Attested) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=aiohttp.Fingerprint(attested.fingerprint))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def audit_records(state: Path) -> list[dict[str, Any]]:
    lines = (state / "audit" / "audit.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def signed_document(sim: Sim, https: aiohttp.ClientSession) -> SignedPublicKeys:
    async with https.get(sim.url + SIGNED_PUBLIC_KEYS_PATH) as response:
        assert response.status == 200
        document = await response.read()
    validator("public-keys-signed.json").validate(json.loads(document))
    return SignedPublicKeys.from_body(document)


async def test_ready_means_a_non_empty_key_set_on_the_sims_own_url(sim: Sim) -> None:
    assert sim.pakv["public_keys"] == sim.url + "/.well-known/protected-auction/v1/public-keys"
    assert sim.pakv["h2"].startswith("https://127.0.0.1:")
    assert sim.pakv["h2c"].startswith("http://127.0.0.1:")
    launch = json.loads((sim.state / "launch.json").read_text())
    assert launch["pakv"]["release_policy"] == sim.pakv["release_policy"]
    assert launch["pakv"]["release_policy"]["measurements"][0]["value"] == (
        SIM_KV_SERVER.measurement.hex()
    )
    # Public: no token, no attestation needed to read it (a browser just GETs it).
    async with aiohttp.ClientSession() as session:
        for path in ("/.well-known/protected-auction/v1/public-keys", "/v1alpha/publicKeys"):
            async with session.get(sim.url + path, ssl=False) as response:
                assert response.status == 200
                body = await response.read()
                validator("public-keys.json").validate(json.loads(body))
                assert len(json.loads(body)["keys"]) >= 1
    rotations = [r for r in audit_records(sim.state) if r["operation"] == "pakv.rotation"]
    assert rotations and len(rotations[0]["details"]["created"]) == 5


async def test_public_keys_ohttp_and_attested_h2_and_h2c_fetch(
    sim: Sim, attested: Attested, https: aiohttp.ClientSession
) -> None:
    audit_before = len(audit_records(sim.state))

    # 1. The client: public keys over HTTPS, headers and the identity signature.
    async with https.get(sim.pakv["public_keys"]) as response:
        body = await response.read()
        answer = check_public_keys_answer(response.status, dict(response.headers), body)
        cache_control = response.headers["Cache-Control"]
    validator("public-keys.json").validate(json.loads(body))
    async with https.get(sim.pakv["public_keys_alias"]) as response:
        assert await response.read() == body
    signed = await signed_document(sim, https)
    verify_signed_public_keys(
        json.dumps(signed.to_json()).encode(),
        signed.signing_key,
        now=datetime.now(UTC),
        body=body,
    )
    assert signed.certificate is not None  # the KMS identity certificate names the key
    assert abs((answer.date - datetime.now(UTC)).total_seconds()) < 60

    # 2. It encrypts a K/V request to one of the keys (OHTTP, the K/V labels).
    key = choose_key(answer.keys)
    encapsulated, client_context = encrypt_request(key, KV_REQUEST)

    # 3. The attested K/V server fetches its private keys over HTTP/2, h2 and h2c.
    provider = kv_server_evidence_provider(sim.state)
    for base, tls in ((sim.pakv["h2"], True), (sim.pakv["h2c"], False)):
        endpoint = KmsEndpoint(
            base,
            signed.kms_id,
            signed.signing_key,  # publicKeySignature checked against the identity key
            pinned_tls_context(attested.certificate_der) if tls else None,
        )
        fetcher = PakvKeyFetcher([endpoint], provider)
        fetched = await fetcher.refresh()
        assert fetcher.last_transports == ["HTTP/2"], base
        assert {k.id for k in answer.keys.keys} <= {k.key_id for k in fetched}
        request, server_context = fetcher.decrypt_request(encapsulated)
        assert request == KV_REQUEST
        reply = server_context.encapsulate_response(KV_RESPONSE)
        assert client_context.decapsulate_response(reply) == KV_RESPONSE
        # by id as well
        document, material = await fetcher.fetch_key(endpoint, key.id)
        validator("encryption-key.json").validate(document.to_json())
        private = X25519PrivateKey.from_private_bytes(material)
        assert private.public_key().public_bytes_raw() == key.key

    # Cache-Control: max-age = min(seconds to the latest expiry, one week).
    latest_ms = max(k.expiration_ms for k in fetched)
    expected = min((latest_ms - int(answer.date.timestamp() * 1000)) // 1000, WEEK)
    assert abs(answer.max_age - expected) <= 1 and cache_control == f"max-age={answer.max_age}"

    # 4. Every fetch is in the audit log on disk, with the attested server as principal.
    records = audit_records(sim.state)[audit_before:]
    operations = [(r["operation"], r["outcome"]) for r in records]
    assert operations.count(("pakv.public_keys", "allowed")) == 2
    assert operations.count(("pakv.public_keys.signed", "allowed")) == 1
    assert operations.count(("pakv.attest", "allowed")) == 4
    assert operations.count(("pakv.keys.recent", "allowed")) == 2
    assert operations.count(("pakv.keys.get", "allowed")) == 2
    principal = f"pakv-server:sev-snp:{SIM_KV_SERVER.measurement.hex()[:32]}"
    released = [r for r in records if r["operation"].startswith("pakv.keys.")]
    assert all(r["principal"] == principal for r in released)
    served = [r for r in records if r["operation"].startswith("pakv.") and r["status"]]
    assert served and all(r["details"]["kms_id"] == signed.kms_id for r in served)


async def _session(
    client: httpx.AsyncClient, launch: LaunchIdentity, state: Path
) -> tuple[httpx.Response, X25519PrivateKey]:
    """The attestation hand-off done by hand, to see the raw answers."""
    challenge_answer = await client.post(CHALLENGE_PATH)
    assert challenge_answer.http_version == "HTTP/2"
    validator("attestation-challenge.json").validate(challenge_answer.json())
    challenge = base64.b64decode(challenge_answer.json()["challenge"])
    ephemeral = X25519PrivateKey.generate()
    public = ephemeral.public_key().public_bytes_raw()
    evidence = kv_server_evidence_provider(state, launch=launch).evidence(
        release_report_data(public, challenge)
    )
    body = {
        "platform": evidence.platform,
        "evidence": base64.b64encode(evidence.evidence).decode(),
        "certs": [base64.b64encode(c).decode() for c in evidence.certs],
        "collateral": [base64.b64encode(c).decode() for c in evidence.collateral],
        "publicKey": base64.b64encode(public).decode(),
        "challenge": base64.b64encode(challenge).decode(),
    }
    return await client.post(SESSION_PATH, json=body), ephemeral


async def test_raw_h2c_answers_match_the_schemas(sim: Sim) -> None:
    async with httpx.AsyncClient(base_url=sim.pakv["h2c"], http1=False, http2=True) as client:
        session, _ = await _session(client, SIM_KV_SERVER, sim.state)
        assert session.status_code == 200, session.text
        validator("attestation-session.json").validate(session.json())
        token = session.json()["sessionToken"]
        recent = await client.get(
            RECENT_KEYS_PATH,
            params={"maxAgeSeconds": WINDOW},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert recent.status_code == 200 and recent.http_version == "HTTP/2"
        assert recent.headers["cache-control"] == "no-store"
        validator("encryption-keys.json").validate(recent.json())
        assert len(parse_encryption_keys(recent.content)) >= 5
        missing = await client.get(RECENT_KEYS_PATH, headers={"Authorization": f"Bearer {token}"})
        assert missing.status_code == 400
        validator("problem.json").validate(missing.json())


async def test_a_server_outside_the_release_policy_gets_403_and_no_key_material(
    sim: Sim, attested: Attested
) -> None:
    audit_before = len(audit_records(sim.state))
    intruder = other_kv_server()
    # Through the fetcher, over h2 with TLS ...
    endpoint = KmsEndpoint(
        sim.pakv["h2"], "kms", None, pinned_tls_context(attested.certificate_der)
    )
    fetcher = PakvKeyFetcher([endpoint], kv_server_evidence_provider(sim.state, launch=intruder))
    with pytest.raises(KeyFetchError) as refused:
        await fetcher.refresh()
    assert refused.value.status == 403
    assert refused.value.problem == "https://enclave-kms.dev/problems/release-policy-denied"
    assert fetcher.keys == {}
    # ... and by hand over h2c: the raw refusal carries no key material.
    async with httpx.AsyncClient(base_url=sim.pakv["h2c"], http1=False, http2=True) as client:
        answer, _ = await _session(client, intruder, sim.state)
        assert answer.status_code == 403
        assert answer.headers["content-type"] == "application/problem+json"
        validator("problem.json").validate(answer.json())
        assert "measurement" in " ".join(answer.json()["mismatches"])
        assert "keyMaterial" not in answer.text and "sessionToken" not in answer.text
        anonymous = await client.get(RECENT_KEYS_PATH, params={"maxAgeSeconds": WINDOW})
        assert anonymous.status_code == 401 and "keyMaterial" not in anonymous.text
        validator("problem.json").validate(anonymous.json())
    records = audit_records(sim.state)[audit_before:]
    denied = [(r["operation"], r["status"]) for r in records if r["outcome"] == "denied"]
    assert denied == [("pakv.attest", 403), ("pakv.attest", 403), ("pakv.keys.recent", 401)]
    assert not [r for r in records if r["outcome"] == "allowed" and "keys." in r["operation"]]


def test_http_date_and_max_age_header_forms(sim: Sim) -> None:
    """The headers as a plain HTTP client sees them (no aiohttp parsing in between)."""
    out = subprocess.run(
        ["curl", "-sk", "-D-", "-o", "/dev/null", sim.pakv["public_keys"]],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        pytest.skip("curl is not available")
    headers = dict(line.split(": ", 1) for line in out.stdout.splitlines()[1:] if ": " in line)
    assert parsedate_to_datetime(headers["Date"]).tzinfo is not None
    assert headers["Cache-Control"].startswith("max-age=")
    assert 0 < int(headers["Cache-Control"].removeprefix("max-age=")) <= WEEK
