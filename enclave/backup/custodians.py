"""Backup custodians: who holds a share of each backup key, and the custodian's side.

The backup key of every bundle is split M-of-N among the custodians with the sealing
quorum code (``enclave.sealing.providers.quorum``: Shamir over GF(2^8), each share
HPKE-encrypted to one custodian's X25519 public key, a commitment that catches a wrong
share); this module adds no second secret sharing. The custodians come from the attested
launch configuration (or a quorum-approved change of it)::

    "backup": {"threshold": M,
               "custodians": [{"name": "carol", "public_key": "<X25519, hex or base64>"}]}

To restore, each of M custodians runs ``open_share`` on their own machine with their
private key and hands the resulting ``CustodianShare`` (bytes: ``to_bytes()``) to the
restoring enclave, over attested TLS or HPKE-encrypted to its attested key.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from enclave.backup.errors import CustodianError
from enclave.sealing.errors import QuorumError
from enclave.sealing.providers.quorum import (
    Custodian,
    CustodianShare,
    EncryptedShare,
    QuorumPolicy,
    custodian_key_id,
    decrypt_share,
)

__all__ = [
    "Custodian",
    "CustodianShare",
    "EncryptedShare",
    "QuorumPolicy",
    "custodian_policy_from_config",
    "open_share",
    "share_for",
]


def custodian_policy_from_config(config: Mapping[str, Any]) -> QuorumPolicy:
    """The custodian quorum of a launch configuration (whole config, or its ``backup``)."""
    section = config.get("backup", config)
    if not isinstance(section, Mapping) or set(section) != {"threshold", "custodians"}:
        raise CustodianError("the backup section has exactly threshold and custodians")
    entries = section["custodians"]
    if not isinstance(entries, list | tuple):
        raise CustodianError("backup.custodians is a list")
    custodians = []
    for entry in entries:
        if not isinstance(entry, Mapping) or set(entry) != {"name", "public_key"}:
            raise CustodianError("a custodian is {name, public_key}")
        custodians.append(Custodian(str(entry["name"]), _x25519(entry["public_key"])))
    try:
        return QuorumPolicy(section["threshold"], tuple(custodians))
    except (ValueError, TypeError) as exc:
        raise CustodianError(f"backup custodians: {exc}") from None


def share_for(bundle: bytes, private_key: X25519PrivateKey) -> EncryptedShare:
    """The share of ``bundle`` encrypted to ``private_key``'s public key."""
    from enclave.backup.bundle import Bundle

    wanted = custodian_key_id(private_key.public_key())
    for share in Bundle.from_bytes(bundle).encrypted_shares():
        if share.custodian_key_id == wanted:
            return share
    raise CustodianError("no share of this bundle is encrypted to this custodian key")


def open_share(bundle: bytes, private_key: X25519PrivateKey) -> CustodianShare:
    """The custodian's side: decrypt their share of ``bundle``'s backup key."""
    share = share_for(bundle, private_key)
    try:
        return decrypt_share(share, private_key)
    except QuorumError as exc:
        raise CustodianError(str(exc)) from None


def _x25519(value: object) -> X25519PublicKey:
    raw: bytes | None = None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raw = bytes.fromhex(text)
        else:
            try:
                padded = text + "=" * (-len(text) % 4)
                raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raw = None
    elif isinstance(value, bytes):
        raw = value
    if raw is None or len(raw) != 32:
        raise CustodianError("a custodian public key is a 32-byte X25519 key, hex or base64")
    return X25519PublicKey.from_public_bytes(raw)
