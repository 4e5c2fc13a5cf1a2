"""SEV-SNP verification: the report's signature, its VCEK/VLEK chain, and their agreement.

What this module owns: choosing the endorsement key certificate among those given, walking
it to a pinned AMD root (VCEK -> ASK -> ARK, VLEK -> ASVK -> ARK) at the caller's time with
the caller's CRLs, checking the ECDSA P-384 signature over the report, and checking that
the certificate describes this report (key kind, product, TCB, hardware ID). It returns
``Claims`` and stops there: whether they are acceptable is ``verifier.snp.validate``.

It never reads a clock, a file or the network. Work that depends only on certificate bytes
(parsing, key loading, AMD extension decoding) is cached in a ``SnpCache`` that belongs to
the caller's ``ChainVerifier`` (see ``cache_for``), so a steady stream of reports from the
same machines costs one ECDSA verification each. Time and CRLs are checked on every call.

Spec references: AMD SEV-SNP ABI spec (56860) table "ATTESTATION_REPORT Structure"
("report table"), and AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS
Interface Specification" (57230) for the certificate extensions ("VCEK spec").
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from verifier._internal import der
from verifier._internal.memo import Memo
from verifier._internal.x509 import (
    Certificate,
    ChainVerifier,
    RevocationList,
    check_validity,
    load_certificates,
)
from verifier.claims import Claims, JsonValue
from verifier.errors import (
    BadSignature,
    CertificateMismatch,
    MalformedCertificate,
    MalformedEvidence,
    MissingCertificate,
    UnsupportedEvidence,
    VerificationError,
)
from verifier.roots import PlatformRoots
from verifier.snp.abi import (
    PRODUCTS,
    REPORT_ID_MA_NONE,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    AttestationReport,
    Product,
    tcb_json,
)

# VCEK spec, "VCEK Certificate Extensions" table: OIDs under 1.3.6.1.4.1.3704.1 (AMD).
OID_AMD_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
OID_AMD_BL_SPL = "1.3.6.1.4.1.3704.1.3.1"
OID_AMD_TEE_SPL = "1.3.6.1.4.1.3704.1.3.2"
OID_AMD_SNP_SPL = "1.3.6.1.4.1.3704.1.3.3"
OID_AMD_UCODE_SPL = "1.3.6.1.4.1.3704.1.3.8"
OID_AMD_FMC_SPL = "1.3.6.1.4.1.3704.1.3.9"  # Turin and later
OID_AMD_HWID = "1.3.6.1.4.1.3704.1.4"  # VCEK only
OID_AMD_CSP_ID = "1.3.6.1.4.1.3704.1.5"  # VLEK only

TCB_EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("bootloader", OID_AMD_BL_SPL),
    ("tee", OID_AMD_TEE_SPL),
    ("snp", OID_AMD_SNP_SPL),
    ("microcode", OID_AMD_UCODE_SPL),
    ("fmc", OID_AMD_FMC_SPL),
)
CHIP_ID_SIZE = 64
TURIN_HWID_SIZE = 8  # Turin VCEKs are issued for the first 8 bytes of CHIP_ID
MAX_CERT_BLOBS = 16
MAX_CERT_BLOB_BYTES = 256 * 1024
SMALL_CERT_BLOB_BYTES = 8 * 1024  # a PEM bundle of VCEK + ASK + ARK is about 6.5 KiB
MAX_COLLATERAL_BLOBS = 16
MAX_COLLATERAL_BLOB_BYTES = 1024 * 1024  # AMD's CRLs are a few KiB

KeyKind = Literal["vcek", "vlek"]
_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())  # immutable algorithm descriptor, not state


@dataclass(frozen=True)
class EndorsementKey:
    """A VCEK or VLEK certificate, its loaded P-384 key and its decoded AMD extensions.

    ``kind``/``product`` come from the issuer's name (SEV-Milan, SEV-VLEK-Genoa, ...) and
    mean something only once the chain to a pinned root has been verified.
    """

    cert: Certificate = field(repr=False)
    public_key: ec.EllipticCurvePublicKey = field(repr=False)
    kind: KeyKind
    product: Product | None
    product_name: str | None
    tcb: Mapping[str, int]
    hwid: bytes | None

    @classmethod
    def from_certificate(cls, cert: Certificate) -> EndorsementKey:
        key = cert.public_key()
        # VCEK spec: VCEK and VLEK keys are ECDSA P-384.
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            raise MalformedCertificate(f"{cert.common_name!r} does not hold a P-384 key")
        issuer_words = cert.issuer_common_name.split("-")
        kind: KeyKind = "vlek" if "VLEK" in issuer_words else "vcek"
        product = next((p for p in PRODUCTS if issuer_words[-1] == p), None)
        try:
            tcb: dict[str, int] = {}
            for name, oid in TCB_EXTENSIONS:
                ext = cert.extension(oid)
                if ext is not None:
                    value = der.decode_integer(der.expect(der.read_single(ext.value),
                                                          der.TAG_INTEGER, name))  # fmt: skip
                    if not 0 <= value <= 0xFF:
                        raise der.DerError(f"{name} SPL {value} is not one byte")
                    tcb[name] = value
            product_name = None
            name_ext = cert.extension(OID_AMD_PRODUCT_NAME)
            if name_ext is not None:
                element = der.read_single(name_ext.value)
                product_name = element.content.decode("ascii")
            hwid = _hwid(cert)
        except (der.DerError, UnicodeDecodeError, ValueError, IndexError) as exc:
            raise MalformedCertificate(
                f"{cert.common_name!r} has a malformed AMD extension: {exc}"
            ) from None
        return cls(cert, key, kind, product, product_name, tcb, hwid)


def _hwid(cert: Certificate) -> bytes | None:
    # VCEK spec: hwID is the CHIP_ID (64 bytes; 8 for Turin), stored raw by older KDS
    # certificates and as an OCTET STRING (04 40 ...) by newer ones.
    ext = cert.extension(OID_AMD_HWID)
    if ext is None:
        return None
    sizes = (CHIP_ID_SIZE, TURIN_HWID_SIZE)
    if len(ext.value) in sizes:
        return ext.value
    element = der.read_single(ext.value)
    if element.tag == der.TAG_OCTET_STRING and len(element.content) in sizes:
        return element.content
    raise der.DerError(f"hwID is {len(ext.value)} bytes, neither raw nor an OCTET STRING")


class SnpCache:
    """Parsed certificate files, endorsement keys and CRLs, keyed by SHA-256 of their bytes.

    Everything cached is a pure function of the bytes it was made from, so sharing it
    between calls and threads cannot change a verdict; it only saves work.
    """

    def __init__(self, max_entries: int = 256) -> None:
        # Small files (a VCEK, a VCEK+ASK+ARK bundle) are keyed by their bytes: hashing them
        # with SHA-256 would cost more than the rest of the lookup. Larger ones by digest.
        self._small_cert_files: Memo[bytes, tuple[tuple[Certificate, bool], ...]] = Memo(
            max_entries
        )
        self._cert_files: Memo[bytes, tuple[tuple[Certificate, bool], ...]] = Memo(max_entries)
        self._keys: Memo[bytes, EndorsementKey] = Memo(max_entries)
        self._crls: Memo[bytes, RevocationList] = Memo(max_entries)
        self._paths: Memo[tuple[bytes, ...], tuple[Certificate, ...]] = Memo(max_entries)

    def certificates(self, blob: bytes) -> tuple[tuple[Certificate, bool], ...]:
        """The certificates in ``blob``, each with whether it can be an end-entity (leaf)."""
        if len(blob) <= SMALL_CERT_BLOB_BYTES:
            return self._small_cert_files.get_or_compute(
                bytes(blob), lambda: _load_certificates(blob)
            )
        if len(blob) > MAX_CERT_BLOB_BYTES:
            raise MalformedCertificate(f"certificate file is larger than {MAX_CERT_BLOB_BYTES}")
        return self._cert_files.get_or_compute(
            hashlib.sha256(blob).digest(), lambda: _load_certificates(blob)
        )

    def endorsement_key(self, cert: Certificate) -> EndorsementKey:
        return self._keys.get_or_compute(
            cert.fingerprint, lambda: EndorsementKey.from_certificate(cert)
        )

    def verified_path(
        self,
        chains: ChainVerifier,
        leaf: Certificate,
        *,
        intermediates: Sequence[Certificate],
        anchors: Sequence[Certificate],
        at: datetime,
        crls: Sequence[RevocationList],
    ) -> Sequence[Certificate]:
        """``chains.verify_chain``, remembering the path once it has been built and checked.

        Which path leads from ``leaf`` to an anchor, and whether its signatures and CA flags
        hold, depends only on the certificates' bytes, so the path is cached under the
        fingerprints of every input. What depends on the call is checked on every call: the
        validity of each certificate at ``at``; with CRLs, the whole walk runs again.
        """
        if crls:
            return chains.verify_chain(leaf, intermediates, anchors, at, crls)
        key = (
            leaf.fingerprint,
            b"|",
            *(c.fingerprint for c in intermediates),
            b"|",
            *(c.fingerprint for c in anchors),
        )
        path = self._paths.get_or_compute(
            key, lambda: tuple(chains.verify_chain(leaf, intermediates, anchors, at, crls))
        )
        for cert in path:
            check_validity(cert, at)
        return path

    def crl(self, blob: bytes) -> RevocationList:
        if len(blob) > MAX_COLLATERAL_BLOB_BYTES:
            raise MalformedCertificate(f"CRL is larger than {MAX_COLLATERAL_BLOB_BYTES} bytes")
        return self._crls.get_or_compute(hashlib.sha256(blob).digest(), lambda: _load_crl(blob))


def cache_for(chains: ChainVerifier) -> SnpCache:
    """The ``SnpCache`` attached to ``chains`` (made on first use; no module-level state).

    The cache lives and dies with the ``ChainVerifier`` the caller already shares between
    calls, which is the same lifetime and trust configuration as its link cache.
    """
    return chains.attachment("sev-snp", SnpCache)


def _load_certificates(blob: bytes) -> tuple[tuple[Certificate, bool], ...]:
    try:
        # AMD VCEK/VLEK certificates carry no basicConstraints; ASK/ASVK/ARK say CA:TRUE.
        return tuple(
            (cert, cert.is_ca is not True and not cert.is_self_issued())
            for cert in load_certificates(blob)
        )
    except VerificationError:
        raise
    except Exception as exc:  # base64/DER corner cases the loader does not wrap
        raise MalformedCertificate(f"certificate data could not be parsed: {exc}") from None


def _load_crl(blob: bytes) -> RevocationList:
    try:
        return RevocationList.from_bytes(blob)
    except VerificationError:
        raise
    except Exception as exc:
        raise MalformedCertificate(f"CRL could not be parsed: {exc}") from None


def verify(
    raw: bytes,
    *,
    roots: PlatformRoots,
    simulated: bool,
    certs: Sequence[bytes],
    collateral: Sequence[bytes],
    at: datetime,
    chains: ChainVerifier,
) -> Claims:
    """Verify an SEV-SNP report at time ``at``; return its claims or raise a typed error.

    ``certs``: the VCEK or VLEK (DER, PEM, or a PEM bundle that may also hold ASK/ASVK and
    ARK; those help only if they chain to a pinned anchor of ``roots``). ``collateral``:
    CRLs (DER or PEM) for the AMD CAs, applied to the chain.
    """
    try:
        return _verify(
            raw, roots=roots, simulated=simulated, certs=certs,
            collateral=collateral, at=at, chains=chains,
        )  # fmt: skip
    except VerificationError:
        raise
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        # Defence in depth: nothing but verifier errors leaves the verifier.
        raise MalformedEvidence(f"SEV-SNP evidence could not be processed: {exc}") from None


def _verify(
    raw: bytes,
    *,
    roots: PlatformRoots,
    simulated: bool,
    certs: Sequence[bytes],
    collateral: Sequence[bytes],
    at: datetime,
    chains: ChainVerifier,
) -> Claims:
    report = AttestationReport.from_bytes(raw)
    cache = cache_for(chains)
    leaf, pool = _select_endorsement_certificate(report, certs, cache)
    if len(collateral) > MAX_COLLATERAL_BLOBS:
        raise MalformedCertificate(f"more than {MAX_COLLATERAL_BLOBS} collateral documents")
    crls = [cache.crl(blob) for blob in collateral]

    # The chain to a pinned ARK: bundle CAs are only candidates, never anchors.
    path = cache.verified_path(
        chains, leaf, intermediates=(*roots.intermediates, *pool), anchors=roots.anchors,
        at=at, crls=crls,
    )  # fmt: skip
    key = cache.endorsement_key(leaf)

    # report table, row 0x2A0 SIGNATURE: ECDSA P-384 with SHA-384 over bytes 0x000..0x29F,
    # by the key SIGNING_KEY names.
    try:
        key.public_key.verify(
            encode_dss_signature(report.signature_r, report.signature_s),
            report.signed_bytes,
            _ECDSA_SHA384,
        )
    except InvalidSignature:
        raise BadSignature(
            f"the report signature does not verify with {key.kind.upper()} "
            f"{leaf.fingerprint.hex()[:16]}"
        ) from None

    # report table, row 0x48 SIGNING_KEY: 0 = VCEK, 1 = VLEK.
    expected_kind = {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek"}[report.signer.signing_key]
    if key.kind != expected_kind:
        raise CertificateMismatch(
            f"the report says it is signed by the {expected_kind.upper()}, "
            f"but the certificate is a {key.kind.upper()}"
        )
    product = _product(report, key, path)
    _check_tcb(key, tcb_json(report.reported_tcb, product), product)
    _check_hwid(report, key, product)
    return _claims(report, key, product, simulated)


def _select_endorsement_certificate(
    report: AttestationReport, blobs: Sequence[bytes], cache: SnpCache
) -> tuple[Certificate, list[Certificate]]:
    """The VCEK/VLEK among the given certificates, and the CA certificates given with it."""
    if len(blobs) > MAX_CERT_BLOBS:
        raise MalformedCertificate(f"more than {MAX_CERT_BLOBS} certificate files")
    leaves: dict[bytes, Certificate] = {}
    cas: dict[bytes, Certificate] = {}
    for blob in blobs:
        for cert, is_leaf in cache.certificates(blob):
            (leaves if is_leaf else cas).setdefault(cert.fingerprint, cert)
    pool = list(cas.values())
    wanted = "VLEK" if report.signer.signing_key == SIGNING_KEY_VLEK else "VCEK"
    if not leaves:
        raise MissingCertificate(f"the report is signed by a {wanted}, but none was given")
    if len(leaves) > 1:
        # Several leaves (a VCEK and a VLEK, say): keep those of the kind the report names.
        def is_vlek(cert: Certificate) -> bool:
            return "VLEK" in cert.issuer_common_name.split("-")

        matching = [c for c in leaves.values() if is_vlek(c) == (wanted == "VLEK")]
        if len(matching) != 1:
            raise MalformedCertificate(
                f"{len(matching)} {wanted} certificates given; expected exactly one"
            )
        pool.extend(c for c in leaves.values() if c is not matching[0])
        return matching[0], pool
    (leaf,) = leaves.values()
    return leaf, pool


def _product(
    report: AttestationReport, key: EndorsementKey, path: Sequence[Certificate]
) -> Product:
    # The verified chain names the product line (issuer SEV-Milan, SEV-VLEK-Genoa, ...);
    # v3+ reports also carry CPUID family/model (report table, rows 0x188..0x18A).
    chain_product = key.product
    cpuid_product = report.cpuid.product if report.cpuid is not None else None
    if report.cpuid is not None and cpuid_product is None:
        raise UnsupportedEvidence(
            f"CPUID family 0x{report.cpuid.family:02x} model 0x{report.cpuid.model:02x} "
            "is not an SEV-SNP product this verifier knows"
        )
    if chain_product and cpuid_product and chain_product != cpuid_product:
        raise CertificateMismatch(
            f"the report's CPUID says {cpuid_product}, the certificate chain "
            f"({path[1].common_name if len(path) > 1 else '?'}) says {chain_product}"
        )
    product = cpuid_product or chain_product
    if product is None:
        raise UnsupportedEvidence("the product line is neither in the report nor the chain")
    if key.product_name is not None and key.product_name.split("-")[0] != product:
        raise CertificateMismatch(
            f"the {key.kind.upper()} is for {key.product_name!r}, the report is from {product}"
        )
    return product


def _check_tcb(key: EndorsementKey, seen: Mapping[str, JsonValue], product: Product) -> None:
    # VCEK spec: the certificate is issued for one TCB; it must equal REPORTED_TCB (report
    # table, row 0x180), not CURRENT_TCB: the host may hold back the reported TCB.
    names = ["bootloader", "tee", "snp", "microcode"] + (["fmc"] if product == "Turin" else [])
    for name in names:
        if name not in key.tcb:
            raise CertificateMismatch(f"the {key.kind.upper()} has no {name} SPL extension")
        if key.tcb[name] != seen[name]:
            raise CertificateMismatch(
                f"the {key.kind.upper()} is for {name} SPL {key.tcb[name]}, "
                f"the report's REPORTED_TCB has {seen[name]}"
            )


def _check_hwid(report: AttestationReport, key: EndorsementKey, product: Product) -> None:
    # VCEK spec: a VCEK's hwID is the CHIP_ID it was derived for (report table, row 0x1A0);
    # Turin VCEKs name only its first 8 bytes. A VLEK is not per chip: it has no hwID, and
    # CHIP_ID may be masked to zero.
    if key.kind == "vlek":
        return
    if key.hwid is None:
        raise CertificateMismatch("the VCEK has no hwID extension")
    if len(key.hwid) == TURIN_HWID_SIZE and product != "Turin":
        raise CertificateMismatch(f"an 8-byte hwID is for Turin, the report is from {product}")
    if not hmac.compare_digest(key.hwid, report.chip_id[: len(key.hwid)]):
        raise CertificateMismatch(
            f"the VCEK is for chip {key.hwid.hex()[:16]}..., "
            f"the report comes from chip {report.chip_id.hex()[:16]}..."
        )


def _claims(
    report: AttestationReport,
    key: EndorsementKey,
    product: Product,
    simulated: bool,
) -> Claims:
    details: dict[str, JsonValue] = {
        "version": report.version,
        "product": product,
        "signing_key": key.kind,
        "endorsement_key_sha256": key.cert.fingerprint.hex(),
        "guest_svn": report.guest_svn,
        "policy": f"{report.policy.raw:016x}",
        "policy_flags": report.policy.flags(),
        "vmpl": report.vmpl,
        "signature_algo": "ecdsa-p384-sha384",
        "author_key_en": report.signer.author_key_en,
        "chip_id": report.chip_id.hex(),
        "reported_tcb": tcb_json(report.reported_tcb, product),
        "current_tcb": tcb_json(report.current_tcb, product),
        "committed_tcb": tcb_json(report.committed_tcb, product),
        "launch_tcb": tcb_json(report.launch_tcb, product),
        "platform_info": report.platform_info.flags(),
        "host_data": report.host_data.hex(),
        "family_id": report.family_id.hex(),
        "image_id": report.image_id.hex(),
        "id_key_digest": report.id_key_digest.hex(),
        "author_key_digest": report.author_key_digest.hex(),
        "report_id": report.report_id.hex(),
        "report_id_ma": report.report_id_ma.hex(),
        "migration_agent": report.report_id_ma != REPORT_ID_MA_NONE,
        "current_firmware": str(report.current_version),
        "committed_firmware": str(report.committed_version),
    }
    if report.cpuid is not None:
        details["cpuid"] = report.cpuid.to_json()
    if report.launch_mit_vector is not None and report.current_mit_vector is not None:
        details["launch_mitigation_vector"] = f"{report.launch_mit_vector:016x}"
        details["current_mitigation_vector"] = f"{report.current_mit_vector:016x}"
    return Claims(
        platform="sev-snp",
        measurement=report.measurement,
        report_data=report.report_data,
        debug=report.policy.debug,
        simulated=simulated,
        details=details,
    )
