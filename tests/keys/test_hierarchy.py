from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from enclave.hsm.backend import HsmBackend
from enclave.keys.entropy import EntropyKind, EntropySource
from enclave.keys.errors import (
    CiphertextFormatError,
    DecryptionFailed,
    KeyPurposeError,
    KeyStateError,
    SignatureInvalid,
    WrongWrappingKey,
)
from enclave.keys.hierarchy import HsmResidentKey, KeyHierarchy
from enclave.keys.material import Ciphertext, Ed25519Signer, SymmetricKey, X25519KeyPair
from enclave.keys.metadata import (
    MASTER_KEY_REF,
    Algorithm,
    KeyMetadata,
    KeyVersion,
    Purpose,
    VersionState,
)


class FakeNsm:
    kind = EntropyKind.OS_CSPRNG_NSM

    def read(self, length: int) -> bytes:
        return b"\x07" * length


@pytest.fixture
async def hierarchy(backend: HsmBackend) -> KeyHierarchy:
    h = KeyHierarchy(backend)
    await h.bootstrap()
    return h


@pytest.fixture
async def kek(hierarchy: KeyHierarchy) -> KeyVersion:
    meta = await hierarchy.create_kek("kms")
    assert meta.purpose is Purpose.WRAP and meta.algorithm is Algorithm.AES_256_KWP
    version = meta.versions[0]
    assert version.wrapped_by.key_id == MASTER_KEY_REF
    assert version.entropy is EntropyKind.HSM
    return version


async def test_dek_encrypt_decrypt_binds_key_version_and_context(
    hierarchy: KeyHierarchy, kek: KeyVersion
) -> None:
    meta, v1 = await hierarchy.create_key(
        Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=kek, owner="Service_A"
    )
    assert meta.key_id.startswith("key_") and v1.entropy is EntropyKind.HSM
    assert v1.wrapped_by == kek.ref
    blob = await hierarchy.encrypt(v1, kek, b"secret data", b"tenant=a")
    parsed = Ciphertext.from_bytes(blob)
    assert (parsed.key_id, parsed.version) == (meta.key_id, 1)
    assert await hierarchy.decrypt(meta, kek, blob, b"tenant=a") == b"secret data"
    with pytest.raises(DecryptionFailed):
        await hierarchy.decrypt(meta, kek, blob, b"tenant=b")
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(DecryptionFailed):
        await hierarchy.decrypt(meta, kek, bytes(tampered), b"tenant=a")
    # A ciphertext moved to another version number no longer authenticates.
    moved = Ciphertext(parsed.key_id, 1, parsed.nonce, parsed.sealed)
    assert await hierarchy.decrypt(meta, kek, moved.to_bytes(), b"tenant=a") == b"secret data"
    with pytest.raises(CiphertextFormatError):
        Ciphertext.from_bytes(blob[:10])


async def test_persisted_metadata_still_decrypts(hierarchy: KeyHierarchy, kek: KeyVersion) -> None:
    meta, v1 = await hierarchy.create_key(
        Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=kek, owner="svc"
    )
    blob = await hierarchy.encrypt(v1, kek, b"x", b"")
    restored = KeyMetadata.from_dict(json.loads(json.dumps(meta.to_dict())))
    restored_kek = KeyVersion.from_dict(json.loads(json.dumps(kek.to_dict())))
    fresh = KeyHierarchy(hierarchy._backend)  # no cached DEK
    assert await fresh.decrypt(restored, restored_kek, blob, b"") == b"x"


async def test_rotation_keeps_old_ciphertexts_readable(
    hierarchy: KeyHierarchy, kek: KeyVersion
) -> None:
    meta, v1 = await hierarchy.create_key(
        Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=kek, owner="svc"
    )
    old_blob = await hierarchy.encrypt(v1, kek, b"old", b"")
    meta = await hierarchy.rotate(meta, kek)
    assert [v.state for v in meta.versions] == [VersionState.DECRYPT_ONLY, VersionState.ACTIVE]
    assert meta.primary is not None and meta.primary.version == 2
    new_blob = await hierarchy.encrypt(meta.primary, kek, b"new", b"")
    assert Ciphertext.from_bytes(new_blob).version == 2
    assert await hierarchy.decrypt(meta, kek, old_blob, b"") == b"old"
    with pytest.raises(KeyStateError):
        await hierarchy.encrypt(meta.version(1), kek, b"no", b"")
    meta = await hierarchy.transition(meta, 1, VersionState.DISABLED)
    with pytest.raises(KeyStateError):
        await hierarchy.decrypt(meta, kek, old_blob, b"")
    meta = await hierarchy.mark_compromised(meta, 2)
    with pytest.raises(KeyStateError):
        await hierarchy.encrypt(meta.version(2), kek, b"no", b"")
    assert await hierarchy.decrypt(meta, kek, new_blob, b"") == b"new"


