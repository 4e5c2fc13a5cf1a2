from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import cbor2
import pytest

from enclave.keys.entropy import EntropyKind, EntropySource
from enclave.keys.errors import CiphertextFormatError, KeyMetadataError, KeyStateError
from enclave.keys.material import Ciphertext
from enclave.keys.metadata import (
    Algorithm,
    KeyMetadata,
    KeyPolicy,
    KeyVersion,
    Purpose,
    RotationSchedule,
    SecurityLevel,
    VersionState,
    WrappingRef,
    new_key_id,
)

T0 = datetime(2024, 3, 20, 10, 0, tzinfo=UTC)
KEK_ID = new_key_id()


def version(key_id: str, n: int = 1, state: VersionState = VersionState.ACTIVE) -> KeyVersion:
    return KeyVersion(
        key_id=key_id,
        version=n,
        algorithm=Algorithm.AES_256_GCM,
        state=state,
        created_at=T0,
        state_changed_at=T0,
        entropy=EntropyKind.HSM,
        wrapped_by=WrappingRef(KEK_ID, 1),
        wrapped=b"\x42" * 40,
    )


def metadata() -> KeyMetadata:
    key_id = new_key_id()
    return KeyMetadata(
        key_id=key_id,
        created_at=T0,
        expires_at=T0 + timedelta(days=31),
        algorithm=Algorithm.AES_256_GCM,
        purpose=Purpose.ENCRYPT,
        owner="Service_A",
        security_level=SecurityLevel.L3,
        rotation=RotationSchedule.monthly(),
        policy=KeyPolicy(allowed_principals=("svc:a",), exportable=True),
        versions=(version(key_id),),
    )


def test_key_ids_are_key_and_random_hex() -> None:
    a, b = new_key_id(), new_key_id()
    assert a.startswith("key_") and len(a) == 36 and a != b


def test_metadata_round_trips_through_json_and_cbor() -> None:
    meta = metadata()
    assert KeyMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert KeyMetadata.from_dict(cbor2.loads(cbor2.dumps(meta.to_dict()))) == meta


def test_repr_hides_wrapped_material() -> None:
    meta = metadata()
    assert "\\x42" not in repr(meta) and "BBBB" not in repr(meta)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d.update(extra=1), id="unknown-field"),
        pytest.param(lambda d: d.pop("owner"), id="missing-field"),
        pytest.param(lambda d: d.update(purpose="decrypt"), id="unknown-purpose"),
        pytest.param(lambda d: d.update(algorithm="Ed25519"), id="algorithm-purpose-mismatch"),
        pytest.param(lambda d: d.update(key_id="key_123abc456"), id="bad-key-id"),
        pytest.param(lambda d: d["versions"][0].update(state="revoked"), id="unknown-state"),
        pytest.param(lambda d: d["versions"][0].update(wrapped="!!"), id="bad-base64"),
        pytest.param(lambda d: d.update(created_at="2024-03-20T10:00:00"), id="naive-time"),
        pytest.param(lambda d: d["versions"][0].update(version=2), id="version-gap"),
    ],
)
def test_malformed_records_are_rejected(mutate) -> None:  # type: ignore[no-untyped-def]
    record = metadata().to_dict()
    mutate(record)
    with pytest.raises(KeyMetadataError):
        KeyMetadata.from_dict(record)


def test_state_transitions_follow_the_table() -> None:
    v = version(new_key_id())
    grace = v.transition(VersionState.DECRYPT_ONLY, T0)
    assert grace.can_consume() and not grace.can_produce()
    with pytest.raises(KeyStateError):
        v.transition(VersionState.DESTROYED, T0)  # only through pending-deletion
    doomed = v.transition(VersionState.PENDING_DELETION, T0, deletion_window=timedelta(days=10))
    assert doomed.deletion_due == T0 + timedelta(days=10)
    assert not doomed.can_consume()
    assert doomed.transition(VersionState.DISABLED, T0).deletion_due is None  # cancelled
    with pytest.raises(KeyStateError):
        doomed.transition(VersionState.DESTROYED, T0 + timedelta(days=9))
    gone = doomed.transition(VersionState.DESTROYED, T0 + timedelta(days=10))
    assert gone.wrapped == b""
    assert KeyVersion.from_dict(gone.to_dict()) == gone
    with pytest.raises(KeyStateError):
        gone.transition(VersionState.ACTIVE, T0)
    for window in (timedelta(days=6), timedelta(days=31)):
        with pytest.raises(KeyStateError):
            v.transition(VersionState.PENDING_DELETION, T0, deletion_window=window)


def test_compromised_versions_consume_but_never_produce() -> None:
    v = version(new_key_id()).mark_compromised()
    assert v.can_consume() and not v.can_produce()


def test_only_one_active_version() -> None:
    meta = metadata()
    with pytest.raises(KeyMetadataError):
        meta.with_version(version(meta.key_id, 2))


def test_kek_versions_must_be_wrapped_by_the_master_key() -> None:
    with pytest.raises(KeyMetadataError):
        KeyVersion(
            key_id=new_key_id(),
            version=1,
            algorithm=Algorithm.AES_256_KWP,
            state=VersionState.ACTIVE,
            created_at=T0,
            state_changed_at=T0,
            entropy=EntropyKind.HSM,
            wrapped_by=WrappingRef(KEK_ID, 1),
            wrapped=b"\0" * 40,
        )


def test_ciphertext_envelope_parses_and_rejects_garbage() -> None:
    ct = Ciphertext(KEK_ID, 7, b"\1" * 12, b"\2" * 20)
    assert Ciphertext.from_bytes(ct.to_bytes()) == ct
    for blob in (b"", b"EKC1", b"XXXX" + ct.to_bytes()[4:], ct.to_bytes()[:-20]):
        with pytest.raises(CiphertextFormatError):
            Ciphertext.from_bytes(blob)


class FakeNsm:
    kind = EntropyKind.OS_CSPRNG_NSM

    def __init__(self, data: bytes = b"\x00" * 32) -> None:
        self.data = data
        self.reads = 0

    def read(self, length: int) -> bytes:
        self.reads += 1
        return self.data[:length]


def test_entropy_source_labels_and_mixing() -> None:
    plain = EntropySource()
    assert plain.kind is EntropyKind.OS_CSPRNG
    assert len(plain.random_bytes(32)) == 32 and plain.random_bytes(16) != plain.random_bytes(16)
    nsm = FakeNsm()
    mixed = EntropySource(extra=nsm)
    assert mixed.kind is EntropyKind.OS_CSPRNG_NSM
    # A constant (even hostile) extra source cannot make the output predictable.
    assert mixed.random_bytes(32) != mixed.random_bytes(32)
    assert len(mixed.random_bytes(100)) == 100 and nsm.reads == 3
    with pytest.raises(RuntimeError):
        EntropySource(extra=FakeNsm(b"short")).random_bytes(32)
    with pytest.raises(ValueError):
        plain.random_bytes(0)
