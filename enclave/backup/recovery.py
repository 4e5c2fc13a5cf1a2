"""How custodians' shares reach a restoring enclave: HPKE to a key the enclave attests.

A custodian opens their share on their own machine (``custodians.open_share``, with their
X25519 private key); the decrypted share must then reach the restoring enclave and no one
else, through hosts and networks nobody trusts. The restoring enclave holds a *restore
recipient key* (X25519, made inside the enclave, sealed to this launch under
``restore/recipient.key.sealed`` so a restart of the same launch keeps it):

1. the custodian's tool asks ``GET /v1/backup/restore/recipient?nonce=<64 hex>`` and gets
   the recipient public key with fresh evidence whose report_data is
   ``SHA-512("kms-restore-recipient/v1" || 0x00 || SHA-256(public key) || nonce)``
   (``recipient_report_data``): the tool verifies the evidence with the profile's trust
   roots and reference policy (the same checks as any attestation of this KMS) and that
   it binds this key and its own nonce;
2. it seals the share with HPKE (RFC 9180 base mode, DHKEM(X25519)/HKDF-SHA256/
   AES-256-GCM) to that key, with ``info = "enclave-kms/restore-share/v1" 0x00 backup_id
   0x00 recipient public key`` (``share_info``): a sealed share opens only in that enclave
   and only for that backup;
3. the sealed share may then travel any way (``POST /v1/backup/restore/shares``, a file
   carried by hand); the enclave keeps it as it came (``restore/shares/``) and opens it
   only inside the executor of an approved ``backup.restore``.

Must never: accept a share sealed to another recipient or for another backup (HPKE fails),
write a decrypted share or the recipient private key anywhere but sealed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave.attestation.evidence import Evidence, EvidenceProvider, report_data_for
from enclave.backup.errors import BackupError, RestoreFailed
from enclave.backup.manifest import BACKUP_ID_RE
from enclave.sealing.providers.quorum import CustodianShare
from enclave.sealing.sealer import Sealer

RECIPIENT_LABEL = b"kms-restore-recipient/v1"
SHARE_INFO_LABEL = b"enclave-kms/restore-share/v1"
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
NONCE_BYTES = 32
MAX_SEALED_SHARE_BYTES = 16 * 1024
MAX_SHARES_PER_BACKUP = 64
RECIPIENT_FILE = Path("restore") / "recipient.key.sealed"
SHARES_DIR = Path("restore") / "shares"
BUNDLES_DIR = Path("restore") / "bundles"


def raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def recipient_report_data(public_key: bytes, nonce: bytes) -> bytes:
    """The report_data binding a restore recipient key to a custodian's nonce."""
    return report_data_for(RECIPIENT_LABEL, public_key, nonce)


def share_info(backup_id: str, recipient: bytes) -> bytes:
    return SHARE_INFO_LABEL + b"\x00" + backup_id.encode() + b"\x00" + recipient


def seal_share(share: CustodianShare | bytes, recipient: bytes, backup_id: str) -> bytes:
    """The custodian's side: HPKE-seal a decrypted share to the attested recipient key."""
    if not BACKUP_ID_RE.fullmatch(backup_id):
        raise BackupError("a backup id is bak_ + 32 hex digits")
    data = share.to_bytes() if isinstance(share, CustodianShare) else share
    public = X25519PublicKey.from_public_bytes(recipient)
    return SUITE.encrypt(data, public, info=share_info(backup_id, recipient))


