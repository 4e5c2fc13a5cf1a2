"""Errors of the sealing layer, grouped by who is at fault.

Secret-bearing failures are opaque: every way a sealed blob can fail to unseal (wrong
measurement, another launch configuration, a tampered header or ciphertext, truncation, a
wrong version, garbage) ends in the one ``UnsealError`` with one fixed message, raised with
no chained cause, so the error is no oracle (as ``cryptography.fernet.InvalidToken``).

Errors of the environment (the platform cannot give a seal key) and of the operators (too
few quorum shares) are not secret-bearing and say plainly what went wrong.
"""

from __future__ import annotations

UNSEAL_ERROR_MESSAGE = "the sealed blob could not be unsealed"


class SealingError(Exception):
    """Base class of every error raised by ``enclave.sealing``."""


class UnsealError(SealingError):
    """A sealed blob did not unseal. Deliberately says nothing about why."""

    def __init__(self) -> None:
        super().__init__(UNSEAL_ERROR_MESSAGE)


class SealKeyUnavailable(SealingError):
    """The platform could not provide a seal key (device missing, firmware refusal)."""


class QuorumError(SealingError):
    """Base class of quorum (Shamir share) errors; operators are at fault, not the blob."""


class InsufficientShares(QuorumError):
    """Fewer distinct valid shares than the threshold were presented."""

    def __init__(self, have: int, need: int) -> None:
        super().__init__(f"{have} distinct share(s) presented, {need} needed to reconstruct")
        self.have = have
        self.need = need


class ShareMismatch(QuorumError):
    """The shares do not belong together or do not reconstruct the committed secret."""


class ShareDecryptionError(QuorumError):
    """A custodian's encrypted share did not decrypt with the key offered (or was altered)."""
