"""The quorum seal key, for platforms without hardware sealing (TDX, Nitro).

At initialisation the enclave draws a random 32-byte seal secret, splits it M-of-N with
Shamir over GF(2^8) and encrypts share i to custodian i's X25519 public key with HPKE
(RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM, from
pyca/cryptography, which ships it since 46: no further dependency). The share's metadata
(quorum id, index, threshold, count, commitment, custodian key id) is the HPKE ``info``, so
it cannot be altered without the share failing to decrypt.

To unseal after a restart, M custodians decrypt their shares (``decrypt_share``) and hand
the ``CustodianShare`` back; ``QuorumSealKeyProvider.from_shares`` checks the threshold,
rebuilds the secret and checks it against the commitment (HMAC under the secret, so it
reveals nothing about the secret to anyone holding fewer than M shares).

The seal key is HKDF(secret, info = canonical binding): a blob sealed under one measurement
does not unseal under another. Unlike SNP's derived key, nothing in hardware stops other
code from asking the custodians for the shares: custodians must hand shares only to an
enclave whose attestation they checked (send them over attested TLS, or HPKE-encrypted to
the enclave's attested key). That release policy lives with the custodians' tooling.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives import constant_time, hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.sealing.errors import (
    InsufficientShares,
    ShareDecryptionError,
    ShareMismatch,
)
from enclave.sealing.format import Binding
from enclave.sealing.shamir import Share, combine_shares, split_secret

SECRET_BYTES = 32
QUORUM_ID_BYTES = 16
KEY_ID_BYTES = 16
COMMITMENT_BYTES = 32
MIN_THRESHOLD = 2
MAX_CUSTODIANS = 255
MAX_ENCODED_SHARE_BYTES = 4096
SHARE_FORMAT_VERSION = 1

_HPKE_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_HPKE_INFO_LABEL = b"enclave-kms/quorum-share/v1"
_COMMITMENT_LABEL = b"enclave-kms/quorum-commitment/v1"
_HKDF_SALT = b"enclave-kms/quorum-seal-key/v1"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def custodian_key_id(public_key: X25519PublicKey) -> bytes:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(b"enclave-kms/custodian-key-id/v1" + raw).digest()[:KEY_ID_BYTES]


@dataclass(frozen=True)
class Custodian:
    """A person (or their token) who holds one share, known by an X25519 public key."""

    name: str
    public_key: X25519PublicKey

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError("a custodian name is 1..64 of [A-Za-z0-9._@-]")

    @property
    def key_id(self) -> bytes:
        return custodian_key_id(self.public_key)


@dataclass(frozen=True)
class QuorumPolicy:
    """M-of-N: ``threshold`` of ``custodians`` must cooperate to unseal."""

    threshold: int
    custodians: tuple[Custodian, ...]

    def __post_init__(self) -> None:
        count = len(self.custodians)
        if not MIN_THRESHOLD <= self.threshold <= count <= MAX_CUSTODIANS:
            raise ValueError(
                f"need {MIN_THRESHOLD} <= threshold <= custodians <= {MAX_CUSTODIANS}; "
                f"got threshold {self.threshold} of {count}"
            )
        if len({c.name for c in self.custodians}) != count:
            raise ValueError("custodian names must be distinct")
        if len({c.key_id for c in self.custodians}) != count:
            raise ValueError("custodian public keys must be distinct")


@dataclass(frozen=True)
class _ShareHeader:
    quorum_id: bytes
    index: int
    threshold: int
    share_count: int
    commitment: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.quorum_id, bytes) or len(self.quorum_id) != QUORUM_ID_BYTES:
            raise ValueError("quorum_id")
        if not isinstance(self.commitment, bytes) or len(self.commitment) != COMMITMENT_BYTES:
            raise ValueError("commitment")
        for value in (self.index, self.threshold, self.share_count):
            if type(value) is not int:
                raise ValueError("share numbers are integers")
        if not MIN_THRESHOLD <= self.threshold <= self.share_count <= MAX_CUSTODIANS:
            raise ValueError("threshold and share count")
        if not 1 <= self.index <= self.share_count:
            raise ValueError("index")

    def cbor_value(self) -> dict[str, Any]:
        return {
            "v": SHARE_FORMAT_VERSION,
            "quorum_id": self.quorum_id,
            "index": self.index,
            "threshold": self.threshold,
            "share_count": self.share_count,
            "commitment": self.commitment,
        }

    @classmethod
    def from_cbor_value(cls, value: dict[str, Any]) -> _ShareHeader:
        if value.get("v") != SHARE_FORMAT_VERSION:
            raise ValueError("share format version")
        return cls(
            value["quorum_id"],
            value["index"],
            value["threshold"],
            value["share_count"],
            value["commitment"],
        )


@dataclass(frozen=True)
class EncryptedShare:
    """What custodian ``custodian`` keeps: one share, HPKE-encrypted to their key."""

    header: _ShareHeader
    custodian: str
    custodian_key_id: bytes
    sealed: bytes

    @property
    def index(self) -> int:
        return self.header.index

    @property
    def threshold(self) -> int:
        return self.header.threshold

    def _hpke_info(self) -> bytes:
        return _hpke_info(self.header, self.custodian, self.custodian_key_id)

    def to_bytes(self) -> bytes:
        value = {
            **self.header.cbor_value(),
            "custodian": self.custodian,
            "custodian_key_id": self.custodian_key_id,
            "sealed": self.sealed,
        }
        return cbor2.dumps(value, canonical=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> EncryptedShare:
        value = _load_map(data, {"custodian", "custodian_key_id", "sealed"})
        try:
            header = _ShareHeader.from_cbor_value(value)
            custodian, key_id, sealed = (
                value["custodian"],
                value["custodian_key_id"],
                value["sealed"],
            )
            if not isinstance(custodian, str) or not _NAME_RE.fullmatch(custodian):
                raise ValueError("custodian")
            if not isinstance(key_id, bytes) or len(key_id) != KEY_ID_BYTES:
                raise ValueError("custodian_key_id")
            if not isinstance(sealed, bytes):
                raise ValueError("sealed")
        except (KeyError, ValueError) as exc:
            raise ShareMismatch(f"not an encrypted quorum share: bad field ({exc})") from None
        return cls(header, custodian, key_id, sealed)


@dataclass(frozen=True)
class CustodianShare:
    """A decrypted share, handed back by its custodian to unseal. Secret: keep it so."""

    header: _ShareHeader
    value: bytes = field(repr=False)

    @property
    def index(self) -> int:
        return self.header.index

    def to_bytes(self) -> bytes:
        return cbor2.dumps({**self.header.cbor_value(), "value": self.value}, canonical=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> CustodianShare:
        value = _load_map(data, {"value"})
        try:
            header = _ShareHeader.from_cbor_value(value)
            share_value = value["value"]
            if not isinstance(share_value, bytes) or len(share_value) != SECRET_BYTES:
                raise ValueError("value")
        except (KeyError, ValueError) as exc:
            raise ShareMismatch(f"not a custodian share: bad field ({exc})") from None
        return cls(header, share_value)


def create_quorum(
    policy: QuorumPolicy,
) -> tuple[QuorumSealKeyProvider, tuple[EncryptedShare, ...]]:
    """Draw a fresh seal secret; return its provider and one encrypted share per custodian."""
    secret = os.urandom(SECRET_BYTES)
    quorum_id = os.urandom(QUORUM_ID_BYTES)
    commitment = _commitment(secret, quorum_id)
    shares = split_secret(secret, policy.threshold, len(policy.custodians))
    encrypted = []
    for custodian, share in zip(policy.custodians, shares, strict=True):
        header = _ShareHeader(
            quorum_id, share.index, policy.threshold, len(policy.custodians), commitment
        )
        info = _hpke_info(header, custodian.name, custodian.key_id)
        sealed = _HPKE_SUITE.encrypt(share.value, custodian.public_key, info=info)
        encrypted.append(EncryptedShare(header, custodian.name, custodian.key_id, sealed))
    return QuorumSealKeyProvider(secret, quorum_id), tuple(encrypted)


def decrypt_share(share: EncryptedShare, private_key: X25519PrivateKey) -> CustodianShare:
    """The custodian's side: open their share with their private key."""
    offered = custodian_key_id(private_key.public_key())
    if not constant_time.bytes_eq(offered, share.custodian_key_id):
        raise ShareDecryptionError(
            f"share {share.index} is encrypted to another key than the one offered"
        )
    try:
        value = _HPKE_SUITE.decrypt(share.sealed, private_key, info=share._hpke_info())
    except Exception:
        value = None
    if value is None or len(value) != SECRET_BYTES:
        raise ShareDecryptionError(
            f"share {share.index} for {share.custodian} did not decrypt: altered or not theirs"
        )
    return CustodianShare(share.header, value)


