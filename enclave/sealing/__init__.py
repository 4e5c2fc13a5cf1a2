"""Sealing: the versioned sealed-blob format and the seal-key providers.

Public API: ``Binding``, ``Sealer``, ``UnsealError`` and the providers under
``enclave.sealing.providers`` (simulated, SNP derived key, quorum).
"""

from __future__ import annotations

from enclave.sealing.errors import (
    InsufficientShares,
    QuorumError,
    SealingError,
    SealKeyUnavailable,
    ShareDecryptionError,
    ShareMismatch,
    UnsealError,
)
from enclave.sealing.format import ALGORITHM, FORMAT_VERSION, Binding, SealedBlob
from enclave.sealing.sealer import Sealer, SealKeyProvider, Unsealed

__all__ = [
    "ALGORITHM",
    "FORMAT_VERSION",
    "Binding",
    "InsufficientShares",
    "QuorumError",
    "SealKeyProvider",
    "SealKeyUnavailable",
    "SealedBlob",
    "Sealer",
    "SealingError",
    "ShareDecryptionError",
    "ShareMismatch",
    "UnsealError",
    "Unsealed",
]
