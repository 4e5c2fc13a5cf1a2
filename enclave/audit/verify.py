"""Offline verification of an exported audit log: the chain, and the signed checkpoints.

Pure: takes the lines of an export and the pinned audit public key, returns a report that
names every broken record by its sequence number. Used by ``kms audit verify``.

What each attack looks like: an altered record no longer matches its own hash (or, if
the hash was recomputed, the next record's ``prev_hash``); a removed record leaves a gap
in the sequence; reordered or inserted records break the sequence and the chain; a
removed tail is caught by the final checkpoint the export ends with.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from enclave.audit.records import (
    GENESIS_HASH,
    HEADER_TYPE,
    AuditRecord,
    signature_message,
)


@dataclass(frozen=True)
class Problem:
    seq: int | None
    line: int
    reason: str

    def __str__(self) -> str:
        where = f"record {self.seq}" if self.seq is not None else f"line {self.line}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class VerificationReport:
    records: int
    checkpoints: int
    last_seq: int | None
    last_checkpoint_seq: int | None
    problems: tuple[Problem, ...] = field(default=())

    @property
    def intact(self) -> bool:
        return not self.problems


def read_header(first_line: bytes) -> dict[str, str]:
    header = json.loads(first_line)
    if not isinstance(header, dict) or header.get("type") != HEADER_TYPE:
        raise ValueError("not a KMS audit export (missing header line)")
    return header


def verify_export(
    lines: list[bytes], *, pinned_public_key: bytes | None = None
) -> VerificationReport:
    """Verify an export: its header line, then every record line."""
    if not lines:
        return VerificationReport(0, 0, None, None, (Problem(None, 1, "empty export"),))
    try:
        header = read_header(lines[0])
        public_key_bytes = base64.b64decode(header["audit_public_key"])
    except (ValueError, KeyError, TypeError):
        return VerificationReport(0, 0, None, None, (Problem(None, 1, "bad export header"),))
    problems: list[Problem] = []
    if pinned_public_key is not None and public_key_bytes != pinned_public_key:
        problems.append(Problem(None, 1, "audit key in the export is not the pinned key"))
    public_key = Ed25519PublicKey.from_public_bytes(public_key_bytes)
    report = verify_records(lines[1:], public_key, first_line_number=2)
    return VerificationReport(
        report.records,
        report.checkpoints,
        report.last_seq,
        report.last_checkpoint_seq,
        tuple(problems) + report.problems,
    )


def verify_records(
    lines: list[bytes], public_key: Ed25519PublicKey, *, first_line_number: int = 1
) -> VerificationReport:
    problems: list[Problem] = []
    expected_seq: int | None = None
    prev_hash: str | None = None
    last_seq: int | None = None
    last_checkpoint: int | None = None
    records = checkpoints = 0
    for offset, line in enumerate(lines):
        number = first_line_number + offset
        if not line.strip():
            continue
        try:
            record = AuditRecord.from_json(json.loads(line))
        except (ValueError, TypeError):
            guess = expected_seq
            problems.append(Problem(guess, number, "unreadable record (altered)"))
            if expected_seq is not None:
                expected_seq += 1
            prev_hash = None
            continue
        records += 1
        if expected_seq is None:
            expected_seq = record.seq
            if record.seq == 0 and record.prev_hash != GENESIS_HASH:
                problems.append(
                    Problem(record.seq, number, "first record does not start the chain")
                )
        if record.seq != expected_seq:
            if record.seq > expected_seq:
                missing = (
                    f"record {expected_seq} missing"
                    if record.seq == expected_seq + 1
                    else f"records {expected_seq}..{record.seq - 1} missing"
                )
                problems.append(Problem(expected_seq, number, missing + " (removed)"))
            else:
                problems.append(
                    Problem(
                        record.seq,
                        number,
                        f"out of order: expected {expected_seq} (reordered or inserted)",
                    )
                )
        if record.computed_hash() != record.hash:
            problems.append(
                Problem(record.seq, number, "content does not match its hash (altered)")
            )
        if prev_hash is not None and record.prev_hash != prev_hash:
            problems.append(Problem(record.seq, number, "does not chain to the record before it"))
        if record.is_checkpoint:
            checkpoints += 1
            if not _checkpoint_valid(record, public_key):
                problems.append(Problem(record.seq, number, "checkpoint signature is invalid"))
            else:
                last_checkpoint = record.seq
        prev_hash = record.hash
        last_seq = record.seq
        expected_seq = max(expected_seq, record.seq) + 1
    if records and (last_checkpoint is None or last_checkpoint != last_seq):
        problems.append(
            Problem(
                last_seq,
                len(lines) + first_line_number - 1,
                "log does not end with a signed checkpoint (truncated?)",
            )
        )
    return VerificationReport(records, checkpoints, last_seq, last_checkpoint, tuple(problems))


def _checkpoint_valid(record: AuditRecord, public_key: Ed25519PublicKey) -> bool:
    if not record.signature:
        return False
    try:
        public_key.verify(base64.b64decode(record.signature), signature_message(record.hash))
    except (InvalidSignature, ValueError):
        return False
    return True
