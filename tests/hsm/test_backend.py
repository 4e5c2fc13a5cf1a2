from __future__ import annotations

import asyncio
import os
import threading

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, Mechanism
from pkcs11.exceptions import AttributeSensitive, KeyUnextractable, PKCS11Error

from enclave.hsm.backend import HsmBackend, KekRef, TokenSession
from enclave.hsm.errors import HsmClosed, HsmConfigError, HsmUnwrapError
from enclave.keys.errors import SignatureInvalid
from enclave.keys.material import verify_signature


@pytest.fixture
async def kek(backend: HsmBackend) -> KekRef:
    await backend.ensure_master_key()
    return KekRef(f"kek-{os.urandom(4).hex()}", await backend.generate_kek())


async def test_master_key_is_found_or_created_idempotently(backend: HsmBackend) -> None:
    await backend.ensure_master_key()
    status = await backend.ensure_master_key()
    assert not status.created


async def test_master_key_value_cannot_be_read(backend: HsmBackend) -> None:
    await backend.ensure_master_key()

    def read_value(st: TokenSession) -> bytes:
        return bytes(st.master_key()[Attribute.VALUE])

    with pytest.raises((AttributeSensitive, PKCS11Error)):
        await backend.worker.run(read_value, st_of(backend))


async def test_master_key_cannot_be_wrapped_out(backend: HsmBackend, kek: KekRef) -> None:
    def wrap_master_with_kek(st: TokenSession) -> bytes:
        return bytes(st.kek(kek).wrap_key(st.master_key(), mechanism=Mechanism.AES_KEY_WRAP_PAD))

    with pytest.raises(KeyUnextractable):
        await backend.worker.run(wrap_master_with_kek, st_of(backend))

    def attributes(st: TokenSession) -> dict[Attribute, object]:
        return dict(
            st.master_key().get_attributes(
                [Attribute.SENSITIVE, Attribute.EXTRACTABLE, Attribute.NEVER_EXTRACTABLE]
            )
        )

    attrs = await backend.worker.run(attributes, st_of(backend))
    assert attrs == {
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: False,
        Attribute.NEVER_EXTRACTABLE: True,
    }


async def test_kek_value_cannot_be_read_once_unwrapped(backend: HsmBackend, kek: KekRef) -> None:
    def read(st: TokenSession) -> bytes:
        return bytes(st.kek(kek)[Attribute.VALUE])

    with pytest.raises(PKCS11Error):
        await backend.worker.run(read, st_of(backend))


async def test_kek_and_dek_round_trip(backend: HsmBackend, kek: KekRef) -> None:
    generated = await backend.generate_data_key(kek, with_plaintext=True)
    assert generated.plaintext is not None and len(generated.plaintext) == 32
    assert len(generated.wrapped) == 40  # RFC 5649 of 32 bytes
    assert await backend.unwrap_data_key(kek, generated.wrapped) == generated.plaintext
    # A fresh unwrap of the KEK (cache dropped) still opens it.
    await backend.unwrap_kek_uncached(kek)
    assert await backend.unwrap_data_key(kek, generated.wrapped) == generated.plaintext
    sealed = await backend.generate_data_key(kek, with_plaintext=False)
    assert sealed.plaintext is None
    assert len(await backend.unwrap_data_key(kek, sealed.wrapped)) == 32


async def test_unwrap_under_other_kek_or_tampered_fails_opaquely(
    backend: HsmBackend, kek: KekRef
) -> None:
    other = KekRef("other-kek", await backend.generate_kek())
    generated = await backend.generate_data_key(kek, with_plaintext=True)
    with pytest.raises(HsmUnwrapError) as info:
        await backend.unwrap_data_key(other, generated.wrapped)
    assert generated.wrapped.hex() not in str(info.value)
    tampered = bytearray(generated.wrapped)
    tampered[5] ^= 1
    for blob in (bytes(tampered), generated.wrapped[:-8], b""):
        with pytest.raises(HsmUnwrapError):
            await backend.unwrap_data_key(kek, blob)
    with pytest.raises(HsmUnwrapError):
        await backend.load_kek(KekRef("bad", bytes(tampered)))


async def test_rewrap_moves_a_dek_between_keks(backend: HsmBackend, kek: KekRef) -> None:
    other = KekRef("rewrap-target", await backend.generate_kek())
    generated = await backend.generate_data_key(kek, with_plaintext=True)
    moved = await backend.rewrap_data_key(kek, other, generated.wrapped)
    assert await backend.unwrap_data_key(other, moved) == generated.plaintext


