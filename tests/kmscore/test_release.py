"""Ciphertext format and attested-release wrapping."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.kms import release
from enclave.kms.context import InvalidContext, canonical_context

KEY = os.urandom(32)


def test_context_is_canonical_and_bounded() -> None:
    assert canonical_context({"b": "2", "a": "1"}) == canonical_context({"a": "1", "b": "2"})
    assert canonical_context(None) == canonical_context({}) == b""
    with pytest.raises(InvalidContext):
        canonical_context({"k": "v" * 9000})
    with pytest.raises(InvalidContext):
        canonical_context({"": "v"})


def test_release_wraps_to_the_client_key_only() -> None:
    client = X25519PrivateKey.generate()
    public = client.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    wrapped = release.wrap_for_client(KEY, public, "key_1", 2)
    assert KEY not in wrapped
    assert release.unwrap_released(wrapped, client, "key_1", 2) == KEY
    with pytest.raises(InvalidTag):
        release.unwrap_released(wrapped, X25519PrivateKey.generate(), "key_1", 2)
    with pytest.raises(InvalidTag):
        release.unwrap_released(wrapped, client, "key_1", 3)
    proof = release.receipt_proof(KEY, "rel_1")
    assert release.check_receipt(KEY, "rel_1", proof)
    assert not release.check_receipt(os.urandom(32), "rel_1", proof)


def test_release_report_data_binds_key_and_challenge() -> None:
    a = release.release_report_data(b"\x01" * 32, b"c1")
    assert len(a) == 64
    assert a != release.release_report_data(b"\x02" * 32, b"c1")
    assert a != release.release_report_data(b"\x01" * 32, b"c2")
    with pytest.raises(release.ReleaseError):
        release.wrap_for_client(KEY, b"short", "key_1", 1)
