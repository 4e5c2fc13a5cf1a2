"""The enclave's attested TLS identity: a key made inside the enclave, a self-signed
certificate carrying boot evidence, and the server ``SSLContext`` that uses them.

ARCHITECTURE.md "Attested TLS" step 1. The private key is generated at start and lives only
in this process: it is never written to disk (it reaches OpenSSL through an anonymous
in-memory file, ``memfd_create``), never logged and never part of a ``repr``. The boot
certificate's extension (``BOOT_EVIDENCE_OID``) holds CBOR ``{platform, evidence, certs,
collateral}`` whose report_data is ``attested_tls_report_data(SPKI, b"")``.

Clients import ``decode_boot_evidence`` and ``spki_der_of_certificate`` from here, so the
extension format has a single definition.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave.attestation.evidence import Evidence, EvidenceProvider, attested_tls_report_data
from verifier.claims import parse_platform

# 2.25.<UUID as integer> (ITU-T X.667): f3b8a6c2-5d1e-4c7a-9b0e-2f6d8e4a1c35, fixed forever.
BOOT_EVIDENCE_OID = x509.ObjectIdentifier("2.25.323961167876781434193348520589325376565")
MAX_EXTENSION_BYTES = 256 * 1024
CLOCK_SKEW = datetime.timedelta(minutes=5)
SUBJECT_COMMON_NAME = "enclave-kms attested TLS"


class BootEvidenceError(ValueError):
    """A certificate's boot-evidence extension is missing or malformed."""


@dataclass(frozen=True)
class TlsIdentity:
    """The enclave's TLS key pair and attested certificate. The key never leaves memory."""

    certificate_der: bytes
    spki_der: bytes
    boot_evidence: Evidence
    _private_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)

    @property
    def certificate_sha256(self) -> bytes:
        return hashlib.sha256(self.certificate_der).digest()

    def report_data(self, nonce: bytes) -> bytes:
        """The report_data binding evidence to this TLS key and ``nonce``."""
        return attested_tls_report_data(self.spki_der, nonce)

    def server_context(self) -> ssl.SSLContext:
        """A TLS 1.2+ server context holding the key, loaded without touching the disk."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        cert_pem = x509.load_der_x509_certificate(self.certificate_der).public_bytes(
            serialization.Encoding.PEM
        )
        key_pem = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _load_chain_from_memory(context, cert_pem + key_pem)
        return context


def _load_chain_from_memory(context: ssl.SSLContext, pem: bytes) -> None:
    # The stdlib ssl module loads keys only from paths. An anonymous memfd is a path with no
    # directory entry and no backing disk, so the key stays in RAM.
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("kms-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    # Fallback (non-Linux developer machines only): the key is written encrypted under a
    # one-time password that exists only in this process, and the file is removed at once.
    password = os.urandom(32).hex()
    cert_pem, _, key_pem = pem.partition(b"-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(b"-----BEGIN PRIVATE KEY-----" + key_pem, None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chain.pem"
        path.write_bytes(cert_pem + encrypted)
        context.load_cert_chain(str(path), password=password)


def create_identity(
    provider: EvidenceProvider,
    *,
    now: datetime.datetime | None = None,
    lifetime: datetime.timedelta = datetime.timedelta(days=30),
) -> TlsIdentity:
    """Generate the TLS key, obtain boot evidence bound to it, and self-sign the certificate."""
    now = now or datetime.datetime.now(datetime.UTC)
    private_key = ec.generate_private_key(ec.SECP256R1())
    spki_der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    boot = provider.evidence(attested_tls_report_data(spki_der, b""))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SUBJECT_COMMON_NAME)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(BOOT_EVIDENCE_OID, encode_boot_evidence(boot)),
            critical=False,
        )
        .sign(private_key, hashes.SHA256())
    )
    return TlsIdentity(
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        spki_der=spki_der,
        boot_evidence=boot,
        _private_key=private_key,
    )


def encode_boot_evidence(evidence: Evidence) -> bytes:
    return cbor2.dumps(
        {
            "platform": evidence.platform,
            "evidence": evidence.evidence,
            "certs": list(evidence.certs),
            "collateral": list(evidence.collateral),
        }
    )


def decode_boot_evidence(certificate_der: bytes) -> Evidence:
    """The boot evidence carried by an attested TLS certificate (not yet verified)."""
    try:
        certificate = x509.load_der_x509_certificate(certificate_der)
        extension = certificate.extensions.get_extension_for_oid(BOOT_EVIDENCE_OID)
    except x509.ExtensionNotFound:
        raise BootEvidenceError("the certificate carries no boot evidence") from None
    except ValueError as exc:
        raise BootEvidenceError(f"the certificate is malformed: {exc}") from None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise BootEvidenceError("the boot evidence extension has an unexpected form")
    if len(value.value) > MAX_EXTENSION_BYTES:
        raise BootEvidenceError("the boot evidence extension is too large")
    try:
        document = cbor2.loads(value.value)
    except (cbor2.CBORDecodeError, ValueError) as exc:
        raise BootEvidenceError(f"the boot evidence is not CBOR: {exc}") from None
    return _evidence_from_mapping(document)


def _evidence_from_mapping(document: Any) -> Evidence:
    if not isinstance(document, Mapping) or set(document) != {
        "platform", "evidence", "certs", "collateral"
    }:  # fmt: skip
        raise BootEvidenceError(
            "the boot evidence must map exactly platform, evidence, certs, collateral"
        )
    evidence = document["evidence"]
    certs = document["certs"]
    collateral = document["collateral"]
    if not isinstance(evidence, bytes) or not isinstance(document["platform"], str):
        raise BootEvidenceError("the boot evidence has fields of the wrong type")
    if not isinstance(certs, list) or not all(isinstance(c, bytes) for c in certs):
        raise BootEvidenceError("boot evidence certs must be a list of byte strings")
    if not isinstance(collateral, list) or not all(isinstance(c, bytes) for c in collateral):
        raise BootEvidenceError("boot evidence collateral must be a list of byte strings")
    try:
        platform = parse_platform(document["platform"])
    except Exception as exc:
        raise BootEvidenceError(str(exc)) from None
    return Evidence(platform, evidence, tuple(certs), tuple(collateral))


def spki_der_of_certificate(certificate_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo DER of a certificate (what report_data binds)."""
    certificate = x509.load_der_x509_certificate(certificate_der)
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
