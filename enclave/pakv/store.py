"""Persistence of the request-key set over the ``Store`` protocol.

Records of kind ``pakv_keys`` (id = the coordinator key id) hold one key each as canonical
JSON; the private half (or XOR share) inside is already AES-256-GCM-wrapped under the key
set's wrapping key (``keyset``), and the Store adds its own per-record AEAD, so no private
half is ever on disk in clear. ``pakv_meta/counter`` keeps the highest counter ever used so
that a destroyed key's id is never reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from enclave.pakv.formats import MULTI_PARTY, SINGLE_PARTY, EncryptionKeyType, b64, unb64
from enclave.pakv.keyids import check_key_id, ohttp_key_id
from enclave.storage.store import Store

KEYS_KIND = "pakv_keys"
META_KIND = "pakv_meta"
COUNTER_ID = "counter"
RECORD_FORMAT = 1


class KeyRecordError(ValueError):
    """A stored key record is malformed (the storage is at fault)."""


@dataclass(frozen=True)
class KeyRecord:
    """One request key: public half in clear, private half (or share) wrapped."""

    key_id: str
    counter: int
    slot: int
    public_key: bytes
    wrapped_private: bytes = field(repr=False)
    creation_ms: int
    activation_ms: int
    expiration_ms: int
    key_type: EncryptionKeyType = SINGLE_PARTY
    party: int = 0  # 0: single party; 1 or 2: which XOR share this KMS holds
    peer_kms_id: str | None = None

    @property
    def ohttp_id(self) -> int:
        return ohttp_key_id(self.key_id)

    def is_active(self, now_ms: int) -> bool:
        return self.activation_ms <= now_ms < self.expiration_ms

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "v": RECORD_FORMAT,
            "keyId": self.key_id,
            "counter": self.counter,
            "slot": self.slot,
            "publicKey": b64(self.public_key),
            "wrappedPrivate": b64(self.wrapped_private),
            "creationMs": self.creation_ms,
            "activationMs": self.activation_ms,
            "expirationMs": self.expiration_ms,
            "keyType": self.key_type,
            "party": self.party,
            "peerKmsId": self.peer_kms_id,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyRecord:
        try:
            doc = json.loads(data)
            if doc.pop("v") != RECORD_FORMAT:
                raise ValueError("unknown record format")
            key_type = doc["keyType"]
            if key_type not in (SINGLE_PARTY, MULTI_PARTY):
                raise ValueError("unknown key type")
            record = cls(
                key_id=check_key_id(doc["keyId"]),
                counter=int(doc["counter"]),
                slot=int(doc["slot"]),
                public_key=unb64(doc["publicKey"], "publicKey"),
                wrapped_private=unb64(doc["wrappedPrivate"], "wrappedPrivate"),
                creation_ms=int(doc["creationMs"]),
                activation_ms=int(doc["activationMs"]),
                expiration_ms=int(doc["expirationMs"]),
                key_type=key_type,
                party=int(doc["party"]),
                peer_kms_id=doc["peerKmsId"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyRecordError(f"malformed key record: {exc}") from None
        return record


class KeySetStore:
    """Typed access to the key records in a ``Store``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def all(self) -> list[KeyRecord]:
        out = []
        for ref in self._store.list(KEYS_KIND):
            record = self._store.get(KEYS_KIND, ref.id)
            if record is not None:
                out.append(KeyRecord.from_bytes(record.value))
        return out

    def get(self, key_id: str) -> KeyRecord | None:
        record = self._store.get(KEYS_KIND, key_id)
        return KeyRecord.from_bytes(record.value) if record is not None else None

    def last_counter(self) -> int:
        record = self._store.get(META_KIND, COUNTER_ID)
        return int(record.value.decode()) if record is not None else 0

    def add(self, record: KeyRecord) -> None:
        """Store a new key and advance the counter, in one transaction."""
        with self._store.transaction() as tx:
            meta = tx.get(META_KIND, COUNTER_ID)
            last = int(meta.value.decode()) if meta is not None else 0
            tx.put(KEYS_KIND, record.key_id, record.to_bytes(), expected_version=0)
            tx.put(
                META_KIND,
                COUNTER_ID,
                str(max(last, record.counter)).encode(),
                expected_version=meta.version if meta is not None else 0,
            )

    def destroy(self, key_id: str) -> bool:
        return self._store.delete(KEYS_KIND, key_id)
