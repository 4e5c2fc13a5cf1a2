"""The answers' exact shapes, statuses and headers (aiohttp front end, HTTP/1.1)."""

from __future__ import annotations

import base64
import json
from email.utils import parsedate_to_datetime

import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.attestation.launch import LaunchIdentity
from enclave.attestation.simulated.snp import SimulatedSnp
from enclave.kms.release import release_report_data, unwrap_released
from enclave.pakv.formats import EncryptionKey, canonical_json
from enclave.pakv.http import create_pakv_app
from kms.pakv.client import (
    PublicKeyFetchError,
    SignatureError,
    check_public_keys_answer,
    verify_signed_public_keys,
)
from tests.pakv.conftest import BAD_LAUNCH, GOOD_LAUNCH, Identity
from tests.pakv.helpers import Recorder, make_service, real_now_clock, validator
from verifier.verify import Verifier

PROBLEM = "application/problem+json"


async def attest(
    client: TestClient, snp: SimulatedSnp, launch: LaunchIdentity
) -> tuple[int, dict[str, object], X25519PrivateKey]:
    ephemeral = X25519PrivateKey.generate()
    public = ephemeral.public_key().public_bytes_raw()
    challenge = base64.b64decode(
        (await (await client.post("/v1alpha/attestation:challenge")).json())["challenge"]
    )
    evidence = snp.provider(launch).evidence(release_report_data(public, challenge))
    response = await client.post(
        "/v1alpha/attestation:session",
        json={
            "platform": "sev-snp",
            "evidence": base64.b64encode(evidence.evidence).decode(),
            "certs": [base64.b64encode(c).decode() for c in evidence.certs],
            "publicKey": base64.b64encode(public).decode(),
            "challenge": base64.b64encode(challenge).decode(),
        },
    )
    return response.status, json.loads(await response.read()), ephemeral


@pytest.fixture
async def setup(
    aiohttp_client,
    snp: SimulatedSnp,
    sim_verifier: Verifier,  # type: ignore[no-untyped-def]
    identity: Identity,
):
    clock, audit = real_now_clock(), Recorder()
    service, keys = make_service(sim_verifier, identity, audit, clock)
    client = await aiohttp_client(create_pakv_app(service))
    return client, service, keys, clock, audit


@pytest.mark.parametrize(
    "path", ["/.well-known/protected-auction/v1/public-keys", "/v1alpha/publicKeys"]
)
async def test_public_keys_shape_and_headers(setup, path: str) -> None:  # type: ignore[no-untyped-def]
    client, _, keys, clock, _ = setup
    response = await client.get(path)
    body = await response.read()
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert len(body) < 2048
    document = json.loads(body)
    validator("public-keys.json").validate(document)
    expected = keys.active(clock())
    assert [k["id"] for k in document["keys"]] == [r.key_id for r in expected]
    assert [base64.b64decode(k["key"]) for k in document["keys"]] == [
        r.public_key for r in expected
    ]
    expiries = [r.expiration_ms for r in expected]
    assert expiries == sorted(expiries, reverse=True)  # latest expiry first
    assert parsedate_to_datetime(response.headers["Date"]) == clock()
    latest = max(expiries) // 1000 - int(clock().timestamp())
    assert response.headers["Cache-Control"] == f"max-age={min(latest, 604800)}"
    answer = check_public_keys_answer(200, dict(response.headers), body)
    assert answer.max_age == min(latest, 604800)


async def test_max_age_is_seconds_to_latest_expiry_when_under_a_week(setup) -> None:  # type: ignore[no-untyped-def]
    client, _, keys, clock, _ = setup
    clock.advance(days=3)  # latest expiry is now 5 days away
    response = await client.get("/v1alpha/publicKeys")
    latest = max(r.expiration_ms for r in keys.active(clock())) // 1000
    assert response.headers["Cache-Control"] == f"max-age={latest - int(clock().timestamp())}"
    assert int(response.headers["Cache-Control"].split("=")[1]) < 604800


