"""Authenticate an AWS Nitro Enclaves attestation document and emit its claims.

What this module owns: the semantic checks of AWS "Verifying the root of trust" (section
"Semantic validation": certificate validity, chain to the pinned AWS Nitro Enclaves root
G1, COSE signature with the leaf key) on a document ``abi`` has parsed, at an injected
time. It never reads a clock, a file or the network, and never judges policy (``validate``).

Performance: a document carries four CA certificates that rarely change and a leaf that
the NSM reuses for a while, so parsed certificates and their public keys are kept in a
small LRU (``CertificateCache``) held by the caller's ``ChainVerifier`` (the object that
already caches verified chain links), never in a module global. Validity windows are
checked on every call, because they depend on ``at``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from threading import Lock

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from verifier._internal.x509 import Certificate, ChainVerifier
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

CACHE_ATTRIBUTE = "nitro_certificate_cache"
"""Name of the attribute under which a ``ChainVerifier`` carries its ``CertificateCache``."""

_ES384 = ec.ECDSA(hashes.SHA384())
_P384_COORDINATE_BYTES = ES384_SIGNATURE_BYTES // 2


class CertificateCache:
    """A thread-safe LRU of parsed certificates and public keys, keyed by SHA-256(DER).

    A parsed certificate is a pure function of its bytes, so a hit is as good as a fresh
    parse. Entries hold no secret and no verdict about time or trust.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self._entries: OrderedDict[bytes, Certificate] = OrderedDict()
        self._keys: dict[bytes, ec.EllipticCurvePublicKey] = {}
        self._max = max_entries
        self._lock = Lock()

    def certificate(self, der: bytes) -> Certificate:
        fingerprint = hashlib.sha256(der).digest()
        with self._lock:
            cached = self._entries.get(fingerprint)
            if cached is not None:
                self._entries.move_to_end(fingerprint)
                return cached
        cert = Certificate.from_der(der)  # raises MalformedCertificate
        with self._lock:
            self._entries[cert.fingerprint] = cert
            while len(self._entries) > self._max:
                evicted, _ = self._entries.popitem(last=False)
                self._keys.pop(evicted, None)
        return cert

    def p384_key(self, cert: Certificate) -> ec.EllipticCurvePublicKey:
        """The certificate's key, which must be ECDSA P-384 to check an ES384 signature."""
        with self._lock:
            key = self._keys.get(cert.fingerprint)
        if key is not None:
            return key
        loaded = cert.public_key()  # raises MalformedCertificate
        if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
            loaded.curve, ec.SECP384R1
        ):
            raise BadSignature(
                f"signing certificate {cert.common_name!r} does not hold a P-384 key (ES384)"
            )
        with self._lock:
            if cert.fingerprint in self._entries:
                self._keys[cert.fingerprint] = loaded
        return loaded

    def __len__(self) -> int:
        return len(self._entries)


def certificate_cache(chains: ChainVerifier) -> CertificateCache:
    """The ``CertificateCache`` attached to ``chains``, created on first use."""
    cache = getattr(chains, CACHE_ATTRIBUTE, None)
    if not isinstance(cache, CertificateCache):
        cache = CertificateCache()
        setattr(chains, CACHE_ATTRIBUTE, cache)
    return cache


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

    # The NSM signs with a leaf it has just been issued: the document's own timestamp must
    # lie inside the leaf's validity, or the signer claimed a time it could not sign at.
    stamped = document_time(document.timestamp_ms)
    if not leaf.not_before <= stamped.replace(microsecond=0) <= leaf.not_after:
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
        cache.p384_key(leaf).verify(
            encode_dss_signature(r, s), document.cose.sig_structure(), _ES384
        )
    except (InvalidSignature, ValueError):
        raise BadSignature(
            f"COSE_Sign1 ES384 signature does not verify with {leaf.common_name!r}"
        ) from None
    return leaf


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
