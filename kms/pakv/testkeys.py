"""UNSAFE: the well-known K/V test key pair, public in the Privacy Sandbox repositories.

Key id 64 (``4000000000000000`` as a coordinator id), public key
``87ey8XZPXAd+/+ytKv2GFUWW5j9zdepSJ2G4gebDwyM=``. Anyone can decrypt what is encrypted to
it: use it only for interop tests against K/V servers running in their test mode. Every
use logs a warning.
"""

from __future__ import annotations

import base64
import logging

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

UNSAFE_TEST_KEY_ID = "4000000000000000"
UNSAFE_TEST_OHTTP_KEY_ID = 64
UNSAFE_TEST_PUBLIC_KEY_B64 = "87ey8XZPXAd+/+ytKv2GFUWW5j9zdepSJ2G4gebDwyM="
_UNSAFE_TEST_PRIVATE_KEY_HEX = "e7b292f49df28b8065992cdeadbc9d032a0e09e8476cb6d8d507212e7be3b9b4"

log = logging.getLogger("kms.pakv.UNSAFE_TEST_KEYS")


def unsafe_test_private_key() -> X25519PrivateKey:
    log.warning("UNSAFE_TEST_KEYS: using the PUBLICLY KNOWN K/V test private key (id 64)")
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(_UNSAFE_TEST_PRIVATE_KEY_HEX))


def unsafe_test_public_key() -> bytes:
    log.warning("UNSAFE_TEST_KEYS: using the PUBLICLY KNOWN K/V test public key (id 64)")
    return base64.b64decode(UNSAFE_TEST_PUBLIC_KEY_B64)
