"""The request-key set and its rotation.

A ``KeySet`` keeps ``active_count`` slots (default 5). Each slot holds one key valid for
``validity`` (default 8 days); its successor is made ahead of time and becomes active
``overlap`` (default 1 day) before the old key expires, so clients always find a key and
servers can fetch a successor's private half before any client encrypts to it. The
enclave's scheduler calls ``run_rotation(now)`` at least every ``ROTATION_INTERVAL``
(6 hours); ``successor_lead`` (default 1 day, longer than the interval) is how early a
successor is made. Expired keys stay for ``retention`` (default 45 days) so late requests
still decrypt and so their OHTTP key ids stay reserved, then they are destroyed.

Key ids follow the coordinators (``keyids``): the first byte, the OHTTP key id, is unique
among all keys held, and a policy is refused unless every key is held for at least the
45 days in which K/V servers may still hold it.

Private halves are AES-256-GCM-wrapped under the caller's wrapping key (with the key id and
share index as AAD) before they reach the ``Store``. In the two-party mode
(``MULTI_PARTY_HYBRID_EVEN_KEYSPLIT``) the leader makes the key pair, keeps one XOR share
and hands the other to its peer KMS HPKE-wrapped to the peer's transfer key
(``PeerShare``); neither KMS ever stores the whole private key.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.kms.release import SUITE
from enclave.pakv.formats import (
    MULTI_PARTY,
    SERVER_KEY_WINDOW_SECONDS,
    SINGLE_PARTY,
    X25519_KEY_BYTES,
    EncryptionKeyType,
)
from enclave.pakv.keyids import key_id_for_counter, next_key_id
from enclave.pakv.store import KeyRecord, KeySetStore
from enclave.storage.store import Store

ROTATION_INTERVAL = timedelta(hours=6)
ROTATION_INTERVAL_SECONDS = int(ROTATION_INTERVAL.total_seconds())
WRAPPING_KEY_BYTES = 32
MAX_ACTIVE_KEYS = 12  # keeps the public-key answer (both generations at once) under 2 KB
_WRAP_LABEL = b"enclave-kms/pakv-private/v1"
_SHARE_LABEL = b"enclave-kms/pakv-peer-share/v1"

log = logging.getLogger("enclave.pakv.keyset")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_ms(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return int(when.timestamp() * 1000)


class KeySetError(Exception):
    """Caller misuse or an impossible configuration."""


class UnwrapError(Exception):
    """A stored private half does not unwrap (opaque: wrong key, or altered record)."""


@dataclass(frozen=True)
class RotationPolicy:
    active_count: int = 5
    validity: timedelta = timedelta(days=8)
    overlap: timedelta = timedelta(days=1)
    successor_lead: timedelta = timedelta(days=1)
    retention: timedelta = timedelta(days=45)
    server_window: timedelta = timedelta(seconds=SERVER_KEY_WINDOW_SECONDS)

    def __post_init__(self) -> None:
        if not 1 <= self.active_count <= MAX_ACTIVE_KEYS:
            raise KeySetError(f"active_count must be 1..{MAX_ACTIVE_KEYS}")
        if self.overlap <= timedelta(0) or self.overlap >= self.validity:
            raise KeySetError("overlap must be positive and shorter than the validity")
        if self.successor_lead < ROTATION_INTERVAL:
            raise KeySetError("successors must be made at least one rotation interval early")
        if self.validity + self.retention < self.server_window:
            raise KeySetError(
                "validity + retention must cover the servers' key window, or OHTTP key ids "
                "of keys servers still hold could be reused"
            )


@dataclass(frozen=True)
class SplitConfig:
    """Two-party mode. The leader (party 1) makes keys; party 2 imports its shares."""

    party: int
    peer_kms_id: str
    # Leader: the peer's X25519 transfer public key. Follower: its own transfer private key.
    peer_transfer_public_key: bytes | None = None
    transfer_private_key: X25519PrivateKey | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.party not in (1, 2):
            raise KeySetError("party is 1 (leader) or 2")
        if self.party == 1 and self.peer_transfer_public_key is None:
            raise KeySetError("the leader needs the peer's transfer public key")
        if self.party == 2 and self.transfer_private_key is None:
            raise KeySetError("party 2 needs its transfer private key")


@dataclass(frozen=True)
class PeerShare:
    """A key's public metadata and the peer's XOR share, HPKE-wrapped to its transfer key."""

    record: KeyRecord  # with wrapped_private = the HPKE ciphertext of the share

    def to_bytes(self) -> bytes:
        return self.record.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerShare:
        return cls(KeyRecord.from_bytes(data))


@dataclass(frozen=True)
class RotationReport:
    created: tuple[str, ...]
    destroyed: tuple[str, ...]
    peer_shares: tuple[PeerShare, ...] = ()


class KeySource(Protocol):
    """What the service reads: the keys, and the material it may release."""

    kms_id: str

    def held(self) -> list[KeyRecord]: ...

    def get(self, key_id: str) -> KeyRecord | None: ...

    def material(self, record: KeyRecord) -> bytes: ...


def active_keys(source: KeySource, now: datetime) -> list[KeyRecord]:
    """Active keys, latest expiry first (then by id, for a stable answer)."""
    now_ms = to_ms(now)
    active = [r for r in source.held() if r.is_active(now_ms)]
    return sorted(active, key=lambda r: (-r.expiration_ms, r.key_id))


def recent_keys(source: KeySource, now: datetime, max_age: timedelta) -> list[KeyRecord]:
    """Keys created within ``max_age`` of ``now`` (pending ones included), newest first."""
    now_ms = to_ms(now)
    floor = now_ms - int(max_age.total_seconds() * 1000)
    recent = [r for r in source.held() if floor <= r.creation_ms <= now_ms]
    return sorted(recent, key=lambda r: (-r.creation_ms, r.key_id))


class KeySet:
    def __init__(
        self,
        store: Store,
        wrapping_key: bytes,
        *,
        kms_id: str,
        policy: RotationPolicy | None = None,
        split: SplitConfig | None = None,
        clock: Clock = utc_now,
    ) -> None:
        if not isinstance(wrapping_key, bytes) or len(wrapping_key) != WRAPPING_KEY_BYTES:
            raise KeySetError(f"the wrapping key is {WRAPPING_KEY_BYTES} bytes")
        self._records = KeySetStore(store)
        # The records as last read or written by this object: reads (every public-key
        # answer) come from memory. One KMS process owns its store, so nothing else writes.
        self._cache: tuple[KeyRecord, ...] | None = None
        self._aead = AESGCM(wrapping_key)
        self.kms_id = kms_id
        self.policy = policy or RotationPolicy()
        self.split = split
        self._clock = clock

    def __repr__(self) -> str:
        return f"KeySet(kms_id={self.kms_id!r}, policy={self.policy!r})"

    @property
    def key_type(self) -> EncryptionKeyType:
        return MULTI_PARTY if self.split is not None else SINGLE_PARTY

    @property
    def makes_keys(self) -> bool:
        return self.split is None or self.split.party == 1

    # -- reads -------------------------------------------------------------------------
    def held(self) -> list[KeyRecord]:
        cache = self._cache
        if cache is None:
            cache = self.reload()
        return list(cache)

    def get(self, key_id: str) -> KeyRecord | None:
        return next((r for r in self.held() if r.key_id == key_id), None)

    def reload(self) -> tuple[KeyRecord, ...]:
        """Read the records from the store again (at start, and after every write)."""
        self._cache = tuple(self._records.all())
        return self._cache

    def active(self, now: datetime | None = None) -> list[KeyRecord]:
        return active_keys(self, now or self._clock())

    def material(self, record: KeyRecord) -> bytes:
        """The private key (single party) or this KMS's XOR share, unwrapped."""
        blob = record.wrapped_private
        try:
            return self._aead.decrypt(blob[:12], blob[12:], _wrap_aad(record))
        except Exception:
            raise UnwrapError("the stored private half does not unwrap") from None

    # -- rotation ----------------------------------------------------------------------
    def run_rotation(self, now: datetime | None = None) -> RotationReport:
        """Destroy keys past retention; make successors due within ``successor_lead``."""
        now = now or self._clock()
        now_ms = to_ms(now)
        policy = self.policy
        retention_ms = _ms(policy.retention)
        destroyed: list[str] = []
        created: list[str] = []
        shares: list[PeerShare] = []
        try:
            held = []
            for record in self._records.all():
                if now_ms >= record.expiration_ms + retention_ms:
                    self._records.destroy(record.key_id)
                    destroyed.append(record.key_id)
                else:
                    held.append(record)
            self._make_successors(now_ms, held, created, shares)
        finally:
            self.reload()
        if created or destroyed:
            log.info("pakv rotation: created %s, destroyed %s", created, destroyed)
        return RotationReport(tuple(created), tuple(destroyed), tuple(shares))

    def _make_successors(
        self, now_ms: int, held: list[KeyRecord], created: list[str], shares: list[PeerShare]
    ) -> None:
        policy = self.policy
        if self.makes_keys:
            lead_ms = _ms(policy.overlap) + _ms(policy.successor_lead)
            for slot in range(policy.active_count):
                in_slot = [r for r in held if r.slot == slot]
                latest = max(in_slot, key=lambda r: r.expiration_ms, default=None)
                if latest is not None and now_ms < latest.expiration_ms - lead_ms:
                    continue
                activation_ms = now_ms
                if latest is not None:
                    activation_ms = max(now_ms, latest.expiration_ms - _ms(policy.overlap))
                record, share = self._make_key(slot, now_ms, activation_ms, held)
                held.append(record)
                created.append(record.key_id)
                if share is not None:
                    shares.append(share)

    def _make_key(
        self, slot: int, now_ms: int, activation_ms: int, held: list[KeyRecord]
    ) -> tuple[KeyRecord, PeerShare | None]:
        last = max([self._records.last_counter(), *(r.counter for r in held)])
        allocated = next_key_id(last, {r.ohttp_id for r in held})
        private = X25519PrivateKey.generate()
        private_bytes = private.private_bytes_raw()
        public = private.public_key().public_bytes_raw()
        share_for_peer: bytes | None = None
        party = 0
        if self.split is not None:
            party = 1
            share_for_peer = os.urandom(X25519_KEY_BYTES)
            private_bytes = bytes(a ^ b for a, b in zip(private_bytes, share_for_peer, strict=True))
        record = KeyRecord(
            key_id=allocated.key_id,
            counter=allocated.counter,
            slot=slot,
            public_key=public,
            wrapped_private=b"",
            creation_ms=now_ms,
            activation_ms=activation_ms,
            expiration_ms=activation_ms + _ms(self.policy.validity),
            key_type=self.key_type,
            party=party,
            peer_kms_id=self.split.peer_kms_id if self.split is not None else None,
        )
        record = self._wrapped(record, private_bytes)
        self._records.add(record)
        share = None
        if self.split is not None and share_for_peer is not None:
            assert self.split.peer_transfer_public_key is not None
            peer_key = X25519PublicKey.from_public_bytes(self.split.peer_transfer_public_key)
            sealed = SUITE.encrypt(share_for_peer, peer_key, info=_share_info(record.key_id))
            share = PeerShare(
                _replace(record, wrapped_private=sealed, party=2, peer_kms_id=self.kms_id)
            )
        return record, share

    def import_peer_share(self, share: PeerShare) -> KeyRecord:
        """Party 2: store the share the leader made for us, rewrapped under our key."""
        if self.split is None or self.split.party != 2:
            raise KeySetError("only party 2 of a split key set imports shares")
        assert self.split.transfer_private_key is not None
        theirs = share.record
        if theirs.party != 2 or theirs.key_type != MULTI_PARTY:
            raise KeySetError("this share is not for party 2 of a split key")
        try:
            material = SUITE.decrypt(
                theirs.wrapped_private,
                self.split.transfer_private_key,
                info=_share_info(theirs.key_id),
            )
        except Exception:
            raise UnwrapError("the peer share does not unwrap") from None
        existing = self._records.get(theirs.key_id)
        if existing is not None:
            return existing
        record = self._wrapped(_replace(theirs, peer_kms_id=self.split.peer_kms_id), material)
        try:
            self._records.add(record)
        finally:
            self.reload()
        return record

    def _wrapped(self, record: KeyRecord, private_bytes: bytes) -> KeyRecord:
        nonce = os.urandom(12)
        blob = nonce + self._aead.encrypt(nonce, private_bytes, _wrap_aad(record))
        return _replace(record, wrapped_private=blob)


def _replace(record: KeyRecord, **changes: object) -> KeyRecord:
    from dataclasses import replace

    return replace(record, **changes)  # type: ignore[arg-type]


def _ms(delta: timedelta) -> int:
    return int(delta.total_seconds() * 1000)


def _wrap_aad(record: KeyRecord) -> bytes:
    return _WRAP_LABEL + b"\x00" + record.key_id.encode() + b"\x00" + bytes([record.party])


def _share_info(key_id: str) -> bytes:
    return _SHARE_LABEL + b"\x00" + key_id.encode()


__all__ = [
    "ROTATION_INTERVAL",
    "ROTATION_INTERVAL_SECONDS",
    "KeySet",
    "KeySetError",
    "KeySource",
    "PeerShare",
    "RotationPolicy",
    "RotationReport",
    "SplitConfig",
    "UnwrapError",
    "active_keys",
    "key_id_for_counter",
    "recent_keys",
]
