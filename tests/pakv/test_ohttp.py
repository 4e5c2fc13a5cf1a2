"""RFC 9458 encapsulation with the K/V labels; interop with the well-known K/V test key."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hpke as pyca_hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

from kms.pakv import testkeys
from kms.pakv.ohttp import (
    REQUEST_LABEL,
    RESPONSE_LABEL,
    OhttpError,
    decapsulate_request,
    encapsulate_request,
)

REQUEST = b'{"partitions":[{"id":0,"arguments":[{"tags":["custom","keys"],"data":["hi"]}]}]}'


def test_labels_are_the_kv_ones() -> None:
    assert REQUEST_LABEL == b"message/ad-auction-trusted-signals-request"
    assert RESPONSE_LABEL == b"message/ad-auction-trusted-signals-response"


def test_well_known_test_key_pair_matches() -> None:
    private = testkeys.unsafe_test_private_key()
    assert base64.b64encode(private.public_key().public_bytes_raw()).decode() == (
        "87ey8XZPXAd+/+ytKv2GFUWW5j9zdepSJ2G4gebDwyM="
    )


def test_round_trip_with_the_test_key_and_key_id_64_in_the_header() -> None:
    public = testkeys.unsafe_test_public_key()
    encapsulated, client = encapsulate_request(public, testkeys.UNSAFE_TEST_OHTTP_KEY_ID, REQUEST)
    # hdr = key_id(1) || kem_id(2) || kdf_id(2) || aead_id(2)
    assert encapsulated[:7] == bytes([64, 0x00, 0x20, 0x00, 0x01, 0x00, 0x02])
    private = testkeys.unsafe_test_private_key()
    request, server = decapsulate_request(encapsulated, {64: private}.get)
    assert request == REQUEST
    assert client.decapsulate_response(server.encapsulate_response(b"answer")) == b"answer"


def test_request_decrypts_with_an_independent_hpke() -> None:
    """pyca/cryptography's RFC 9180 single-shot open (enc || ct) reads our request."""
    private = testkeys.unsafe_test_private_key()
    encapsulated, _ = encapsulate_request(testkeys.unsafe_test_public_key(), 64, REQUEST)
    hdr = encapsulated[:7]
    suite = pyca_hpke.Suite(
        pyca_hpke.KEM.X25519, pyca_hpke.KDF.HKDF_SHA256, pyca_hpke.AEAD.AES_256_GCM
    )
    assert suite.decrypt(encapsulated[7:], private, info=REQUEST_LABEL + b"\x00" + hdr) == REQUEST


def test_response_follows_rfc9458_section_4_4() -> None:
    """Derive the response key by hand from the exported secret (independent of our code)."""
    private = testkeys.unsafe_test_private_key()
    encapsulated, _ = encapsulate_request(testkeys.unsafe_test_public_key(), 64, REQUEST)
    _, server = decapsulate_request(encapsulated, {64: private}.get)
    response = server.encapsulate_response(b"hello")
    hdr, enc = encapsulated[:7], encapsulated[7:39]
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)
    context = suite.create_recipient_context(
        enc, KEMKey.from_pyca_cryptography_key(private), info=REQUEST_LABEL + b"\x00" + hdr
    )
    secret = context.export(RESPONSE_LABEL, 32)  # max(Nn=12, Nk=32)
    nonce = response[:32]
    prk = hmac.new(enc + nonce, secret, hashlib.sha256).digest()  # Extract(salt, secret)
    key = HKDFExpand(hashes.SHA256(), 32, b"key").derive(prk)
    aead_nonce = HKDFExpand(hashes.SHA256(), 12, b"nonce").derive(prk)
    assert AESGCM(key).decrypt(aead_nonce, response[32:], b"") == b"hello"


def test_failures_are_opaque() -> None:
    private = testkeys.unsafe_test_private_key()
    encapsulated, client = encapsulate_request(testkeys.unsafe_test_public_key(), 64, REQUEST)
    tampered = encapsulated[:-1] + bytes([encapsulated[-1] ^ 1])
    other_id = bytes([65]) + encapsulated[1:]
    other_suite = encapsulated[:5] + b"\x00\x01" + encapsulated[7:]  # AES-128-GCM
    for bad in (tampered, other_id, other_suite, encapsulated[:20]):
        with pytest.raises(OhttpError, match=r"^the request does not decrypt$"):
            decapsulate_request(bad, {64: private}.get)
    with pytest.raises(OhttpError):
        decapsulate_request(encapsulated, {64: X25519PrivateKey.generate()}.get)
    with pytest.raises(OhttpError):
        client.decapsulate_response(b"\x00" * 64)


async def test_kms_unsafe_test_key_source_serves_the_test_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import datetime as dt

    from enclave.pakv.keyset import active_keys
    from enclave.pakv.unsafe_test_keys import UnsafeTestKeySource

    with caplog.at_level("WARNING"):
        source = UnsafeTestKeySource("kms-test")
        (record,) = active_keys(source, dt.datetime.now(dt.UTC))
        material = source.material(record)
    assert record.key_id == "4000000000000000" and record.ohttp_id == 64
    assert base64.b64encode(record.public_key).decode() == testkeys.UNSAFE_TEST_PUBLIC_KEY_B64
    assert X25519PrivateKey.from_private_bytes(material).public_key().public_bytes_raw() == (
        record.public_key
    )
    assert sum("UNSAFE_TEST_KEYS" in r.getMessage() for r in caplog.records) >= 3
