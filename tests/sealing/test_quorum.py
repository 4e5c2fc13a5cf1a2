"""Quorum provider: M custodians' shares unseal, M-1 cannot, shares are HPKE'd to custodians."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.sealing import (
    Binding,
    InsufficientShares,
    Sealer,
    ShareDecryptionError,
    ShareMismatch,
    UnsealError,
)
from enclave.sealing.providers.quorum import (
    Custodian,
    CustodianShare,
    EncryptedShare,
    QuorumPolicy,
    QuorumSealKeyProvider,
    create_quorum,
    decrypt_share,
)
from tests.sealing.conftest import make_binding

NAMES = ("alice", "bob", "carol", "dave", "erin")


@pytest.fixture(scope="module")
def custodian_keys() -> dict[str, X25519PrivateKey]:
    return {name: X25519PrivateKey.generate() for name in NAMES}


@pytest.fixture(scope="module")
def policy(custodian_keys: dict[str, X25519PrivateKey]) -> QuorumPolicy:
    custodians = tuple(Custodian(n, k.public_key()) for n, k in custodian_keys.items())
    return QuorumPolicy(threshold=3, custodians=custodians)


def _decrypt_all(
    shares: tuple[EncryptedShare, ...], keys: dict[str, X25519PrivateKey]
) -> list[CustodianShare]:
    # Each custodian opens only their own share, after a round trip through bytes.
    return [
        CustodianShare.from_bytes(
            decrypt_share(EncryptedShare.from_bytes(s.to_bytes()), keys[s.custodian]).to_bytes()
        )
        for s in shares
    ]


def test_m_shares_unseal(
    policy: QuorumPolicy, custodian_keys: dict[str, X25519PrivateKey], binding: Binding
) -> None:
    provider, encrypted = create_quorum(policy)
    blob = Sealer(provider, binding).seal(b"hsm pin and storage key")
    opened = _decrypt_all(encrypted, custodian_keys)
    for chosen in ([0, 1, 2], [4, 2, 0], [1, 3, 4], [0, 1, 2, 3, 4]):
        rebuilt = QuorumSealKeyProvider.from_shares([opened[i] for i in chosen])
        assert Sealer(rebuilt, binding).unseal(blob) == b"hsm pin and storage key"


def test_m_minus_one_shares_cannot(
    policy: QuorumPolicy, custodian_keys: dict[str, X25519PrivateKey]
) -> None:
    _, encrypted = create_quorum(policy)
    opened = _decrypt_all(encrypted, custodian_keys)
    with pytest.raises(InsufficientShares, match=r"2 distinct share\(s\) presented, 3 needed"):
        QuorumSealKeyProvider.from_shares(opened[:2])
    # Repeating a share does not count twice.
    with pytest.raises(InsufficientShares):
        QuorumSealKeyProvider.from_shares([opened[0], opened[0], opened[1]])
    with pytest.raises(InsufficientShares):
        QuorumSealKeyProvider.from_shares([])


def test_other_measurement_cannot_unseal(
    policy: QuorumPolicy, custodian_keys: dict[str, X25519PrivateKey], binding: Binding
) -> None:
    provider, encrypted = create_quorum(policy)
    blob = Sealer(provider, binding).seal(b"k")
    rebuilt = QuorumSealKeyProvider.from_shares(_decrypt_all(encrypted, custodian_keys)[:3])
    with pytest.raises(UnsealError):
        Sealer(rebuilt, make_binding(code=b"other code")).unseal(blob)


def test_shares_are_encrypted_to_each_custodian(
    policy: QuorumPolicy, custodian_keys: dict[str, X25519PrivateKey]
) -> None:
    _, encrypted = create_quorum(policy)
    opened = _decrypt_all(encrypted, custodian_keys)
    for share, clear in zip(encrypted, opened, strict=True):
        assert clear.value not in share.to_bytes()
        # RFC 9180 single-shot output: enc (32-byte X25519 key) || ciphertext || tag.
        assert len(share.sealed) == hpke.KEM.X25519.enc_length() + 32 + 16
    # Bob's key does not open Alice's share.
    with pytest.raises(ShareDecryptionError, match="another key"):
        decrypt_share(encrypted[0], custodian_keys["bob"])


def test_altered_share_metadata_does_not_decrypt(
    policy: QuorumPolicy, custodian_keys: dict[str, X25519PrivateKey]
) -> None:
    _, encrypted = create_quorum(policy)
    share = encrypted[0]
    import dataclasses

    moved = dataclasses.replace(share, header=dataclasses.replace(share.header, index=5))
    with pytest.raises(ShareDecryptionError, match="did not decrypt"):
        decrypt_share(moved, custodian_keys["alice"])
    flipped = dataclasses.replace(share, sealed=share.sealed[:-1] + bytes([share.sealed[-1] ^ 1]))
    with pytest.raises(ShareDecryptionError):
        decrypt_share(flipped, custodian_keys["alice"])


def test_wrong_or_foreign_shares_are_refused(
    policy: QuorumPolicy, custodian_keys: dict[str, X25519PrivateKey]
) -> None:
    _, first = create_quorum(policy)
    _, second = create_quorum(policy)
    a = _decrypt_all(first, custodian_keys)
    b = _decrypt_all(second, custodian_keys)
    with pytest.raises(ShareMismatch, match="different quorums"):
        QuorumSealKeyProvider.from_shares([a[0], a[1], b[2]])
    corrupted = CustodianShare(a[2].header, bytes(32))
    with pytest.raises(ShareMismatch, match="do not rebuild"):
        QuorumSealKeyProvider.from_shares([a[0], a[1], corrupted])
    with pytest.raises(ShareMismatch, match="two different shares"):
        QuorumSealKeyProvider.from_shares([a[0], a[1], a[2], corrupted])


def test_policy_validation(custodian_keys: dict[str, X25519PrivateKey]) -> None:
    alice = Custodian("alice", custodian_keys["alice"].public_key())
    bob = Custodian("bob", custodian_keys["bob"].public_key())
    with pytest.raises(ValueError, match="threshold"):
        QuorumPolicy(1, (alice, bob))
    with pytest.raises(ValueError, match="threshold"):
        QuorumPolicy(3, (alice, bob))
    with pytest.raises(ValueError, match="distinct"):
        QuorumPolicy(2, (alice, Custodian("alice2", alice.public_key)))
    with pytest.raises(ValueError):
        Custodian("has space", alice.public_key)


def test_garbage_share_bytes_are_refused() -> None:
    for data in (b"", b"\xff", b"\xa0", bytes(5000)):
        with pytest.raises(ShareMismatch):
            EncryptedShare.from_bytes(data)
        with pytest.raises(ShareMismatch):
            CustodianShare.from_bytes(data)


def test_secrets_stay_out_of_reprs(
    policy: QuorumPolicy, custodian_keys: dict[str, X25519PrivateKey]
) -> None:
    provider, encrypted = create_quorum(policy)
    opened = _decrypt_all(encrypted, custodian_keys)
    assert opened[0].value.hex() not in repr(opened[0])
    assert repr(opened[0].value) not in repr(opened[0])
    assert "_secret" not in repr(provider)


def _rfc9180_base_open(sealed: bytes, recipient: X25519PrivateKey, info: bytes) -> bytes:
    """An independent RFC 9180 base-mode Open for DHKEM(X25519, HKDF-SHA256) /
    HKDF-SHA256 / AES-256-GCM (sections 4.1, 5.1, 5.2), to check the library's suite."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()

    def expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
        labeled = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
        out, block, counter = b"", b"", 1
        while len(out) < length:
            block = hmac.new(prk, block + labeled + bytes([counter]), hashlib.sha256).digest()
            out += block
            counter += 1
        return out[:length]

    enc, ciphertext = sealed[:32], sealed[32:]
    kem_suite = b"KEM" + (0x0020).to_bytes(2, "big")
    dh = recipient.exchange(X25519PublicKey.from_public_bytes(enc))
    pk_rm = recipient.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    eae_prk = extract(kem_suite, b"", b"eae_prk", dh)
    shared_secret = expand(kem_suite, eae_prk, b"shared_secret", enc + pk_rm, 32)
    suite = b"HPKE" + (0x0020).to_bytes(2, "big") + (1).to_bytes(2, "big") + (2).to_bytes(2, "big")
    context = (
        b"\x00" + extract(suite, b"", b"psk_id_hash", b"") + extract(suite, b"", b"info_hash", info)
    )
    secret = extract(suite, shared_secret, b"secret", b"")
    key = expand(suite, secret, b"key", context, 32)
    base_nonce = expand(suite, secret, b"base_nonce", context, 12)
    return AESGCM(key).decrypt(base_nonce, ciphertext, b"")


def test_share_encryption_is_rfc9180_base_mode(
    policy: QuorumPolicy, custodian_keys: dict[str, X25519PrivateKey]
) -> None:
    _, encrypted = create_quorum(policy)
    share = encrypted[1]
    expected = decrypt_share(share, custodian_keys[share.custodian]).value
    opened = _rfc9180_base_open(share.sealed, custodian_keys[share.custodian], share._hpke_info())
    assert opened == expected
