"""TDX quote verification: signatures, PCK chain, QE binding, collateral, TCB status.

What this module owns: deciding whether a parsed TDX quote is genuine at a given time under
the given Intel roots, and, when TCB Info / QE Identity collateral is given, what Intel
says about the platform's TCB. It is a pure function of (quote bytes, certificates,
collateral, roots, time): it never reads a clock, a file or the network. Step numbers are
those of the Intel DCAP Quote Verification Library specification (QVL, "4.1.2.4.x"), the
quote format appendix of the Intel TDX DCAP Quote Generation/Verification Library
("Quote Format A.3.x") and the Intel PCS API ("PCS v4").

Caching (see ``verifier._internal.memo``): parsed PCK chains, public keys, the QE report
signature and the collateral signatures are memoised by SHA-256 of every input byte that
decides them, in a ``_Memos`` attached to the caller's ``ChainVerifier`` (never in module
state) and handed explicitly to every helper that reads or writes a memo. The per-quote
attestation-key signature, the chain's anchor, validity at ``at``, CRLs and the collateral
windows are checked on every call.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from verifier._internal.memo import Memo
from verifier._internal.x509 import (
    Certificate,
    ChainVerifier,
    RevocationList,
    load_certificates,
    verify_signature,
)
from verifier.claims import Claims, JsonValue
from verifier.errors import (
    BadCertificateChain,
    BadSignature,
    CollateralError,
    CollateralExpired,
    MalformedCertificate,
    MalformedEvidence,
    MissingCertificate,
    Revoked,
)
from verifier.roots import PlatformRoots
from verifier.tdx import tcb
from verifier.tdx.abi import BODY_TYPE_TDX15, Quote
from verifier.tdx.collateral import Collateral, SignedBody, TcbInfo
from verifier.tdx.pck import PCK_CN_PHRASE, PckExtensions

_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_TCB_SIGNING_CN_PHRASE = "TCB Signing"  # QVL TCBSigningChain: SGX_TCB_SIGNING_CN_PHRASE


@dataclass(frozen=True)
class PckChain:
    """The certificates carried in certification data type 5, with the PCK leaf picked out."""

    leaf: Certificate
    others: tuple[Certificate, ...]
    leaf_key: ec.EllipticCurvePublicKey = field(repr=False)
    leaf_key_id: bytes = field(repr=False)
    extensions: PckExtensions


class _Memos:
    """The memo tables of this module (pure results only; see ``verifier._internal.memo``).

    One instance per ``ChainVerifier`` (``chains.attachment("tdx", _Memos)``).
    """

    def __init__(self) -> None:
        self.pck_chains: Memo[bytes, PckChain] = Memo(256)
        self.extra_certs: Memo[bytes, tuple[Certificate, ...]] = Memo(256)
        self.attestation_keys: Memo[bytes, ec.EllipticCurvePublicKey] = Memo(1024)
        self.cert_keys: Memo[bytes, ec.EllipticCurvePublicKey] = Memo(256)
        self.verified_signatures: Memo[bytes, bool] = Memo(4096)
        self.collateral_items: Memo[bytes, Collateral] = Memo(256)


_NO_COLLATERAL = Collateral()


def verify(
    raw: bytes,
    *,
    roots: PlatformRoots,
    simulated: bool,
    certs: Sequence[bytes] = (),
    collateral: Sequence[bytes] = (),
    at: datetime,
    chains: ChainVerifier,
) -> Claims:
    """Verify a TDX quote v4/v5 at ``at``; return its claims or raise a VerificationError."""
    quote = Quote.from_bytes(raw)
    memos = chains.attachment("tdx", _Memos)
    pck = _pck_chain(quote.pck_chain, memos)
    extra = _extra_certificates(certs, memos)
    endorsements = (
        Collateral.from_items(collateral, memos.collateral_items) if collateral else _NO_COLLATERAL
    )
    crls = endorsements.crls
    for crl in crls:
        _check_crl_window(crl, at)

    # QVL 4.1.2.4.2-4.1.2.4.7: PCK leaf -> PCK Platform/Processor CA -> pinned Intel SGX
    # Root CA, every certificate valid at ``at``, none revoked by the CRLs given.
    chains.verify_chain(
        pck.leaf, (*pck.others, *extra, *roots.intermediates), roots.anchors, at, crls
    )
    # QVL 4.1.2.4.12: the QE report is signed by the PCK leaf key (ECDSA P-256, SHA-256).
    _verify_ecdsa(
        pck.leaf_key,
        pck.leaf_key_id,
        quote.qe_report_signature,
        quote.qe_report.raw,
        "QE report signature by the PCK key",
        memo=memos.verified_signatures,
    )
    # QVL 4.1.2.4.13: QE REPORTDATA = SHA-256(attestation key || QE auth data) || 32 zeros.
    binding = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    report_data = quote.qe_report.report_data
    if not hmac.compare_digest(report_data[:32], binding) or any(report_data[32:]):
        raise BadSignature("QE report does not bind the attestation key (QE REPORTDATA)")
    # QVL 4.1.2.4.16 / Quote Format A.3.8: the attestation key signs header (+ v5 body
    # descriptor) + TD report body.
    _verify_ecdsa(
        _attestation_key(quote.attestation_key, memos),
        quote.attestation_key,
        quote.signature,
        quote.signed_data,
        "quote signature by the attestation key",
        memo=None,  # a fresh signature per quote: memoising it would only evict the rest
    )

    details = _details(quote, pck)
    pck_issuer = pck.leaf.issuer
    details["revocation_checked"] = any(crl.issuer == pck_issuer for crl in crls)
    if endorsements.tcb_info is not None or endorsements.qe_identity is not None:
        details.update(
            _appraise_tcb(
                quote,
                pck=pck,
                endorsements=endorsements,
                roots=roots,
                at=at,
                chains=chains,
                memos=memos,
            )
        )
    report = quote.report
    return Claims(
        platform="tdx",
        measurement=report.mrtd,
        report_data=report.report_data,
        debug=report.debug,
        simulated=simulated,
        details=details,
    )


def _appraise_tcb(
    quote: Quote,
    *,
    pck: PckChain,
    endorsements: Collateral,
    roots: PlatformRoots,
    at: datetime,
    chains: ChainVerifier,
    memos: _Memos,
) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {}
    qe_verdict: tcb.QeVerdict | None = None
    identity = endorsements.qe_identity
    if identity is not None:
        _check_signed_document(
            identity.signed,
            "QE Identity",
            endorsements=endorsements,
            roots=roots,
            at=at,
            chains=chains,
            memos=memos,
        )
        _check_window(identity.issue_date, identity.next_update, at, "QE Identity")
        qe_verdict = tcb.qe_verdict(identity, quote.qe_report)
        out["qe_tcb_status"] = qe_verdict.status
        out["qe_identity_tcb_evaluation_data_number"] = identity.tcb_evaluation_data_number
    info = endorsements.tcb_info
    if info is None:
        return out
    _check_signed_document(
        info.signed,
        "TCB Info",
        endorsements=endorsements,
        roots=roots,
        at=at,
        chains=chains,
        memos=memos,
    )
    _check_window(info.issue_date, info.next_update, at, "TCB Info")
    _check_applies(info, pck.extensions)
    report = quote.report
    verdict = tcb.evaluate(
        info,
        pck=pck.extensions.tcb,
        tee_tcb_svn=report.tee_tcb_svn,
        mr_signer_seam=report.mr_signer_seam,
        seam_attributes=report.seam_attributes,
        qe=qe_verdict,
    )
    out["tcb_status"] = verdict.status
    out["advisory_ids"] = list(verdict.advisory_ids)
    out["tcb_date"] = verdict.tcb_date
    out["tdx_module_tcb_status"] = verdict.tdx_module_status
    out["tcb_evaluation_data_number"] = info.tcb_evaluation_data_number
    dates = [info.next_update] + ([identity.next_update] if identity else [])
    out["collateral_next_update"] = min(dates).isoformat().replace("+00:00", "Z")
    return out


def _check_applies(info: TcbInfo, extensions: PckExtensions) -> None:
    # QVL 4.1.2.4.10: the TCB Info must be the one for this platform's FMSPC and PCE-ID.
    if info.fmspc != extensions.fmspc:
        raise CollateralError(
            f"TCB Info is for FMSPC {info.fmspc.hex()}, the PCK certificate says "
            f"{extensions.fmspc.hex()}"
        )
    if info.pce_id != extensions.pce_id:
        raise CollateralError(
            f"TCB Info is for PCE-ID {info.pce_id.hex()}, the PCK certificate says "
            f"{extensions.pce_id.hex()}"
        )


def _check_window(issue: datetime, next_update: datetime, at: datetime, what: str) -> None:
    # PCS v4: a TCB Info / QE Identity is current from issueDate until nextUpdate.
    if not issue <= at <= next_update:
        raise CollateralExpired(
            f"{what} is valid {issue.isoformat()} .. {next_update.isoformat()}, "
            f"not at {at.isoformat()}"
        )


def _check_crl_window(crl: RevocationList, at: datetime) -> None:
    # RFC 5280 5.1.2.4-5: a CRL is current from thisUpdate until nextUpdate.
    if at < crl.this_update or (crl.next_update is not None and at > crl.next_update):
        nxt = crl.next_update.isoformat() if crl.next_update else "open"
        raise CollateralExpired(
            f"CRL is valid {crl.this_update.isoformat()} .. {nxt}, not at {at.isoformat()}"
        )


def _check_signed_document(
    signed: SignedBody,
    what: str,
    *,
    endorsements: Collateral,
    roots: PlatformRoots,
    at: datetime,
    chains: ChainVerifier,
    memos: _Memos,
) -> Certificate:
    """PCS v4 / QVL TCBSigningChain: the document is signed by the Intel SGX TCB Signing key,
    whose certificate (from the roots or the collateral's issuer chain) is issued by the
    pinned root and not revoked by its CRL.

    As in Intel's QVL, the signing certificate's validity is judged by its expiry (at must
    not be after notAfter), not by its notBefore: Intel re-issues the TCB Signing
    certificate over the same key, and documents signed before the current certificate was
    issued remain verifiable; their freshness is bounded by issueDate..nextUpdate instead.
    """
    seen: set[bytes] = set()
    for cert in (*roots.intermediates, *endorsements.certificates):
        if cert.fingerprint in seen or cert.is_self_issued():
            continue
        seen.add(cert.fingerprint)
        if _TCB_SIGNING_CN_PHRASE not in cert.common_name:
            continue
        anchor = next((a for a in roots.anchors if a.subject == cert.issuer), None)
        if anchor is None:
            continue
        key = _certificate_key(cert, memos)
        try:
            _verify_ecdsa(
                key,
                cert.fingerprint,
                signed.signature,
                signed.body,
                what,
                memo=memos.verified_signatures,
            )
        except BadSignature:
            continue
        try:
            chains.check_signed_by(cert, anchor)
            chains.check_signed_by(anchor, anchor)
        except BadCertificateChain as exc:
            raise CollateralError(f"{what} signing certificate: {exc.detail}") from None
        for link in (cert, anchor):
            if at > link.not_after:
                raise CollateralExpired(
                    f"{what} signing certificate {link.common_name!r} expired "
                    f"{link.not_after.isoformat()}"
                )
        for crl in endorsements.crls:
            if crl.issuer != anchor.subject:
                continue
            _check_crl_signature(crl, anchor, memos)
            if cert.serial in crl.revoked_serials:
                raise Revoked(f"{what} signing certificate {cert.common_name!r} is revoked")
        return cert
    raise CollateralError(
        f"{what} signature does not verify under a TCB signing certificate of a trusted root"
    )


def _check_crl_signature(crl: RevocationList, issuer: Certificate, memos: _Memos) -> None:
    key = hashlib.sha256(b"crl" + issuer.fingerprint + crl.der).digest()
    if key in memos.verified_signatures:
        return
    try:
        verify_signature(issuer.public_key(), crl.signature_algorithm, crl.signature, crl.tbs)
    except InvalidSignature:
        raise CollateralError(f"CRL from {issuer.common_name!r} has a bad signature") from None
    memos.verified_signatures.add(key, True)


def _verify_ecdsa(
    key: ec.EllipticCurvePublicKey,
    key_id: bytes,
    signature: bytes,
    data: bytes,
    what: str,
    *,
    memo: Memo[bytes, bool] | None,
) -> None:
    """ECDSA P-256/SHA-256 with a raw 64-byte r||s signature (Quote Format A.3.8).

    With ``memo``, a signature that verified once is not verified again (keyed by SHA-256
    of key id, signature and data); with ``None`` it is verified on every call.
    """
    memo_key = b""
    if memo is not None:
        memo_key = hashlib.sha256(b"%d:" % len(key_id) + key_id + signature + data).digest()
        if memo_key in memo:
            return
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, _ECDSA_SHA256)
    except InvalidSignature:
        raise BadSignature(f"{what} does not verify") from None
    if memo is not None:
        memo.add(memo_key, True)


def _attestation_key(raw: bytes, memos: _Memos) -> ec.EllipticCurvePublicKey:
    def load() -> ec.EllipticCurvePublicKey:
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
        except ValueError:
            raise MalformedEvidence("attestation key is not a P-256 point") from None

    return memos.attestation_keys.get_or_compute(raw, load)


def _certificate_key(cert: Certificate, memos: _Memos) -> ec.EllipticCurvePublicKey:
    def load() -> ec.EllipticCurvePublicKey:
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise MalformedCertificate(f"{cert.common_name!r} does not hold a P-256 key")
        return key

    return memos.cert_keys.get_or_compute(cert.fingerprint, load)


def _pck_chain(data: bytes, memos: _Memos) -> PckChain:
    # Keyed by the chain bytes themselves (a few KiB): hashing them is cheaper than SHA-256,
    # and equality on a hit compares every byte.
    return memos.pck_chains.get_or_compute(data, partial(_parse_pck_chain, data, memos))


def _parse_pck_chain(data: bytes, memos: _Memos) -> PckChain:
    # Quote Format A.3.9 type 5: "PCK Leaf Cert || Intermediate CA Cert || Root CA Cert",
    # PEM, often NUL-terminated; Intel's synthetic sample stores DER, root first, so the
    # leaf is found by its SGX extension rather than by position.
    try:
        certs = load_certificates(data.rstrip(b"\x00"))
    except MalformedCertificate as exc:  # corrupt PEM base64 included
        raise MalformedCertificate(f"PCK certificate chain: {exc.detail}") from None
    _check_basic_constraints(certs)
    leaves = [
        c for c in certs if c.extension("1.2.840.113741.1.13.1") is not None and c.is_ca is not True
    ]
    if not leaves:
        raise MissingCertificate("the quote's certification data holds no PCK certificate")
    if len(leaves) > 1:
        raise MalformedEvidence("the quote's certification data holds several PCK certificates")
    leaf = leaves[0]
    # QVL 4.1.2.4.4: the leaf must be a PCK certificate (checked here, once per chain).
    if PCK_CN_PHRASE not in leaf.common_name:
        raise BadCertificateChain(f"{leaf.common_name!r} is not an SGX PCK certificate")
    extensions = PckExtensions.from_certificate(leaf)
    return PckChain(
        leaf=leaf,
        others=tuple(c for c in certs if c is not leaf),
        leaf_key=_certificate_key(leaf, memos),
        leaf_key_id=leaf.fingerprint,
        extensions=extensions,
    )


def _extra_certificates(certs: Sequence[bytes], memos: _Memos) -> tuple[Certificate, ...]:
    out: list[Certificate] = []
    for blob in certs:
        out.extend(
            memos.extra_certs.get_or_compute(
                hashlib.sha256(blob).digest(), partial(_load_extra, blob)
            )
        )
    return tuple(out)


def _load_extra(blob: bytes) -> tuple[Certificate, ...]:
    certs = load_certificates(blob)  # MalformedCertificate, corrupt PEM base64 included
    _check_basic_constraints(certs)
    return tuple(certs)


def _check_basic_constraints(certs: Sequence[Certificate]) -> None:
    """Decode basicConstraints once, here, so that a malformed one is reported while the
    certificates are loaded (``Certificate.is_ca`` raises ``MalformedCertificate``), not
    later from inside the chain walk."""
    for cert in certs:
        _ = cert.is_ca


def _details(quote: Quote, pck: PckChain) -> dict[str, JsonValue]:
    header, report, ext = quote.header, quote.report, pck.extensions
    details: dict[str, JsonValue] = {
        "version": header.version,
        "body_type": quote.body_type,
        "qe_svn": header.qe_svn,
        "qe_vendor_id": header.qe_vendor_id.hex(),
        "tee_tcb_svn": report.tee_tcb_svn.hex(),
        "mr_seam": report.mr_seam.hex(),
        "mr_signer_seam": report.mr_signer_seam.hex(),
        "seam_attributes": report.seam_attributes.hex(),
        "td_attributes": report.td_attributes.hex(),
        "xfam": report.xfam.hex(),
        "mrtd": report.mrtd.hex(),
        "mr_config_id": report.mr_config_id.hex(),
        "mr_owner": report.mr_owner.hex(),
        "mr_owner_config": report.mr_owner_config.hex(),
        "rtmr0": report.rtmr0.hex(),
        "rtmr1": report.rtmr1.hex(),
        "rtmr2": report.rtmr2.hex(),
        "rtmr3": report.rtmr3.hex(),
    }
    if quote.body_type == BODY_TYPE_TDX15:
        assert report.tee_tcb_svn_2 is not None and report.mr_servicetd is not None
        details["tee_tcb_svn_2"] = report.tee_tcb_svn_2.hex()
        details["mr_servicetd"] = report.mr_servicetd.hex()
    details.update(
        {
            "fmspc": ext.fmspc.hex(),
            "pce_id": ext.pce_id.hex(),
            "sgx_type": ext.sgx_type,
            "pce_svn": ext.tcb.pce_svn,
            "quote_pce_svn": header.pce_svn,
            "pck_cpu_svn": ext.tcb.cpu_svn.hex(),
            "pck_sgx_tcb_components": list(ext.tcb.sgx_components),
            "qe_isv_svn": quote.qe_report.isv_svn,
        }
    )
    return details


__all__ = ["PckChain", "verify"]
