"""Typed errors of the HSM layer.

Grouped by who is at fault: the environment (library or token missing), the caller (bad
arguments, closed backend), or the data (a wrapped blob that does not unwrap). Messages
name the operation and, at most, the PKCS#11 error class; they never carry PINs, key
material, wrapped blobs or plaintext. Every unwrap failure is the same opaque
``HsmUnwrapError`` so the error is no oracle on the blob's content.
"""

from __future__ import annotations


class HsmError(Exception):
    """Base of every error raised by ``enclave.hsm``."""


class HsmUnavailable(HsmError):
    """The PKCS#11 library or token cannot be found, loaded or reached (environment fault)."""


class HsmConfigError(HsmError):
    """The HSM configuration is inconsistent, e.g. a second token dir in one process."""


class HsmAuthenticationError(HsmError):
    """The token refused the PIN."""


class HsmClosed(HsmError):
    """The backend was used after ``close()`` (caller misuse)."""


class HsmKeyNotFound(HsmError):
    """A key the caller named is not on the token."""


class HsmPolicyError(HsmError):
    """A key on the token does not have the protection attributes the KMS requires."""


class HsmUnwrapError(HsmError):
    """A wrapped key did not unwrap (wrong KEK, tampered or truncated blob). Opaque on purpose."""

    def __init__(self) -> None:
        super().__init__("wrapped key could not be unwrapped")


class HsmOperationError(HsmError):
    """A PKCS#11 operation failed; carries the operation name and the PKCS#11 error class."""

    def __init__(self, operation: str, pkcs11_error: str) -> None:
        super().__init__(f"HSM operation {operation!r} failed ({pkcs11_error})")
        self.operation = operation
        self.pkcs11_error = pkcs11_error
