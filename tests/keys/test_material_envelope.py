"""The envelope shortcuts of ``enclave.keys.material`` give what the general paths give."""

from __future__ import annotations

import dataclasses
import os

import pytest

from enclave.keys.errors import CiphertextFormatError
from enclave.keys.material import Ciphertext, SymmetricKey

KEY_ID = "key_" + "0123456789abcdef" * 2


def test_seal_is_encrypt_to_bytes_and_opens() -> None:
    key = SymmetricKey(KEY_ID, 3, os.urandom(32))
    nonce, plaintext, context = os.urandom(12), os.urandom(100), b'{"a":"b"}'
    blob = key.seal(plaintext, context, nonce)
    assert blob == key.encrypt(plaintext, context, nonce).to_bytes()
    envelope = Ciphertext.from_bytes(blob)
    assert key.decrypt(envelope, context) == plaintext
    assert envelope.aad(context) == key._aad_prefix + context


def test_from_bytes_builds_what_the_constructor_builds() -> None:
    blob = SymmetricKey(KEY_ID, 7, os.urandom(32)).seal(b"x", b"", os.urandom(12))
    parsed = Ciphertext.from_bytes(blob)
    built = Ciphertext(parsed.key_id, parsed.version, parsed.nonce, parsed.sealed)
    assert parsed == built and hash(parsed) == hash(built) and vars(parsed) == vars(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.version = 8  # type: ignore[misc]


@pytest.mark.parametrize(("key_id", "version"), [("key_XYZ", 1), (KEY_ID, 0), (KEY_ID, 2**32)])
def test_from_bytes_and_seal_refuse_what_the_constructor_refuses(key_id: str, version: int) -> None:
    header = b"EKC1" + bytes([len(key_id)]) + key_id.encode() + (version % 2**32).to_bytes(4, "big")
    blob = header + bytes(12) + bytes(16)
    if version < 2**32:
        with pytest.raises(CiphertextFormatError):
            Ciphertext.from_bytes(blob)
    with pytest.raises(CiphertextFormatError):
        SymmetricKey(key_id, version, bytes(32)).seal(b"x", b"", bytes(12))
