"""UNSAFE: the well-known K/V test key pair, public in the Privacy Sandbox repositories.

Key id 64 (``4000000000000000`` as a coordinator id), public key
``87ey8XZPXAd+/+ytKv2GFUWW5j9zdepSJ2G4gebDwyM=``. Anyone can decrypt what is encrypted to
it: use it only for interop tests against K/V servers running in their test mode. Every
use logs a warning (``enclave.pakv.unsafe_test_keys`` holds the one copy of the pair).
"""

from __future__ import annotations

import logging

from enclave.pakv.unsafe_test_keys import (
    UNSAFE_TEST_KEY_ID,
    UNSAFE_TEST_OHTTP_KEY_ID,
    UNSAFE_TEST_PUBLIC_KEY_B64,
    unsafe_test_private_key,
    unsafe_test_public_key,
)

log = logging.getLogger("kms.pakv.UNSAFE_TEST_KEYS")

__all__ = [
    "UNSAFE_TEST_KEY_ID",
    "UNSAFE_TEST_OHTTP_KEY_ID",
    "UNSAFE_TEST_PUBLIC_KEY_B64",
    "log",
    "unsafe_test_private_key",
    "unsafe_test_public_key",
]
