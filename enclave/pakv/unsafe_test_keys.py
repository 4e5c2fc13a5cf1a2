"""UNSAFE_TEST_KEYS: a key source serving only the well-known K/V test key pair.

The pair (key id 64, ``4000000000000000`` as a coordinator id, public key
``87ey8XZPXAd+/+ytKv2GFUWW5j9zdepSJ2G4gebDwyM=``) is public test data in the Privacy
Sandbox repositories: anyone can decrypt what is encrypted to it. It exists for interop
tests with K/V servers in their test mode, is never used unless a caller constructs this
class by name, and logs a warning every time it is read.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.pakv.keyset import to_ms
from enclave.pakv.store import KeyRecord

UNSAFE_TEST_KEY_ID = "4000000000000000"
UNSAFE_TEST_OHTTP_KEY_ID = 64
UNSAFE_TEST_PUBLIC_KEY_B64 = "87ey8XZPXAd+/+ytKv2GFUWW5j9zdepSJ2G4gebDwyM="
# Every answer of a service serving this source carries this header (docs/pakv.md).
UNSAFE_TEST_KEYS_HEADER = "X-Pakv-Key-Mode"
UNSAFE_TEST_KEYS_MARK = "UNSAFE-TEST-KEYS"
UNSAFE_TEST_PRIVATE_KEY_HEX = "e7b292f49df28b8065992cdeadbc9d032a0e09e8476cb6d8d507212e7be3b9b4"

log = logging.getLogger("enclave.pakv.UNSAFE_TEST_KEYS")


def warn(what: str) -> None:
    log.warning("UNSAFE_TEST_KEYS: %s the PUBLICLY KNOWN K/V test key (id 64)", what)


def unsafe_test_private_key() -> X25519PrivateKey:
    warn("using")
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(UNSAFE_TEST_PRIVATE_KEY_HEX))


def unsafe_test_public_key() -> bytes:
    warn("using")
    return base64.b64decode(UNSAFE_TEST_PUBLIC_KEY_B64)


class UnsafeTestKeySource:
    """A ``KeySource`` with the one public test key, made and active at ``since`` (default
    2020-01-01) and expiring a century later."""

    def __init__(self, kms_id: str, *, since: datetime | None = None) -> None:
        start = since or datetime(2020, 1, 1, tzinfo=UTC)
        self.kms_id = kms_id
        self._record = KeyRecord(
            key_id=UNSAFE_TEST_KEY_ID,
            counter=2,
            slot=0,
            public_key=base64.b64decode(UNSAFE_TEST_PUBLIC_KEY_B64),
            wrapped_private=b"",
            creation_ms=to_ms(start),
            activation_ms=to_ms(start),
            expiration_ms=to_ms(start + timedelta(days=365 * 100)),
        )
        warn("serving")

    def held(self) -> list[KeyRecord]:
        warn("serving")
        return [self._record]

    def get(self, key_id: str) -> KeyRecord | None:
        warn("serving")
        return self._record if key_id == UNSAFE_TEST_KEY_ID else None

    def material(self, record: KeyRecord) -> bytes:
        warn("releasing")
        return bytes.fromhex(UNSAFE_TEST_PRIVATE_KEY_HEX)