@dataclass(frozen=True)
class RecipientOffer:
    """What ``GET /v1/backup/restore/recipient`` answers."""

    public_key: bytes
    nonce: bytes
    evidence: Evidence = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "public_key": _b64(self.public_key),
            "nonce": self.nonce.hex(),
            "platform": self.evidence.platform,
            "evidence": _b64(self.evidence.evidence),
            "certs": [_b64(c) for c in self.evidence.certs],
            "collateral": [_b64(c) for c in self.evidence.collateral],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecipientOffer:
        keys = {"public_key", "nonce", "platform", "evidence", "certs", "collateral"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise BackupError("a recipient offer has exactly the fields of its form")
        try:
            return cls(
                public_key=_unb64(data["public_key"]),
                nonce=bytes.fromhex(str(data["nonce"])),
                evidence=Evidence(
                    platform=data["platform"],
                    evidence=_unb64(data["evidence"]),
                    certs=tuple(_unb64(c) for c in data["certs"]),
                    collateral=tuple(_unb64(c) for c in data["collateral"]),
                ),
            )
        except (ValueError, TypeError):
            raise BackupError("a recipient offer field is malformed") from None


class RestoreRecipient:
    """The restoring enclave's side: its recipient key, sealed to this launch."""

    def __init__(self, private_key: X25519PrivateKey, provider: EvidenceProvider) -> None:
        self._private = private_key
        self._provider = provider

    @classmethod
    def load_or_create(
        cls, kms_dir: Path, sealer: Sealer, provider: EvidenceProvider
    ) -> RestoreRecipient:
        from enclave.bootstrap import unseal_file, write_atomically

        path = kms_dir / RECIPIENT_FILE
        if path.exists():
            raw = unseal_file(sealer, path, "the restore recipient key", "restore")
            return cls(X25519PrivateKey.from_private_bytes(raw), provider)
        key = X25519PrivateKey.generate()
        write_atomically(path, sealer.seal(key.private_bytes_raw()))
        return cls(key, provider)

    @property
    def public_key(self) -> bytes:
        return raw_public(self._private.public_key())

    def offer(self, nonce: bytes) -> RecipientOffer:
        if len(nonce) != NONCE_BYTES:
            raise BackupError("the nonce is 32 bytes")
        evidence = self._provider.evidence(recipient_report_data(self.public_key, nonce))
        return RecipientOffer(self.public_key, nonce, evidence)

    def open(self, sealed: bytes, backup_id: str) -> CustodianShare:
        """A sealed share's content. One opaque error for every failure."""
        try:
            data = SUITE.decrypt(sealed, self._private, info=share_info(backup_id, self.public_key))
            return CustodianShare.from_bytes(data)
        except Exception:  # HPKE or share parsing: all mean "not a share for us"
            raise RestoreFailed() from None


class StagedRestore:
    """Bundles and sealed shares waiting for an approved ``backup.restore`` (host disk;
    bundles are signed and encrypted, shares sealed to the recipient key)."""

    def __init__(self, kms_dir: Path) -> None:
        self._dir = kms_dir

    def put_bundle(self, backup_id: str, bundle: bytes) -> Path:
        from enclave.bootstrap import write_atomically

        path = self._bundle_path(backup_id)
        write_atomically(path, bundle)
        return path

    def bundle(self, backup_id: str) -> bytes | None:
        path = self._bundle_path(backup_id)
        return path.read_bytes() if path.exists() else None

    def put_share(self, backup_id: str, sealed: bytes) -> str:
        from enclave.bootstrap import write_atomically

        if not 0 < len(sealed) <= MAX_SEALED_SHARE_BYTES:
            raise BackupError(f"a sealed share is 1..{MAX_SEALED_SHARE_BYTES} bytes")
        directory = self._shares_dir(backup_id)
        if directory.exists() and len(list(directory.iterdir())) >= MAX_SHARES_PER_BACKUP:
            raise BackupError("too many shares for this backup")
        name = hashlib.sha256(sealed).hexdigest()[:32]
        write_atomically(directory / f"{name}.hpke", sealed)
        return name

    def shares(self, backup_id: str) -> list[bytes]:
        directory = self._shares_dir(backup_id)
        if not directory.is_dir():
            return []
        return [p.read_bytes()[:MAX_SEALED_SHARE_BYTES] for p in sorted(directory.glob("*.hpke"))]

    def _bundle_path(self, backup_id: str) -> Path:
        _check_id(backup_id)
        return self._dir / BUNDLES_DIR / f"{backup_id}.bundle"

    def _shares_dir(self, backup_id: str) -> Path:
        _check_id(backup_id)
        return self._dir / SHARES_DIR / backup_id


def _check_id(backup_id: str) -> None:
    if not isinstance(backup_id, str) or not BACKUP_ID_RE.fullmatch(backup_id):
        raise BackupError("a backup id is bak_ + 32 hex digits")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: object) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9+/=]*", value):
        raise ValueError("base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("base64 text") from None
