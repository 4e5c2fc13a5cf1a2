"""Offline audit-log verification for ``kms audit verify``: no connection, only the export
file and the audit public key (pinned in the profile's ``[audit]`` table, or, without a
pin, the key the export itself carries, which then proves only self-consistency).

The checks are the enclave's pure verifier (``enclave.audit.verify``: no I/O, no key
material), so the client and the KMS judge a log the same way.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.audit.verify import VerificationReport, read_header, verify_export

MAX_EXPORT_BYTES = 4 * 1024 * 1024 * 1024


class AuditFileError(ValueError):
    """The file cannot be read as an audit export at all."""


@dataclass(frozen=True)
class VerifyOutcome:
    report: VerificationReport
    key_source: str  # "profile" or "export"
    kms_id: str | None

    @property
    def intact(self) -> bool:
        return self.report.intact

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {
            "intact": r.intact,
            "records": r.records,
            "checkpoints": r.checkpoints,
            "last_seq": r.last_seq,
            "last_checkpoint_seq": r.last_checkpoint_seq,
            "key_source": self.key_source,
            "kms_id": self.kms_id,
            "problems": [{"seq": p.seq, "line": p.line, "reason": p.reason} for p in r.problems],
        }

    def lines(self) -> list[str]:
        r = self.report
        out = []
        if r.intact:
            out.append(
                f"audit log intact: {r.records} records, {r.checkpoints} signed checkpoints, "
                f"last record {r.last_seq} (covered by the checkpoint at {r.last_checkpoint_seq})"
            )
        else:
            out.append(f"audit log NOT intact: {len(r.problems)} problem(s)")
            out.extend(f"  {p}" for p in r.problems)
        if self.key_source == "export":
            out.append(
                "note: no pinned audit key (give a profile with [audit] public_key): the "
                "export was checked against the key it carries itself"
            )
        return out


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AuditFileError("the audit public key is not base64") from None
    if len(key) != 32:
        raise AuditFileError("the audit public key is not a 32-byte Ed25519 key")
    return key


def read_export(path: Path) -> list[bytes]:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_EXPORT_BYTES + 1)
    except OSError as exc:
        raise AuditFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_EXPORT_BYTES:
        raise AuditFileError(f"{path} is larger than {MAX_EXPORT_BYTES} bytes")
    return data.splitlines(keepends=True)


def export_key(lines: list[bytes]) -> tuple[bytes, str | None]:
    """The audit public key and kms id the export's header carries."""
    if not lines:
        raise AuditFileError("the export is empty")
    try:
        header = read_header(lines[0])
        return decode_key(str(header["audit_public_key"])), header.get("kms_id")
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditFileError(f"not a KMS audit export: {exc}") from None


def verify_file(path: Path, pinned_key: bytes | None) -> VerifyOutcome:
    lines = read_export(path)
    kms_id: str | None = None
    with contextlib.suppress(AuditFileError):  # verify_export names a bad header itself
        _, kms_id = export_key(lines)
    report = verify_export(lines, pinned_public_key=pinned_key)
    return VerifyOutcome(report, "profile" if pinned_key is not None else "export", kms_id)