@pytest.mark.parametrize("drop", ["Date", "Cache-Control"])
def test_client_refuses_an_answer_without_date_or_cache_control(drop: str) -> None:
    headers = {"Date": "Sun, 01 Mar 2026 00:00:00 GMT", "Cache-Control": "max-age=60"}
    del headers[drop]
    body = (
        b'{"keys":[{"id":"4000000000000000","key":"87ey8XZPXAd+/+ytKv2GFUWW5j9zdepSJ2G4gebDwyM="}]}'
    )
    with pytest.raises(PublicKeyFetchError):
        check_public_keys_answer(200, headers, body)


async def test_signed_document_verifies_and_catches_a_swap(setup, identity: Identity) -> None:  # type: ignore[no-untyped-def]
    client, _, _, clock, _ = setup
    plain = await (await client.get("/v1alpha/publicKeys")).read()
    signed_response = await client.get("/.well-known/protected-auction/v1/public-keys.signed")
    document = await signed_response.read()
    validator("public-keys-signed.json").validate(json.loads(document))
    signed = verify_signed_public_keys(document, identity.public, now=clock(), body=plain)
    assert signed.body == plain
    # A host that swaps a key in the plain answer is caught.
    swapped = json.loads(plain)
    swapped["keys"][0]["key"] = base64.b64encode(b"\x01" * 32).decode()
    with pytest.raises(SignatureError):
        verify_signed_public_keys(
            document, identity.public, now=clock(), body=canonical_json(swapped)
        )
    # ... and one that re-signs with its own key, or edits the signed document.
    with pytest.raises(SignatureError):
        verify_signed_public_keys(document, Identity().public, now=clock())
    tampered = json.loads(document)
    tampered["body"] = base64.b64encode(canonical_json(swapped)).decode()
    tampered["keys"] = swapped["keys"]
    with pytest.raises(SignatureError):
        verify_signed_public_keys(json.dumps(tampered).encode(), identity.public, now=clock())


async def test_missing_max_age_is_400_problem(setup) -> None:  # type: ignore[no-untyped-def]
    client, _, _, _, audit = setup
    for query in ("", "?maxAgeSeconds=", "?maxAgeSeconds=-5", "?maxAgeSeconds=abc"):
        response = await client.get("/v1alpha/encryptionKeys:recent" + query)
        assert response.status == 400
        assert response.headers["Content-Type"] == PROBLEM
        problem = await response.json(content_type=PROBLEM)
        assert problem["status"] == 400 and problem["type"].endswith("/bad-request")
    assert [r["outcome"] for r in audit.records] == ["invalid"] * 4


async def test_unauthenticated_is_401(setup) -> None:  # type: ignore[no-untyped-def]
    client, _, keys, _, audit = setup
    key_id = keys.held()[0].key_id
    for path, headers in [
        ("/v1alpha/encryptionKeys:recent?maxAgeSeconds=60", {}),
        (f"/v1alpha/encryptionKeys/{key_id}", {}),
        (f"/v1alpha/encryptionKeys/{key_id}", {"Authorization": "Bearer forged"}),
    ]:
        response = await client.get(path, headers=headers)
        assert response.status == 401
        assert response.headers["Content-Type"] == PROBLEM
        assert "keyMaterial" not in await response.text()
    assert [(r["outcome"], r["status"]) for r in audit.records] == [("denied", 401)] * 3


