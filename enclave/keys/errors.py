"""Typed errors of the key hierarchy.

Caller faults (``KeyStateError``, ``KeyPurposeError``, ``KeyMetadataError``) name the key,
version and rule; data faults on secret-bearing paths (``DecryptionFailed``,
``SignatureInvalid``) are opaque so that they are no oracle.
"""

from __future__ import annotations


class KeyHierarchyError(Exception):
    """Base of every error raised by ``enclave.keys``."""


class KeyMetadataError(KeyHierarchyError):
    """A metadata record is malformed (unknown or missing field, bad value)."""


class KeyStateError(KeyHierarchyError):
    """The operation is not allowed in the key version's state (or the transition is not)."""


class KeyPurposeError(KeyHierarchyError):
    """The key's purpose or algorithm does not allow the operation."""


class WrongWrappingKey(KeyHierarchyError):
    """The KEK given is not the one that wrapped this version."""


class CiphertextFormatError(KeyHierarchyError):
    """The ciphertext envelope is malformed or names another key."""


class DecryptionFailed(KeyHierarchyError):
    """Authenticated decryption failed. Opaque on purpose: no detail on why."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


class SignatureInvalid(KeyHierarchyError):
    """The signature does not verify. Opaque on purpose."""

    def __init__(self) -> None:
        super().__init__("signature is not valid")