@dataclass(frozen=True)
class QuorumSealKeyProvider:
    """Seal key = HKDF-SHA256(quorum secret, info = canonical binding)."""

    _secret: bytes = field(repr=False)
    quorum_id: bytes

    @classmethod
    def from_shares(cls, shares: Iterable[CustodianShare]) -> QuorumSealKeyProvider:
        """Rebuild the secret from at least ``threshold`` custodians' shares."""
        shares = list(shares)
        if not shares:
            raise InsufficientShares(0, MIN_THRESHOLD)
        first = shares[0].header
        by_index: dict[int, CustodianShare] = {}
        for share in shares:
            header = share.header
            if (header.quorum_id, header.threshold, header.share_count) != (
                first.quorum_id,
                first.threshold,
                first.share_count,
            ) or not constant_time.bytes_eq(header.commitment, first.commitment):
                raise ShareMismatch("the shares come from different quorums")
            seen = by_index.get(header.index)
            if seen is not None and not constant_time.bytes_eq(seen.value, share.value):
                raise ShareMismatch(f"two different shares carry index {header.index}")
            by_index[header.index] = share
        if len(by_index) < first.threshold:
            raise InsufficientShares(len(by_index), first.threshold)
        chosen: Sequence[Share] = [
            Share(index, by_index[index].value) for index in sorted(by_index)[: first.threshold]
        ]
        secret = combine_shares(chosen)
        if not constant_time.bytes_eq(_commitment(secret, first.quorum_id), first.commitment):
            raise ShareMismatch(
                "the shares do not rebuild the committed secret: at least one share is wrong"
            )
        return cls(secret, first.quorum_id)

    def derive_seal_key(self, binding: Binding) -> bytes:
        hkdf = HKDF(hashes.SHA256(), length=32, salt=_HKDF_SALT, info=binding.encode())
        return hkdf.derive(self._secret)


def _commitment(secret: bytes, quorum_id: bytes) -> bytes:
    return hmac.new(secret, _COMMITMENT_LABEL + quorum_id, hashlib.sha256).digest()


def _hpke_info(header: _ShareHeader, custodian: str, key_id: bytes) -> bytes:
    value = {**header.cbor_value(), "custodian": custodian, "custodian_key_id": key_id}
    return _HPKE_INFO_LABEL + cbor2.dumps(value, canonical=True)


def _load_map(data: bytes, extra_keys: set[str]) -> dict[str, Any]:
    if not isinstance(data, bytes) or len(data) > MAX_ENCODED_SHARE_BYTES:
        raise ShareMismatch("a quorum share must be bytes of at most 4096")
    try:
        value = cbor2.loads(data, tag_hook=_reject_tag)
    except Exception:
        raise ShareMismatch("a quorum share must be one CBOR map") from None
    expected = {"v", "quorum_id", "index", "threshold", "share_count", "commitment"} | extra_keys
    if not isinstance(value, dict) or set(value) != expected:
        raise ShareMismatch("a quorum share has exactly the fields of its format")
    return value


def _reject_tag(_decoder: object, _tag: object) -> object:
    raise ValueError("CBOR tags are not allowed")
