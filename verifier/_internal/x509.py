"""Certificates, CRLs and chain verification at an injected time, with a verified-link cache.

What this module owns: parsing X.509 certificates and CRLs from DER or PEM (serial number 0
included), checking a signature made by a certificate's key, and walking a chain from a
leaf to a pinned anchor at a given time. It never reads a clock, a file or the network.

Caching: a link "child was signed by issuer" is a pure function of the two certificates'
bytes, so it is cached by the pair of SHA-256 fingerprints. Validity windows and revocation
are checked on every call, because they depend on the time and the CRLs of that call, and
a chain is only accepted when its last certificate is one of the anchors given to that call.

Other caches (the platform modules' parsed certificates, keys and memoised signatures) are
attached to the same ``ChainVerifier`` with ``ChainVerifier.attachment``: they live and die
with its link cache and are never shared between two instances or kept in module globals.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from threading import Lock
from typing import TypeVar, cast

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_der_public_key

from verifier._internal import der
from verifier.errors import (
    BadCertificateChain,
    CollateralError,
    Expired,
    MalformedCertificate,
    Revoked,
)

OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
OID_ECDSA_SHA384 = "1.2.840.10045.4.3.3"
OID_ECDSA_SHA512 = "1.2.840.10045.4.3.4"
OID_RSA_SHA256 = "1.2.840.113549.1.1.11"
OID_RSA_SHA384 = "1.2.840.113549.1.1.12"
OID_RSA_SHA512 = "1.2.840.113549.1.1.13"
OID_RSA_PSS = "1.2.840.113549.1.1.10"
OID_ED25519 = "1.3.101.112"
OID_SHA256 = "2.16.840.1.101.3.4.2.1"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
OID_SHA512 = "2.16.840.1.101.3.4.2.3"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_COMMON_NAME = "2.5.4.3"

_HashFactory = type[hashes.SHA256] | type[hashes.SHA384] | type[hashes.SHA512]
_HASHES: dict[str, _HashFactory] = {
    OID_SHA256: hashes.SHA256,
    OID_SHA384: hashes.SHA384,
    OID_SHA512: hashes.SHA512,
}
_ECDSA_HASHES: dict[str, _HashFactory] = {
    OID_ECDSA_SHA256: hashes.SHA256,
    OID_ECDSA_SHA384: hashes.SHA384,
    OID_ECDSA_SHA512: hashes.SHA512,
}
_RSA_HASHES: dict[str, _HashFactory] = {
    OID_RSA_SHA256: hashes.SHA256,
    OID_RSA_SHA384: hashes.SHA384,
    OID_RSA_SHA512: hashes.SHA512,
}
_PEM_BLOCK = re.compile(
    rb"-----BEGIN (?P<label>[A-Z0-9 ]+)-----(?P<body>[A-Za-z0-9+/=\s]+)-----END (?P=label)-----"
)
MAX_CERTIFICATE_BYTES = 64 * 1024
# Certificates on a path from leaf to anchor, both included. Real chains have 3 (AMD, Intel)
# to 5 (AWS Nitro; its cabundle holds at most 8). The bound keeps the walk (a signature check
# and a scan of the pool per link) small whatever number of certificates a caller sends.
MAX_CHAIN_LENGTH = 10
T = TypeVar("T")


@dataclass(frozen=True)
class SignatureAlgorithm:
    """A signature algorithm with its parameters (hash; for RSA-PSS the salt length)."""

    oid: str
    hash_oid: str | None = None
    pss_salt_length: int | None = None

    @classmethod
    def from_element(cls, element: der.Element) -> SignatureAlgorithm:
        parts = der.expect(element, der.TAG_SEQUENCE, "AlgorithmIdentifier").children()
        if not parts:
            raise der.DerError("empty AlgorithmIdentifier")
        oid = der.decode_oid(parts[0])
        if oid != OID_RSA_PSS:
            return cls(oid)
        hash_oid, salt = OID_SHA256, 20  # RFC 4055 defaults
        if len(parts) > 1:
            for param in parts[1].children():
                if param.tag == 0xA0:
                    hash_oid = der.decode_oid(param.children()[0].children()[0])
                elif param.tag == 0xA2:
                    salt = der.decode_integer(param.children()[0])
        return cls(oid, hash_oid, salt)


def verify_signature(
    public_key: PublicKeyTypes, algorithm: SignatureAlgorithm, signature: bytes, data: bytes
) -> None:
    """Raise ``InvalidSignature`` unless ``signature`` over ``data`` verifies."""
    try:
        if algorithm.oid in _ECDSA_HASHES:
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise InvalidSignature
            public_key.verify(signature, data, ec.ECDSA(_ECDSA_HASHES[algorithm.oid]()))
        elif algorithm.oid in _RSA_HASHES:
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise InvalidSignature
            public_key.verify(signature, data, padding.PKCS1v15(), _RSA_HASHES[algorithm.oid]())
        elif algorithm.oid == OID_RSA_PSS:
            if not isinstance(public_key, rsa.RSAPublicKey) or algorithm.hash_oid not in _HASHES:
                raise InvalidSignature
            hash_cls = _HASHES[algorithm.hash_oid]
            salt = algorithm.pss_salt_length if algorithm.pss_salt_length is not None else 20
            if not 0 <= salt <= public_key.key_size // 8:
                # No signature has a salt longer than the modulus (RFC 8017 9.1.1), and
                # cryptography raises OverflowError past a C integer.
                raise InvalidSignature
            public_key.verify(
                signature, data, padding.PSS(padding.MGF1(hash_cls()), salt), hash_cls()
            )
        elif algorithm.oid == OID_ED25519:
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                raise InvalidSignature
            public_key.verify(signature, data)
        else:
            raise InvalidSignature
    except UnsupportedAlgorithm as exc:
        raise InvalidSignature from exc
    except ValueError as exc:
        raise InvalidSignature from exc


@dataclass(frozen=True)
class Extension:
    oid: str
    critical: bool
    value: bytes


@dataclass(frozen=True)
class Certificate:
    """An X.509 certificate parsed from DER. Construct with ``from_der`` or ``load_all``."""

    der: bytes = field(repr=False)
    tbs: bytes = field(repr=False)
    serial: int
    signature_algorithm: SignatureAlgorithm
    signature: bytes = field(repr=False)
    issuer: bytes = field(repr=False)
    subject: bytes = field(repr=False)
    not_before: datetime
    not_after: datetime
    spki: bytes = field(repr=False)
    extensions: tuple[Extension, ...] = field(repr=False)
    fingerprint: bytes = field(repr=False)

    @classmethod
    def from_der(cls, data: bytes) -> Certificate:
        if len(data) > MAX_CERTIFICATE_BYTES:
            raise MalformedCertificate("certificate is too large")
        try:
            return cls._parse(data)
        except (der.DerError, UnicodeDecodeError, IndexError, ValueError) as exc:
            raise MalformedCertificate(f"certificate is not valid DER X.509: {exc}") from None

    @classmethod
    def _parse(cls, data: bytes) -> Certificate:
        outer = der.expect(der.read_single(data), der.TAG_SEQUENCE, "Certificate").children()
        if len(outer) != 3:
            raise der.DerError("Certificate must have three parts")
        tbs_el, alg_el, sig_el = outer
        tbs = der.expect(tbs_el, der.TAG_SEQUENCE, "TBSCertificate").children()
        index = 0
        if tbs[0].tag == 0xA0:
            index = 1
        serial = der.decode_integer(tbs[index])
        # RFC 5280 4.1.1.2: the unsigned outer signatureAlgorithm MUST be the same
        # AlgorithmIdentifier as the signed one in the TBS; compared byte for byte, so no
        # parameter the parser skips (PSS mask generation, trailer) can be altered.
        if tbs[index + 1].encoded != alg_el.encoded:
            raise der.DerError("signature algorithm differs inside and outside the TBS")
        outer_alg = SignatureAlgorithm.from_element(alg_el)
        issuer = der.expect(tbs[index + 2], der.TAG_SEQUENCE, "issuer").encoded
        validity = der.expect(tbs[index + 3], der.TAG_SEQUENCE, "validity").children()
        not_before = der.decode_time(validity[0])
        not_after = der.decode_time(validity[1])
        subject = der.expect(tbs[index + 4], der.TAG_SEQUENCE, "subject").encoded
        spki = der.expect(tbs[index + 5], der.TAG_SEQUENCE, "subjectPublicKeyInfo").encoded
        extensions: list[Extension] = []
        for element in tbs[index + 6 :]:
            if element.tag != 0xA3:
                continue
            for ext in der.expect(element.children()[0], der.TAG_SEQUENCE, "extensions").children():
                parts = ext.children()
                oid = der.decode_oid(parts[0])
                critical = False
                value_el = parts[1]
                if value_el.tag == der.TAG_BOOLEAN:
                    critical = value_el.content != b"\x00"
                    value_el = parts[2]
                value = der.expect(value_el, der.TAG_OCTET_STRING, "extnValue").content
                extensions.append(Extension(oid, critical, value))
        return cls(
            der=data,
            tbs=tbs_el.encoded,
            serial=serial,
            signature_algorithm=outer_alg,
            signature=der.decode_bit_string(sig_el),
            issuer=issuer,
            subject=subject,
            not_before=not_before,
            not_after=not_after,
            spki=spki,
            extensions=tuple(extensions),
            fingerprint=hashlib.sha256(data).digest(),
        )

    def public_key(self) -> PublicKeyTypes:
        try:
            return load_der_public_key(self.spki)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise MalformedCertificate(f"unsupported public key in {self.common_name!r}") from exc

    def extension(self, oid: str) -> Extension | None:
        for ext in self.extensions:
            if ext.oid == oid:
                return ext
        return None

    # cached_property: a pure function of the immutable DER, decoded once per instance
    # (ChainVerifier asks on every chain walk). It writes the instance __dict__ directly,
    # which a frozen dataclass allows.
    @functools.cached_property
    def is_ca(self) -> bool | None:
        """True/False from basicConstraints, or None when the extension is absent.

        Raises ``MalformedCertificate`` when the extension is not a DER SEQUENCE.
        """
        ext = self.extension(OID_BASIC_CONSTRAINTS)
        if ext is None:
            return None
        try:
            parts = der.read_single(ext.value).children()
        except (der.DerError, IndexError):
            raise MalformedCertificate(
                f"{self.common_name!r} has a malformed basicConstraints extension"
            ) from None
        return bool(parts) and parts[0].tag == der.TAG_BOOLEAN and parts[0].content != b"\x00"

    @functools.cached_property
    def common_name(self) -> str:
        return name_common_name(self.subject)

    @property
    def issuer_common_name(self) -> str:
        return name_common_name(self.issuer)

    def is_self_issued(self) -> bool:
        return self.issuer == self.subject


def name_common_name(name_der: bytes) -> str:
    """The first commonName in a DER Name, or "?" when there is none or the Name is malformed."""
    try:
        for rdn in der.read_single(name_der).children():
            for attribute in rdn.children():
                parts = attribute.children()  # AttributeTypeAndValue: type, value
                if len(parts) != 2:
                    raise der.DerError("an attribute must be a type and a value")
                if der.decode_oid(parts[0]) == OID_COMMON_NAME:
                    return parts[1].content.decode("utf-8", errors="replace")
    except der.DerError:
        pass
    return "?"


def load_certificates(data: bytes) -> list[Certificate]:
    """Every certificate in ``data``: one DER certificate, or any number of PEM blocks."""
    blocks = [m for m in _PEM_BLOCK.finditer(data) if m.group("label") == b"CERTIFICATE"]
    if blocks:
        return [Certificate.from_der(_pem_body(m.group("body"), "certificate")) for m in blocks]
    if data.lstrip().startswith(b"-----BEGIN"):
        raise MalformedCertificate("PEM data holds no CERTIFICATE block")
    return load_concatenated_der(data)


def _pem_body(body: bytes, what: str) -> bytes:
    """The DER inside a PEM block's base64 body; corrupt base64 is a typed error."""
    try:
        return base64.b64decode(b"".join(body.split()))
    except binascii.Error as exc:
        raise MalformedCertificate(f"{what} PEM is not valid base64: {exc}") from None