async def test_wrong_or_inactive_kek_is_refused(hierarchy: KeyHierarchy, kek: KeyVersion) -> None:
    _, v1 = await hierarchy.create_key(Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=kek, owner="s")
    other = (await hierarchy.create_kek("kms")).versions[0]
    with pytest.raises(WrongWrappingKey):
        await hierarchy.unwrap_for_use(v1, other)
    with pytest.raises(KeyPurposeError):
        await hierarchy.create_key(Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=v1, owner="s")
    with pytest.raises(KeyStateError):
        await hierarchy.create_key(
            Purpose.ENCRYPT,
            Algorithm.AES_256_GCM,
            kek=kek.transition(VersionState.DISABLED, kek.created_at),
            owner="s",
        )
    with pytest.raises(KeyPurposeError):
        await hierarchy.create_key(Purpose.ENCRYPT, Algorithm.ED25519, kek=kek, owner="s")


async def test_ed25519_sign_verify_and_tamper(backend: HsmBackend, kek: KeyVersion) -> None:
    hierarchy = KeyHierarchy(backend, entropy=EntropySource(extra=FakeNsm()))
    _, v1 = await hierarchy.create_key(Purpose.SIGN, Algorithm.ED25519, kek=kek, owner="s")
    assert v1.entropy is EntropyKind.OS_CSPRNG_NSM and v1.public_key is not None
    signature = await hierarchy.sign(v1, kek, b"message")
    hierarchy.verify(v1, b"message", signature)
    with pytest.raises(SignatureInvalid):
        hierarchy.verify(v1, b"messagE", signature)
    signer = await hierarchy.unwrap_for_use(v1, kek)
    assert isinstance(signer, Ed25519Signer)
    assert signer.public_key_der() == v1.public_key
    assert signer.seed.hex() not in repr(signer)


async def test_rsa_4096_sign_in_hsm_verify_and_tamper(
    hierarchy: KeyHierarchy, kek: KeyVersion
) -> None:
    meta, v1 = await hierarchy.create_key(
        Purpose.SIGN, Algorithm.RSA_4096_PSS_SHA256, kek=kek, owner="s"
    )
    assert v1.entropy is EntropyKind.HSM and v1.public_key is not None
    public = serialization.load_der_public_key(v1.public_key)
    assert public.key_size == 4096  # type: ignore[union-attr]
    signature = await hierarchy.sign(v1, kek, b"message")
    assert len(signature) == 512
    hierarchy.verify(v1, b"message", signature)
    bad = bytearray(signature)
    bad[0] ^= 1
    with pytest.raises(SignatureInvalid):
        hierarchy.verify(v1, b"message", bytes(bad))
    assert isinstance(await hierarchy.unwrap_for_use(v1, kek), HsmResidentKey)
    meta = await hierarchy.transition(meta, 1, VersionState.DECRYPT_ONLY)
    with pytest.raises(KeyStateError):
        await hierarchy.sign(meta.version(1), kek, b"message")
    hierarchy.verify(meta.version(1), b"message", signature)  # still verifies in grace


async def test_x25519_hpke_key_round_trip(hierarchy: KeyHierarchy, kek: KeyVersion) -> None:
    _, v1 = await hierarchy.create_key(Purpose.HPKE, Algorithm.X25519_HPKE, kek=kek, owner="s")
    assert v1.entropy is EntropyKind.OS_CSPRNG and v1.public_key is not None
    pair = await hierarchy.unwrap_for_use(v1, kek)
    assert isinstance(pair, X25519KeyPair)
    assert pair.public_key_der() == v1.public_key
    # The unwrapped private key agrees with a peer on the published public key.
    peer = x25519.X25519PrivateKey.generate()
    published = serialization.load_der_public_key(v1.public_key)
    assert isinstance(published, x25519.X25519PublicKey)
    assert peer.exchange(published) == pair.private_key().exchange(peer.public_key())


async def test_unwrapped_dek_is_a_symmetric_key(hierarchy: KeyHierarchy, kek: KeyVersion) -> None:
    _, v1 = await hierarchy.create_key(Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=kek, owner="s")
    key = await hierarchy.unwrap_for_use(v1, kek)
    assert isinstance(key, SymmetricKey) and len(key.secret) == 32
    assert key.secret.hex() not in repr(key)
