"""The whole K/V key path on loopback: HTTPS public keys with a signature, OHTTP request,
a simulated attested K/V server fetching private keys over HTTP/2 (h2 over TLS and h2c),
decrypting the request and encrypting the response; refusals; the audit trail."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.attestation.simulated.snp import SimulatedSnp
from enclave.audit.log import AuditLog
from enclave.pakv.formats import MULTI_PARTY, SINGLE_PARTY, EncryptionKey
from enclave.pakv.h2server import H2Server
from enclave.pakv.http import create_pakv_app
from enclave.pakv.keyset import SplitConfig
from enclave.pakv.service import PakvService
from kms.pakv.client import choose_key, encrypt_request, fetch_public_keys
from kms.pakv.server import KeyFetchError, KmsEndpoint, PakvKeyFetcher
from tests.pakv.conftest import BAD_LAUNCH, GOOD_LAUNCH, Identity, Tls, audit_records
from tests.pakv.helpers import Recorder, make_service, real_now_clock, validator
from verifier.verify import Verifier

KV_REQUEST = b'{"metadata":{"hostname":"example.com"},"partitions":[{"id":0}]}'
KV_RESPONSE = b'{"compressionGroups":[{"compressionGroupId":0,"content":"..."}]}'


@asynccontextmanager
async def https_server(service: PakvService, tls: Tls) -> AsyncIterator[str]:
    runner = web.AppRunner(create_pakv_app(service))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_public_keys_over_https_then_ohttp_and_attested_fetch_over_h2(
    snp: SimulatedSnp, sim_verifier: Verifier, identity: Identity, tls: Tls, audit_log: AuditLog
) -> None:
    clock = real_now_clock()
    service, keys = make_service(sim_verifier, identity, audit_log.record, clock)

    # 1. A client fetches the public keys over HTTPS and checks headers and signature.
    async with https_server(service, tls) as url, aiohttp.ClientSession() as session:
        answer = await fetch_public_keys(
            session, url, identity_public_key=identity.public, ssl_context=tls.client, now=clock()
        )
        async with session.get(url + "/v1alpha/publicKeys", ssl=tls.client) as alias:
            assert await alias.read() == answer.body
    validator("public-keys.json").validate(json.loads(answer.body))
    assert [k.id for k in answer.keys.keys] == [r.key_id for r in keys.active(clock())]
    assert answer.max_age == 8 * 86_400 - 86_400 or answer.max_age == 604_800

    # 2. It encrypts a K/V request to one of them.
    key = choose_key(answer.keys)
    encapsulated, context = encrypt_request(key, KV_REQUEST)
    assert encapsulated[0] == int(key.id[:2], 16)

    # 3. An attested K/V server fetches its private keys over HTTP/2, both h2 and h2c.
    async with H2Server(service, ssl_context=tls.server) as h2, H2Server(service) as h2c:
        for base in (f"https://127.0.0.1:{h2.port}", f"http://127.0.0.1:{h2c.port}"):
            endpoint = KmsEndpoint(base, "kms-a", identity.public, tls.client)
            fetcher = PakvKeyFetcher([endpoint], snp.provider(GOOD_LAUNCH))
            fetched = await fetcher.refresh()
            assert fetcher.last_transports == ["HTTP/2"]
            assert {k.key_id for k in fetched} == {r.key_id for r in keys.held()}
            request, server_context = fetcher.decrypt_request(encapsulated)
            assert request == KV_REQUEST
            # 4. ... and answers; only the client that asked can read the answer.
            assert (
                context.decapsulate_response(server_context.encapsulate_response(KV_RESPONSE))
                == KV_RESPONSE
            )
            # by id too
            document, material = await fetcher.fetch_key(endpoint, key.id)
            assert document.key_type == SINGLE_PARTY
            assert fetcher.last_transports == ["HTTP/2"]
            private = X25519PrivateKey.from_private_bytes(material)
            assert private.public_key().public_bytes_raw() == key.key

    # 5. Every fetch was audited, durably, with the key ids released.
    records = audit_records(audit_log)
    recents = [r for r in records if r["operation"] == "pakv.keys.recent"]
    assert len(recents) == 2 and all(r["outcome"] == "allowed" for r in recents)
    assert set(recents[0]["details"]["keys"]) == {r.key_id for r in keys.held()}
    assert recents[0]["principal"].startswith("pakv-server:sev-snp:")
    by_id = [r for r in records if r["operation"] == "pakv.keys.get"]
    assert [(r["key_id"], r["outcome"]) for r in by_id] == [(key.id, "allowed")] * 2
    assert sum(r["operation"] == "pakv.attest" and r["outcome"] == "allowed" for r in records) == 4


async def test_measurement_outside_the_release_policy_gets_403_and_no_key_material(
    snp: SimulatedSnp, sim_verifier: Verifier, identity: Identity, tls: Tls
) -> None:
    clock, audit = real_now_clock(), Recorder()
    service, _ = make_service(sim_verifier, identity, audit, clock)
    async with H2Server(service) as h2c:
        base = f"http://127.0.0.1:{h2c.port}"
        fetcher = PakvKeyFetcher([KmsEndpoint(base, "kms-a")], snp.provider(BAD_LAUNCH))
        with pytest.raises(KeyFetchError) as refused:
            await fetcher.refresh()
        assert refused.value.status == 403
        assert refused.value.problem == "https://enclave-kms.dev/problems/release-policy-denied"
        assert fetcher.keys == {}
        # The raw answer carries no key material, and a token-less fetch is 401.
        async with httpx.AsyncClient(base_url=base, http1=False, http2=True) as client:
            response = await client.get(
                "/v1alpha/encryptionKeys:recent", params={"maxAgeSeconds": "3888000"}
            )
            assert response.http_version == "HTTP/2"
            assert response.status_code == 401
            assert response.headers["content-type"] == "application/problem+json"
            assert "keyMaterial" not in response.text
    denied = [r for r in audit.records if r["outcome"] == "denied"]
    assert [(r["operation"], r["status"]) for r in denied] == [
        ("pakv.attest", 403),
        ("pakv.keys.recent", 401),
    ]
    assert "measurement" in denied[0]["details"]["mismatches"][0]


async def test_two_party_split_keys(
    snp: SimulatedSnp, sim_verifier: Verifier, identity: Identity
) -> None:
    clock, audit = real_now_clock(), Recorder()
    transfer = X25519PrivateKey.generate()
    leader, leader_keys = make_service(
        sim_verifier,
        identity,
        audit,
        clock,
        kms_id="kms-a",
        rotate=False,
        split=SplitConfig(
            party=1,
            peer_kms_id="kms-b",
            peer_transfer_public_key=transfer.public_key().public_bytes_raw(),
        ),
    )
    follower, follower_keys = make_service(
        sim_verifier,
        identity,
        audit,
        clock,
        kms_id="kms-b",
        rotate=False,
        split=SplitConfig(party=2, peer_kms_id="kms-a", transfer_private_key=transfer),
    )
    report = leader_keys.run_rotation(clock.now)
    assert len(report.peer_shares) == 5
    for share in report.peer_shares:
        follower_keys.import_peer_share(type(share).from_bytes(share.to_bytes()))
    for record in leader_keys.held():
        private_alone = leader_keys.material(record)
        derived = X25519PrivateKey.from_private_bytes(private_alone).public_key()
        assert derived.public_bytes_raw() != record.public_key  # a share is not the key
    public = leader.public_key_set(clock())[0]
    assert public == follower.public_key_set(clock())[0]
    encapsulated, context = encrypt_request(public.keys[0], KV_REQUEST)
    async with H2Server(leader) as a, H2Server(follower) as b:
        fetcher = PakvKeyFetcher(
            [
                KmsEndpoint(f"http://127.0.0.1:{a.port}", "kms-a", identity.public),
                KmsEndpoint(f"http://127.0.0.1:{b.port}", "kms-b", identity.public),
            ],
            snp.provider(GOOD_LAUNCH),
        )
        fetched = await fetcher.refresh()
        assert len(fetched) == 5
        document, _ = await fetcher.fetch_key(fetcher._endpoints[0], public.keys[0].id)
    assert document.key_type == MULTI_PARTY
    uris = [d.key_encryption_key_uri for d in document.key_data]
    assert uris[0].startswith("enclave-kms://kms-a/hpke/")
    assert uris[1].startswith("enclave-kms://kms-b/hpke/")
    assert document.key_data[1].key_material == ""  # the peer's share is not ours to give
    validator("encryption-key.json").validate(document.to_json())
    request, server_context = fetcher.decrypt_request(encapsulated)
    assert request == KV_REQUEST
    assert context.decapsulate_response(server_context.encapsulate_response(b"ok")) == b"ok"


async def test_unsafe_test_keys_mode_decrypts_test_key_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from kms.pakv.ohttp import encapsulate_request
    from kms.pakv.testkeys import UNSAFE_TEST_PUBLIC_KEY_B64

    fetcher = PakvKeyFetcher.unsafe_test_keys()
    encapsulated, context = encapsulate_request(
        base64.b64decode(UNSAFE_TEST_PUBLIC_KEY_B64), 64, KV_REQUEST
    )
    with caplog.at_level("WARNING"):
        request, server_context = fetcher.decrypt_request(encapsulated)
    assert request == KV_REQUEST
    assert any("UNSAFE_TEST_KEYS" in r.getMessage() for r in caplog.records)
    assert context.decapsulate_response(server_context.encapsulate_response(b"x")) == b"x"


def test_encryption_key_round_trips_through_its_parser() -> None:
    doc = {
        "name": "encryptionKeys/4000000000000000",
        "encryptionKeyType": "SINGLE_PARTY_HYBRID_KEY",
        "publicKeysetHandle": "{}",
        "publicKeyMaterial": "87ey8XZPXAd+/+ytKv2GFUWW5j9zdepSJ2G4gebDwyM=",
        "creationTime": "1700000000000",
        "activationTime": "1700000000000",
        "expirationTime": "1700691200000",
        "keyData": [{"publicKeySignature": "", "keyEncryptionKeyUri": "x", "keyMaterial": ""}],
    }
    assert EncryptionKey.from_json(doc).to_json() == doc
    validator("encryption-key.json").validate(doc)