def load_concatenated_der(data: bytes) -> list[Certificate]:
    """Certificates stored back to back as DER (as some quotes carry them)."""
    certs: list[Certificate] = []
    offset = 0
    try:
        while offset < len(data):
            if data[offset:].strip(b"\x00") == b"":
                break
            element, end = der.read_element(data, offset)
            certs.append(Certificate.from_der(element.encoded))
            offset = end
    except der.DerError as exc:
        raise MalformedCertificate(f"not a DER certificate: {exc}") from None
    if not certs:
        raise MalformedCertificate("no certificate found")
    return certs


@dataclass(frozen=True)
class RevocationList:
    """A CRL parsed from DER: issuer, update window and the revoked serial numbers."""

    der: bytes = field(repr=False)
    tbs: bytes = field(repr=False)
    signature_algorithm: SignatureAlgorithm
    signature: bytes = field(repr=False)
    issuer: bytes = field(repr=False)
    this_update: datetime
    next_update: datetime | None
    revoked_serials: frozenset[int] = field(repr=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> RevocationList:
        raw = data
        match = re.search(rb"-----BEGIN X509 CRL-----(.+?)-----END X509 CRL-----", data, re.S)
        if match:
            raw = _pem_body(match.group(1), "CRL")
        try:
            outer = der.expect(der.read_single(raw), der.TAG_SEQUENCE, "CRL").children()
            tbs_el, alg_el, sig_el = outer
            tbs = tbs_el.children()
            index = 1 if tbs[0].tag == der.TAG_INTEGER else 0
            # RFC 5280 5.1.1.2: the outer signatureAlgorithm equals the signed one.
            if tbs[index].encoded != alg_el.encoded:
                raise der.DerError("signature algorithm differs inside and outside the TBS")
            issuer = der.expect(tbs[index + 1], der.TAG_SEQUENCE, "issuer").encoded
            this_update = der.decode_time(tbs[index + 2])
            next_update: datetime | None = None
            rest = tbs[index + 3 :]
            if rest and rest[0].tag in (der.TAG_UTC_TIME, der.TAG_GENERALIZED_TIME):
                next_update = der.decode_time(rest[0])
                rest = rest[1:]
            serials: set[int] = set()
            if rest and rest[0].tag == der.TAG_SEQUENCE:
                for entry in rest[0].children():
                    serials.add(der.decode_integer(entry.children()[0]))
            return cls(
                der=raw,
                tbs=tbs_el.encoded,
                signature_algorithm=SignatureAlgorithm.from_element(alg_el),
                signature=der.decode_bit_string(sig_el),
                issuer=issuer,
                this_update=this_update,
                next_update=next_update,
                revoked_serials=frozenset(serials),
            )
        except (der.DerError, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise MalformedCertificate(f"CRL is not valid DER: {exc}") from None


class ChainVerifier:
    """Verifies certificate chains to pinned anchors, caching verified signature links.

    One instance per trust configuration is enough; it is safe to share between threads.
    Platform modules keep their own caches on it with ``attachment``, so everything cached
    for a verifier lives exactly as long as this instance and is never shared with another.
    """

    def __init__(self, max_cached_links: int = 4096) -> None:
        self._links: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
        self._max = max_cached_links
        self._lock = Lock()
        self._attachments: dict[str, object] = {}

    def attachment(self, key: str, factory: Callable[[], T]) -> T:
        """The object attached to this instance under ``key``, made by ``factory`` on first use.

        It is created once, under the instance lock (so ``factory`` must be a plain
        constructor that does not call back into this ``ChainVerifier``), and then returned
        on every call with that key. One key belongs to one factory: callers use a key of
        their own (the platform name) and always pass the same factory with it.
        """
        try:
            return cast(T, self._attachments[key])  # a dict read is atomic: no lock here
        except KeyError:
            pass
        with self._lock:
            if key not in self._attachments:
                self._attachments[key] = factory()
            return cast(T, self._attachments[key])

    def check_signed_by(self, child: Certificate, issuer: Certificate) -> None:
        key = (child.fingerprint, issuer.fingerprint)
        with self._lock:
            if key in self._links:
                self._links.move_to_end(key)
                return
        if child.issuer != issuer.subject:
            raise BadCertificateChain(
                f"{child.common_name!r} names issuer {child.issuer_common_name!r}, "
                f"not {issuer.common_name!r}"
            )
        try:
            verify_signature(
                issuer.public_key(), child.signature_algorithm, child.signature, child.tbs
            )
        except InvalidSignature:
            raise BadCertificateChain(
                f"{child.common_name!r} is not signed by {issuer.common_name!r}"
            ) from None
        with self._lock:
            self._links[key] = None
            if len(self._links) > self._max:
                self._links.popitem(last=False)

    def verify_chain(
        self,
        leaf: Certificate,
        intermediates: Sequence[Certificate],
        anchors: Sequence[Certificate],
        at: datetime,
        crls: Iterable[RevocationList] = (),
    ) -> list[Certificate]:
        """Build and check the path leaf -> intermediates -> anchor; return it, leaf first.

        ``anchors`` are the pinned roots (self-signed); the path must end at one of them,
        byte for byte. Every certificate must be valid at ``at``; every issuer must be a CA.
        """
        if not anchors:
            raise BadCertificateChain("no trust anchor configured")
        path = [leaf]
        pool = [c for c in intermediates if c.fingerprint != leaf.fingerprint]
        anchor_by_fp = {a.fingerprint: a for a in anchors}
        current = leaf
        for _ in range(min(len(pool) + 2, MAX_CHAIN_LENGTH)):
            if current.fingerprint in anchor_by_fp:
                break
            issuer = self._find_issuer(current, pool, anchors)
            if issuer is None:
                raise BadCertificateChain(
                    f"no trusted issuer found for {current.common_name!r} "
                    f"(issued by {current.issuer_common_name!r})"
                )
            self.check_signed_by(current, issuer)
            if issuer.is_ca is False:
                raise BadCertificateChain(f"{issuer.common_name!r} is not a CA certificate")
            path.append(issuer)
            current = issuer
        else:
            raise BadCertificateChain("certificate chain is too long or loops")
        if path[-1].fingerprint not in anchor_by_fp:
            raise BadCertificateChain("certificate chain does not end at a trusted root")
        root = path[-1]
        self.check_signed_by(root, root)
        for cert in path:
            check_validity(cert, at)
        self._check_revocation(path, list(crls), at)
        return path

    def _find_issuer(
        self, cert: Certificate, pool: Sequence[Certificate], anchors: Sequence[Certificate]
    ) -> Certificate | None:
        for candidate in list(anchors) + list(pool):
            if candidate.subject == cert.issuer and candidate.fingerprint != cert.fingerprint:
                return candidate
        return None

    def _check_revocation(
        self, path: Sequence[Certificate], crls: Sequence[RevocationList], at: datetime
    ) -> None:
        for crl in crls:
            issuer = next((c for c in path if c.subject == crl.issuer), None)
            if issuer is None:
                continue
            try:
                verify_signature(
                    issuer.public_key(), crl.signature_algorithm, crl.signature, crl.tbs
                )
            except InvalidSignature:
                raise CollateralError(
                    f"CRL from {issuer.common_name!r} has a bad signature"
                ) from None
            if at < crl.this_update or (crl.next_update is not None and at > crl.next_update):
                raise Expired(
                    f"CRL from {issuer.common_name!r} is valid {crl.this_update.isoformat()}"
                    f" .. {crl.next_update.isoformat() if crl.next_update else 'open'}, "
                    f"not at {at.isoformat()}"
                )
            for cert in path:
                if cert.issuer == crl.issuer and cert.serial in crl.revoked_serials:
                    raise Revoked(
                        f"{cert.common_name!r} (serial {cert.serial:x}) is revoked by "
                        f"{issuer.common_name!r}"
                    )


def check_validity(cert: Certificate, at: datetime) -> None:
    if not cert.not_before <= at <= cert.not_after:
        raise Expired(
            f"certificate {cert.common_name!r} is valid {cert.not_before.isoformat()} .. "
            f"{cert.not_after.isoformat()}, not at {at.isoformat()}"
        )
