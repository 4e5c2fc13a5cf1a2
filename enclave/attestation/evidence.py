"""The evidence-provider interface and the one report_data builder every caller uses.

A provider takes 64 bytes of report_data and returns evidence in its platform's real
format, with the certificates and collateral a verifier needs beside it. Simulated
providers (fake hardware with fake vendor roots) and real ones (configfs-tsm, ioctls,
/dev/nsm) implement the same protocol.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from verifier.claims import Platform

REPORT_DATA_SIZE = 64
ATTESTED_TLS_LABEL = b"kms-attested-tls/v1"


@dataclass(frozen=True)
class Evidence:
    """Evidence in the platform's real format, plus what a verifier needs beside it."""

    platform: Platform
    evidence: bytes
    certs: tuple[bytes, ...] = ()
    collateral: tuple[bytes, ...] = ()


class EvidenceProvider(Protocol):
    """Produces evidence binding 64 bytes of report_data."""

    @property
    def platform(self) -> Platform: ...

    def evidence(self, report_data: bytes) -> Evidence: ...


def check_report_data(report_data: bytes) -> bytes:
    if len(report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"report_data must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
    return report_data


def report_data_for(label: bytes, public_key_spki_der: bytes, nonce: bytes = b"") -> bytes:
    """SHA-512(label || 0x00 || SHA-256(SubjectPublicKeyInfo DER) || nonce): 64 bytes.

    ARCHITECTURE.md "Attested TLS": the label is ``kms-attested-tls/v1`` for the enclave's
    TLS key (nonce empty for the boot certificate). Other bindings (a client's ephemeral
    HPKE key for key release) use their own label, so one can never stand for another.
    """
    return hashlib.sha512(
        label + b"\x00" + hashlib.sha256(public_key_spki_der).digest() + nonce
    ).digest()


def attested_tls_report_data(tls_spki_der: bytes, nonce: bytes = b"") -> bytes:
    return report_data_for(ATTESTED_TLS_LABEL, tls_spki_der, nonce)