async def test_rsa_pss_sign_verify_and_tamper(backend: HsmBackend, kek: KekRef) -> None:
    # RSA-4096 is covered through KeyHierarchy in tests/keys; 2048 here keeps the suite fast.
    pair = await backend.generate_rsa_signing_key(kek, bits=2048)
    signature = await backend.sign_rsa_pss(kek, "rsa-test", pair.wrapped_private, b"message")
    verify_signature(pair.public_key_der, b"message", signature)
    with pytest.raises(SignatureInvalid):
        verify_signature(pair.public_key_der, b"messagf", signature)
    bad = bytearray(signature)
    bad[10] ^= 1
    with pytest.raises(SignatureInvalid):
        verify_signature(pair.public_key_der, b"message", bytes(bad))
    tampered = bytearray(pair.wrapped_private)
    tampered[100] ^= 1
    with pytest.raises(HsmUnwrapError):
        await backend.sign_rsa_pss(kek, "rsa-tampered", bytes(tampered), b"message")


async def test_wrap_bytes_round_trip(backend: HsmBackend, kek: KekRef) -> None:
    secret = os.urandom(32)
    wrapped = await backend.wrap_bytes(kek, secret)
    assert secret not in wrapped
    assert await backend.unwrap_bytes(kek, wrapped) == secret
    with pytest.raises(ValueError):
        await backend.wrap_bytes(kek, b"short")


async def test_gcm_in_hsm_interoperates_with_enclave_gcm(backend: HsmBackend, kek: KekRef) -> None:
    generated = await backend.generate_data_key(kek, with_plaintext=True)
    assert generated.plaintext is not None
    blob = await backend.gcm_encrypt_in_hsm(kek, "gcm", generated.wrapped, b"data", b"ctx")
    assert AESGCM(generated.plaintext).decrypt(blob[:12], blob[12:], b"ctx") == b"data"
    assert await backend.gcm_decrypt_in_hsm(kek, "gcm", generated.wrapped, blob, b"ctx") == b"data"
    with pytest.raises(HsmUnwrapError):
        await backend.gcm_decrypt_in_hsm(kek, "gcm", generated.wrapped, blob, b"other")


async def test_random_bytes(backend: HsmBackend) -> None:
    a, b = await backend.generate_random(32), await backend.generate_random(32)
    assert len(a) == 32 and a != b
    with pytest.raises(ValueError):
        await backend.generate_random(0)


async def test_every_call_runs_on_the_one_worker_thread(backend: HsmBackend, kek: KekRef) -> None:
    idents: list[int] = []

    def record(_st: TokenSession) -> None:
        idents.append(threading.get_ident())

    async def from_loop() -> None:
        await backend.run_on_token("test.ident", record)
        await backend.generate_random(8)

    def from_thread() -> None:
        backend.run_on_token_blocking("test.ident", record)

    await asyncio.gather(
        *(from_loop() for _ in range(20)),
        *(asyncio.to_thread(from_thread) for _ in range(8)),
    )
    assert set(idents) == {backend.worker.thread_id}
    assert backend.worker.thread_ids_seen() == {backend.worker.thread_id}
    assert backend.worker.thread_id != threading.get_ident()


async def test_stats_record_operations(backend: HsmBackend) -> None:
    await backend.generate_random(16)
    snap = backend.stats.snapshot()["random"]
    assert snap.count >= 1 and snap.bucket_counts[-1] == snap.count
    assert 0 < snap.mean_seconds < 5


async def test_second_backend_in_one_process_is_refused(backend: HsmBackend) -> None:
    with pytest.raises(HsmConfigError):
        await HsmBackend.open(backend.config, "0000")


async def test_repr_shows_no_secrets(backend: HsmBackend, kek: KekRef) -> None:
    generated = await backend.generate_data_key(kek, with_plaintext=True)
    assert generated.plaintext is not None
    assert generated.plaintext.hex() not in repr(generated)
    assert "wrapped" not in repr(kek)


def st_of(backend: HsmBackend) -> TokenSession:
    state = backend._state
    assert state is not None
    return state


async def test_closed_backend_raises(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A closed backend: a fresh worker with no token state is enough to check the guard.
    closed = HsmBackend.__new__(HsmBackend)
    closed._state = None
    with pytest.raises(HsmClosed):
        await closed.generate_random(8)
