"""Authenticate an AWS Nitro Enclaves attestation document and emit its claims.

What this module owns: the semantic checks of AWS "Verifying the root of trust" (section
"Semantic validation": certificate validity, chain to the pinned AWS Nitro Enclaves root
G1, COSE signature with the leaf key) on a document ``abi`` has parsed, at an injected
time. It never reads a clock, a file or the network, and never judges policy (``validate``).

Performance: a document carries four CA certificates that rarely change and a leaf, so
parsed certificates, the leaf key and the chains built by ``ChainVerifier`` are kept in
small LRUs (``CertificateCache``) attached to the caller's ``ChainVerifier`` (the object
that already caches verified links), never in a module global. Validity windows are
checked on every call, because they depend on ``at``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from threading import Lock

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from verifier._internal.x509 import Certificate, ChainVerifier, check_validity
from verifier.claims import Claims, JsonValue
from verifier.errors import (
    BadCertificateChain,
    BadSignature,
    CertificateMismatch,
    MalformedEvidence,
    UsageError,
)
from verifier.nitro.abi import ES384_SIGNATURE_BYTES, NitroDocument, OptionalField
from verifier.roots import PlatformRoots

_ES384 = ec.ECDSA(hashes.SHA384())
_P384_COORDINATE_BYTES = ES384_SIGNATURE_BYTES // 2


_ChainKey = tuple[bytes, tuple[bytes, ...], tuple[bytes, ...]]
"""(leaf DER, cabundle DERs, anchor fingerprints): exact bytes, so no collision is possible."""


@dataclass(frozen=True)
class VerifiedChain:
    """A leaf's path to an anchor whose signatures and CA flags were checked once.

    None of that depends on time; validity windows are checked again on every use.
    """

    leaf: Certificate
    path: tuple[Certificate, ...]
    leaf_key: ec.EllipticCurvePublicKey = field(repr=False)
    window_ms: tuple[int, int]  # the leaf's validity in ms; not_after covers its whole second


class CertificateCache:
    """Thread-safe LRUs of parsed certificates (keyed by SHA-256 of the DER) and of
    verified chains (keyed by the exact DER bytes of leaf and cabundle, and the anchors).

    A parsed certificate, its key, and the signatures along a chain are pure functions of
    the bytes, so a hit is as good as a fresh check. Entries hold no secret and no verdict
    about time: callers check validity at their own time on every use.
    """

    def __init__(self, max_certificates: int = 256, max_chains: int = 64) -> None:
        self._certificates: OrderedDict[bytes, Certificate] = OrderedDict()
        self._chains: OrderedDict[_ChainKey, VerifiedChain] = OrderedDict()
        self._max_certificates = max_certificates
        self._max_chains = max_chains
        self._lock = Lock()

    def certificate(self, der: bytes) -> Certificate:
        fingerprint = hashlib.sha256(der).digest()
        with self._lock:
            cached = self._certificates.get(fingerprint)
            if cached is not None:
                self._certificates.move_to_end(fingerprint)
                return cached
        cert = Certificate.from_der(der)  # raises MalformedCertificate
        with self._lock:
            self._certificates[cert.fingerprint] = cert
            while len(self._certificates) > self._max_certificates:
                self._certificates.popitem(last=False)
        return cert

    def chain(self, key: _ChainKey) -> VerifiedChain | None:
        with self._lock:
            cached = self._chains.get(key)
            if cached is not None:
                self._chains.move_to_end(key)
            return cached

    def remember_chain(self, key: _ChainKey, chain: VerifiedChain) -> None:
        with self._lock:
            self._chains[key] = chain
            while len(self._chains) > self._max_chains:
                self._chains.popitem(last=False)

    def __len__(self) -> int:
        return len(self._certificates)


def certificate_cache(chains: ChainVerifier) -> CertificateCache:
    """The ``CertificateCache`` attached to ``chains``, created on first use."""
    return chains.attachment("nitro", CertificateCache)


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
    """Parse, authenticate and describe one Nitro attestation document at time ``at``."""
    if certs or collateral:
        # The document carries its own chain (certificate + cabundle) and AWS publishes no
        # CRLs for it; anything given beside it would be silently unused, so refuse it.
        raise UsageError(
            "a Nitro attestation document takes no separate certificates or collateral"
        )
    document = NitroDocument.from_bytes(raw)
    verify_document(document, roots=roots, at=at, chains=chains)
    return claims_of(document, simulated=simulated)


def verify_document(
    document: NitroDocument, *, roots: PlatformRoots, at: datetime, chains: ChainVerifier
) -> Certificate:
    """Check chain, validity and signature of a parsed document; return its leaf."""
    cache = certificate_cache(chains)
    anchors = tuple(anchor.fingerprint for anchor in roots.anchors)
    key: _ChainKey = (document.certificate, document.cabundle, anchors)
    verified = cache.chain(key)
    if verified is None:
        verified = _verify_chain(document, roots=roots, at=at, chains=chains, cache=cache)
        cache.remember_chain(key, verified)
    else:
        # Links and CA flags were checked when the chain was cached; time was not.
        for cert in verified.path:
            check_validity(cert, at)
    leaf = verified.leaf

    # The NSM signs with a leaf it has just been issued: the document's own timestamp must
    # lie inside the leaf's validity, or the signer claimed a time it could not sign at.
    if not verified.window_ms[0] <= document.timestamp_ms <= verified.window_ms[1]:
        stamped = document_time(document.timestamp_ms)
        raise CertificateMismatch(
            f"document timestamp {stamped.isoformat()} is outside its signing certificate's "
            f"validity {leaf.not_before.isoformat()} .. {leaf.not_after.isoformat()}"
        )

    # RFC 9052 4.4 + RFC 9053 2.1: ES384 over Sig_structure; the signature is r || s,
    # 48 bytes each, big-endian (not DER).
    signature = document.signature
    if len(signature) != ES384_SIGNATURE_BYTES:
        raise MalformedEvidence(
            f"ES384 signature is {len(signature)} bytes, not {ES384_SIGNATURE_BYTES}"
        )
    r = int.from_bytes(signature[:_P384_COORDINATE_BYTES], "big")
    s = int.from_bytes(signature[_P384_COORDINATE_BYTES:], "big")
    try:
        verified.leaf_key.verify(encode_dss_signature(r, s), document.cose.sig_structure(), _ES384)
    except (InvalidSignature, ValueError):
        raise BadSignature(
            f"COSE_Sign1 ES384 signature does not verify with {leaf.common_name!r}"
        ) from None
    return leaf


def _verify_chain(
    document: NitroDocument,
    *,
    roots: PlatformRoots,
    at: datetime,
    chains: ChainVerifier,
    cache: CertificateCache,
) -> VerifiedChain:
    leaf = cache.certificate(document.certificate)
    bundle = [cache.certificate(der) for der in document.cabundle]
    # AWS "Semantic validation" / certificate chain: cabundle is root first, so the path
    # from the leaf is the bundle reversed, and it must end at the pinned AWS Nitro root
    # (byte for byte, or cabundle[0] chains to it). Every certificate must be valid at `at`.
    path = chains.verify_chain(leaf, bundle[::-1], roots.anchors, at)
    used = [cert.fingerprint for cert in path[1:]]
    expected = [cert.fingerprint for cert in reversed(bundle)]
    if used != expected and used != [*expected, path[-1].fingerprint]:
        raise BadCertificateChain("cabundle is not the leaf's chain in order, root first")
    window_ms = (
        int(leaf.not_before.timestamp()) * 1000,
        int(leaf.not_after.timestamp()) * 1000 + 999,
    )
    return VerifiedChain(leaf, tuple(path), _p384_key(leaf), window_ms)


def _p384_key(cert: Certificate) -> ec.EllipticCurvePublicKey:
    """The certificate's key, which must be ECDSA P-384 to check an ES384 signature."""
    loaded = cert.public_key()  # raises MalformedCertificate
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
        loaded.curve, ec.SECP384R1
    ):
        raise BadSignature(
            f"signing certificate {cert.common_name!r} does not hold a P-384 key (ES384)"
        )
    return loaded


def document_time(timestamp_ms: int) -> datetime:
    seconds, millis = divmod(timestamp_ms, 1000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(milliseconds=millis)


def claims_of(document: NitroDocument, *, simulated: bool) -> Claims:
    """The claims of an authenticated document. Debug-mode enclaves report zero PCRs."""
    pcr0 = document.pcr0
    details: dict[str, JsonValue] = {
        "module_id": document.module_id,
        "timestamp": document.timestamp_ms,
        "digest": document.digest,
        "pcrs": {str(index): value.hex() for index, value in document.pcrs.items()},
    }
    for name, value in (
        ("user_data", document.user_data),
        ("nonce", document.nonce),
        ("public_key", document.public_key),
    ):
        details[name] = _hex_or_none(value)
        if value.text is not None:
            details[f"{name}_text"] = value.text
    return Claims(
        platform="nitro",
        measurement=pcr0,
        report_data=document.user_data.value or b"",
        debug=not any(pcr0),
        simulated=simulated,
        details=details,
    )


def _hex_or_none(value: OptionalField) -> str | None:
    return None if value.value is None else value.value.hex()