async def test_fetch_by_id_and_recent_match_the_schema(setup, snp: SimulatedSnp) -> None:  # type: ignore[no-untyped-def]
    client, _service, keys, _, audit = setup
    status, session, ephemeral = await attest(client, snp, GOOD_LAUNCH)
    assert status == 200 and session["tokenType"] == "Bearer"
    auth = {"Authorization": f"Bearer {session['sessionToken']}"}
    recent = await client.get("/v1alpha/encryptionKeys:recent?maxAgeSeconds=3888000", headers=auth)
    assert recent.status == 200
    document = await recent.json()
    validator("encryption-keys.json").validate(document)
    assert len(document["keys"]) == 5
    record = keys.held()[0]
    response = await client.get(f"/v1alpha/encryptionKeys/{record.key_id}", headers=auth)
    assert response.status == 200
    body = await response.json()
    validator("encryption-key.json").validate(body)
    assert body["name"] == f"encryptionKeys/{record.key_id}"
    assert body["encryptionKeyType"] == "SINGLE_PARTY_HYBRID_KEY"
    for name in ("creationTime", "activationTime", "expirationTime"):
        assert isinstance(body[name], str) and body[name].isdigit()
    assert body["expirationTime"] == str(record.expiration_ms)
    (entry,) = body["keyData"]
    assert set(entry) == {"publicKeySignature", "keyEncryptionKeyUri", "keyMaterial"}
    assert entry["keyEncryptionKeyUri"].startswith("enclave-kms://kms-a/hpke/")
    parsed = EncryptionKey.from_json(body)
    material = unwrap_released(base64.b64decode(entry["keyMaterial"]), ephemeral, record.key_id, 1)
    private = X25519PrivateKey.from_private_bytes(material)
    assert private.public_key().public_bytes_raw() == parsed.public_key == record.public_key
    # Unknown id: 404; malformed id: 400.
    assert (
        await client.get("/v1alpha/encryptionKeys/0123456789ABCDEF", headers=auth)
    ).status == 404
    assert (await client.get("/v1alpha/encryptionKeys/nope", headers=auth)).status == 400
    outcomes = [(r["operation"], r["outcome"], r["status"]) for r in audit.records]
    assert ("pakv.keys.get", "invalid", 404) in outcomes
    assert ("pakv.keys.recent", "allowed", 200) in outcomes


async def test_bad_measurement_session_is_403_without_key_material(  # type: ignore[no-untyped-def]
    setup, snp: SimulatedSnp
) -> None:
    client, *_ = setup
    status, problem, _ = await attest(client, snp, BAD_LAUNCH)
    assert status == 403
    assert problem["type"].endswith("/release-policy-denied")
    assert "keyMaterial" not in json.dumps(problem)


async def test_challenge_is_single_use(setup, snp: SimulatedSnp) -> None:  # type: ignore[no-untyped-def]
    client, *_ = setup
    ephemeral = X25519PrivateKey.generate()
    public = ephemeral.public_key().public_bytes_raw()
    challenge = base64.b64decode(
        (await (await client.post("/v1alpha/attestation:challenge")).json())["challenge"]
    )
    evidence = snp.provider(GOOD_LAUNCH).evidence(release_report_data(public, challenge))
    body = {
        "platform": "sev-snp",
        "evidence": base64.b64encode(evidence.evidence).decode(),
        "certs": [base64.b64encode(c).decode() for c in evidence.certs],
        "publicKey": base64.b64encode(public).decode(),
        "challenge": base64.b64encode(challenge).decode(),
    }
    assert (await client.post("/v1alpha/attestation:session", json=body)).status == 200
    replay = await client.post("/v1alpha/attestation:session", json=body)
    assert replay.status == 401
    # Evidence bound to another key than the one presented: 401.
    other = await (await client.post("/v1alpha/attestation:challenge")).json()
    body["challenge"] = other["challenge"]
    assert (await client.post("/v1alpha/attestation:session", json=body)).status == 401


async def test_session_expires(setup, snp: SimulatedSnp) -> None:  # type: ignore[no-untyped-def]
    client, _, _, clock, _ = setup
    _, session, _ = await attest(client, snp, GOOD_LAUNCH)
    auth = {"Authorization": f"Bearer {session['sessionToken']}"}
    clock.advance(minutes=6)
    response = await client.get("/v1alpha/encryptionKeys:recent?maxAgeSeconds=60", headers=auth)
    assert response.status == 401


async def test_wrong_method_and_unknown_path(setup) -> None:  # type: ignore[no-untyped-def]
    client, *_ = setup
    assert (await client.post("/v1alpha/publicKeys")).status == 405
    assert (await client.get("/v1alpha/nothing")).status == 404
