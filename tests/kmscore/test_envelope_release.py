"""Ciphertext format and attested-release wrapping."""

from __future__ import annotations

import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from enclave.kms import envelope, release

KEY = os.urandom(32)
HEADER = envelope.CiphertextHeader("key_0123abcd", 3)


def test_round_trip_names_key_and_version() -> None:
    blob = envelope.seal(KEY, HEADER, b"secret", {"tenant": "acme"})
    header, _ = envelope.parse_header(blob)
    assert header == HEADER
    assert envelope.open_(KEY, blob, {"tenant": "acme"}) == b"secret"


@pytest.mark.parametrize(
    "context", [None, {}, {"tenant": "other"}, {"tenant": "acme", "extra": "x"}]
)
def test_wrong_context_fails(context: dict[str, str] | None) -> None:
    blob = envelope.seal(KEY, HEADER, b"secret", {"tenant": "acme"})
    with pytest.raises(envelope.InvalidCiphertext):
        envelope.open_(KEY, blob, context)


def test_header_moved_to_another_version_fails() -> None:
    blob = envelope.seal(KEY, HEADER, b"secret")
    moved = envelope.CiphertextHeader("key_0123abcd", 4).encode() + blob[len(HEADER.encode()) :]
    with pytest.raises(envelope.InvalidCiphertext):
        envelope.open_(KEY, moved)


@given(st.binary(max_size=200))
def test_garbage_is_one_opaque_error(data: bytes) -> None:
    with pytest.raises(envelope.InvalidCiphertext) as info:
        envelope.open_(KEY, data)
    assert str(info.value) == str(envelope.InvalidCiphertext())


@given(st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_fails(position: int, flip: int) -> None:
    blob = bytearray(envelope.seal(KEY, HEADER, b"0123456789abcdef"))
    blob[position % len(blob)] ^= flip
    with pytest.raises(envelope.InvalidCiphertext):
        envelope.open_(KEY, bytes(blob))


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
