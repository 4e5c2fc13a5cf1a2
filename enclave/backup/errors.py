"""Errors of backup, restore and replication, grouped by who is at fault.

``BundleInvalid`` (and subclasses): the bundle bytes are not a bundle this KMS signed, or
were altered (the untrusted host or the storage is at fault). ``RestoreFailed``: the shares
or key offered do not open the bundle; deliberately one opaque message (no oracle on which
share or byte was wrong). ``CustodianError``: the custodians' configuration or tooling.
``ReplicationRefused`` (and subclasses): a secondary that did not prove, by attestation,
that it runs reviewed code on genuine hardware.
"""

from __future__ import annotations

RESTORE_FAILED_MESSAGE = "the backup could not be opened with the shares or key offered"


class BackupError(Exception):
    """Base class of every error raised by ``enclave.backup``."""

    type = "backup-error"


class BundleInvalid(BackupError):
    """The bundle does not verify. Base class: catch this in ``kms backup verify``."""

    type = "backup-invalid"


class BundleMalformed(BundleInvalid):
    """The bytes are not a well-formed, canonically encoded bundle of this format."""

    type = "backup-malformed"


class IntegrityMismatch(BundleInvalid):
    """The bundle's integrity hash does not match its content."""

    type = "backup-integrity"


class SignatureInvalid(BundleInvalid):
    """The bundle's signature does not verify under the KMS identity key offered."""

    type = "backup-signature"


class ManifestInconsistent(BundleInvalid):
    """The manifest contradicts itself or the bundle (counts, shares, custodians, sizes)."""

    type = "backup-manifest"


class RestoreFailed(BackupError):
    """The bundle did not open: too few or wrong shares, a wrong key, or altered content."""

    type = "backup-restore-failed"

    def __init__(self, detail: str = RESTORE_FAILED_MESSAGE) -> None:
        super().__init__(detail)


class InsufficientShares(RestoreFailed):
    """Fewer distinct shares than the bundle's threshold were offered (not secret)."""

    type = "backup-insufficient-shares"

    def __init__(self, have: int, need: int) -> None:
        super().__init__(f"{have} distinct share(s) offered, {need} needed to restore")
        self.have = have
        self.need = need


class CustodianError(BackupError, ValueError):
    """The custodian configuration is malformed, or a custodian's share cannot be opened."""

    type = "backup-custodian"


class ReplicationRefused(BackupError):
    """The primary refused to release a backup key to a secondary. Base class."""

    type = "replication-refused"


class ChallengeInvalid(ReplicationRefused):
    """The challenge is unknown, already used or expired."""

    type = "replication-challenge"


class AttestationInvalid(ReplicationRefused):
    """The secondary's evidence did not verify (signature, chain, binding to its key)."""

    type = "replication-attestation"


class MeasurementRefused(ReplicationRefused):
    """Genuine evidence, but the secondary's measurement (or another claim) is not one the
    reference policy accepts."""

    type = "replication-measurement"

    def __init__(self, detail: str, mismatches: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.mismatches = mismatches
