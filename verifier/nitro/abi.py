"""The AWS Nitro Enclaves attestation document: COSE_Sign1 envelope and payload, as bytes.

What this module owns: turning document bytes into a typed ``NitroDocument`` (syntactic
checks only) and rebuilding the exact bytes the COSE signature covers. It never checks a
signature or a certificate (``verify`` does), never reads a clock, a file or the network.

References:
- RFC 9052 (COSE) section 4.2 (COSE_Sign1), 4.4 (Sig_structure), 3.1 (header parameters),
  section 2 (tag 18 is optional: "COSE_Sign1_Tagged" or untagged by context).
- AWS Nitro Enclaves "Verifying the root of trust" (and aws-nitro-enclaves-nsm-api
  docs/attestation_process.md): "Attestation document specification" (the CDDL of the
  payload) and "Syntactical validation" (field types and sizes).

CBOR is decoded with cbor2, strictly: duplicate map keys are refused (a second "pcrs"
must never shadow the first), nesting is bounded and trailing bytes are refused. The
payload bytes are kept exactly as received, because they are what was signed (current
NSMs encode the payload map with indefinite length). Every failure is
``MalformedEvidence``.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import cbor2

from verifier.errors import MalformedEvidence, UnsupportedEvidence

# Named limits (AWS "Syntactical validation" gives 1..1024 bytes per certificate; the
# document cap and the optional-field caps bound work before any cryptography).
MAX_DOCUMENT_BYTES = 16 * 1024
MAX_CERTIFICATE_BYTES = 1024
MAX_CABUNDLE_CERTIFICATES = 8
MAX_OPTIONAL_FIELD_BYTES = 1024
MAX_MODULE_ID_CHARS = 256
MAX_PCRS = 32
PCR_SIZES = frozenset({32, 48, 64})
MAX_HEADER_ENTRIES = 16
MAX_NESTING = 8
ES384_SIGNATURE_BYTES = 96

COSE_SIGN1_TAG = 18
COSE_HEADER_ALG = 1
COSE_HEADER_CRIT = 2
COSE_ALG_ES384 = -35
NITRO_DIGEST = "SHA384"
_PROTECTED_ES384 = b"\xa1\x01\x38\x22"  # CBOR {1: -35}

_REQUIRED_ORDER = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_REQUIRED_FIELDS = frozenset(_REQUIRED_ORDER)
_KNOWN_FIELDS = frozenset((*_REQUIRED_ORDER, "public_key", "user_data", "nonce"))
# Year 9999 in milliseconds: anything later cannot be a real NSM clock.
_MAX_TIMESTAMP_MS = 253_402_300_799_999


# --------------------------------------------------------------------------- CBOR


def decode_cbor(data: bytes, what: str = "CBOR item") -> object:
    """Decode one CBOR item that fills ``data`` exactly.

    cbor2 (C accelerated) with duplicate map keys refused, nesting bounded and trailing
    bytes refused. Semantic tags it knows become Python objects other than the types
    this format allows, so the field checks below reject them.
    """
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream, max_depth=MAX_NESTING, allow_duplicate_keys=False
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise MalformedEvidence(f"{what}: invalid CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise MalformedEvidence(
            f"{what}: {len(data) - stream.tell()} trailing bytes after the CBOR item"
        )
    return value


# --------------------------------------------------------------------------- COSE_Sign1


@dataclass(frozen=True)
class CoseSign1:
    """RFC 9052 section 4.2: [protected bstr, unprotected map, payload bstr, signature]."""

    protected: bytes = field(repr=False)
    unprotected: Mapping[object, object]
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    tagged: bool

    @classmethod
    def from_bytes(cls, data: bytes) -> CoseSign1:
        if len(data) > MAX_DOCUMENT_BYTES:
            raise MalformedEvidence(
                f"attestation document is {len(data)} bytes, more than {MAX_DOCUMENT_BYTES}"
            )
        outer = decode_cbor(data, "COSE_Sign1")
        tagged = False
        # RFC 9052 section 2: COSE_Sign1_Tagged is tag 18; NSM emits the untagged form.
        if isinstance(outer, cbor2.CBORTag):
            if outer.tag != COSE_SIGN1_TAG:
                raise MalformedEvidence(f"CBOR tag {outer.tag} is not COSE_Sign1 (18)")
            outer, tagged = outer.value, True
        if not isinstance(outer, list | tuple) or len(outer) != 4:
            raise MalformedEvidence("COSE_Sign1 must be an array of four items")
        protected, unprotected, payload, signature = outer
        if not isinstance(protected, bytes):
            raise MalformedEvidence("COSE_Sign1 protected header must be a byte string")
        if not isinstance(unprotected, Mapping):
            raise MalformedEvidence("COSE_Sign1 unprotected header must be a map")
        if not isinstance(payload, bytes):
            # RFC 9052 4.2: nil means a detached payload, which an NSM never produces.
            raise MalformedEvidence("COSE_Sign1 payload must be an attached byte string")
        if not isinstance(signature, bytes):
            raise MalformedEvidence("COSE_Sign1 signature must be a byte string")
        return cls(protected, unprotected, payload, signature, tagged)

    def algorithm(self) -> int:
        """The protected ``alg``; RFC 9052 3.1 forbids a parameter in both buckets."""
        if self.protected == _PROTECTED_ES384 and not self.unprotected:
            return COSE_ALG_ES384  # the exact bytes every NSM sends: {1: -35}
        headers = decode_cbor(self.protected, "COSE protected header") if self.protected else {}
        if not isinstance(headers, dict) or len(headers) > MAX_HEADER_ENTRIES:
            raise MalformedEvidence("COSE protected header must be a small map")
        if len(self.unprotected) > MAX_HEADER_ENTRIES:
            raise MalformedEvidence("COSE unprotected header has too many entries")
        if set(headers) & set(self.unprotected):
            raise MalformedEvidence("a COSE header parameter is both protected and unprotected")
        if COSE_HEADER_CRIT in headers or COSE_HEADER_CRIT in self.unprotected:
            # RFC 9052 3.1 "crit": we understand no extension, so we must refuse.
            raise UnsupportedEvidence("COSE header lists critical parameters")
        alg = headers.get(COSE_HEADER_ALG)
        if alg is None:
            raise MalformedEvidence("COSE protected header has no alg")
        if not isinstance(alg, int) or isinstance(alg, bool):
            raise UnsupportedEvidence(f"COSE alg {alg!r} is not ES384")
        return alg

    def sig_structure(self) -> bytes:
        """RFC 9052 4.4: ["Signature1", body_protected, external_aad = h'', payload].

        The protected header and the payload are embedded as the exact bytes received:
        re-encoding them would break documents whose payload map has indefinite length.
        """
        return b"".join(
            (
                b"\x84",  # array(4)
                b"\x6aSignature1",  # text(10)
                _bstr_head(len(self.protected)),
                self.protected,
                b"\x40",  # external_aad: empty bstr
                _bstr_head(len(self.payload)),
                self.payload,
            )
        )


def _bstr_head(length: int) -> bytes:
    if length < 24:
        return bytes([0x40 | length])
    if length < 0x100:
        return bytes([0x58, length])
    if length < 0x10000:
        return b"\x59" + struct.pack(">H", length)
    return b"\x5a" + struct.pack(">I", length)


# --------------------------------------------------------------------------- payload


@dataclass(frozen=True)
class OptionalField:
    """public_key / user_data / nonce: absent or null (``value`` None), bytes, or text.

    Some producers put ASCII text where the specification says bstr; the text is kept in
    ``text`` and its UTF-8 encoding in ``value`` so the caller sees both.
    """

    value: bytes | None = None
    text: str | None = None


@dataclass(frozen=True)
class NitroDocument:
    """A syntactically valid enclave attestation document (not yet authenticated)."""

    cose: CoseSign1 = field(repr=False)
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes] = field(repr=False)
    certificate: bytes = field(repr=False)
    cabundle: tuple[bytes, ...] = field(repr=False)
    public_key: OptionalField = field(repr=False)
    user_data: OptionalField = field(repr=False)
    nonce: OptionalField = field(repr=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> NitroDocument:
        cose = CoseSign1.from_bytes(data)
        # RFC 9052 3.1 / AWS: Nitro documents are signed with ES384 only.
        alg = cose.algorithm()
        if alg != COSE_ALG_ES384:
            raise UnsupportedEvidence(f"COSE alg {alg} is not ES384 ({COSE_ALG_ES384})")
        payload = decode_cbor(cose.payload, "attestation document payload")
        if not isinstance(payload, dict):
            raise MalformedEvidence("attestation document payload must be a map")
        return cls._from_payload(cose, payload)

    @classmethod
    def _from_payload(cls, cose: CoseSign1, payload: dict[object, object]) -> NitroDocument:
        if "pcrs" not in payload and "nitrotpm_pcrs" in payload:
            # NitroTPM documents share the PKI but attest an EC2 instance's TPM PCRs.
            raise UnsupportedEvidence(
                "not an enclave document: a NitroTPM document (nitrotpm_pcrs, no pcrs)"
            )
        if not _REQUIRED_FIELDS.issubset(payload):
            missing = [name for name in _REQUIRED_ORDER if name not in payload]
            raise MalformedEvidence(f"attestation document lacks {', '.join(missing)}")
        if not _KNOWN_FIELDS.issuperset(payload):
            # The AWS CDDL is closed; an unknown field is refused rather than ignored.
            unknown = sorted(str(k) for k in payload if k not in _KNOWN_FIELDS)
            raise MalformedEvidence(f"attestation document has unknown field(s) {unknown}")

        # AWS "Syntactical validation": module_id is a non-empty text string.
        module_id = payload["module_id"]
        if not isinstance(module_id, str) or not 0 < len(module_id) <= MAX_MODULE_ID_CHARS:
            raise MalformedEvidence("module_id must be a non-empty text string")
        # digest names the PCR bank; Nitro Enclaves use SHA384.
        digest = payload["digest"]
        if digest != NITRO_DIGEST:
            raise MalformedEvidence(f"digest must be {NITRO_DIGEST!r}, not {digest!r}")
        # timestamp: uint, milliseconds since the UNIX epoch.
        timestamp = payload["timestamp"]
        if (
            not isinstance(timestamp, int)
            or isinstance(timestamp, bool)
            or not 0 < timestamp <= _MAX_TIMESTAMP_MS
        ):
            raise MalformedEvidence("timestamp must be a positive integer of milliseconds")
        pcrs = _pcrs(payload["pcrs"])
        certificate = _der_bytes(payload["certificate"], "certificate")
        # cabundle: array of DER certificates, root first.
        bundle = payload["cabundle"]
        if not isinstance(bundle, list) or not 0 < len(bundle) <= MAX_CABUNDLE_CERTIFICATES:
            raise MalformedEvidence(
                f"cabundle must be a list of 1..{MAX_CABUNDLE_CERTIFICATES} certificates"
            )
        cabundle = tuple(_der_bytes(cert, "cabundle entry") for cert in bundle)
        return cls(
            cose=cose,
            module_id=module_id,
            digest=digest,
            timestamp_ms=timestamp,
            pcrs=pcrs,
            certificate=certificate,
            cabundle=cabundle,
            public_key=_optional(payload.get("public_key"), "public_key"),
            user_data=_optional(payload.get("user_data"), "user_data"),
            nonce=_optional(payload.get("nonce"), "nonce"),
        )

    @property
    def signature(self) -> bytes:
        return self.cose.signature

    @property
    def pcr0(self) -> bytes:
        return self.pcrs[0]


def _pcrs(value: object) -> dict[int, bytes]:
    # AWS "Syntactical validation": pcrs is a map of 1..32 entries, index 0..31,
    # each value a bstr of 32, 48 or 64 bytes.
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_PCRS:
        raise MalformedEvidence(f"pcrs must be a map of 1..{MAX_PCRS} entries")
    out: dict[int, bytes] = {}
    for index, digest in value.items():
        if type(index) is not int or not 0 <= index < MAX_PCRS:
            raise MalformedEvidence(f"PCR index {index!r} is not in 0..{MAX_PCRS - 1}")
        if type(digest) is not bytes or len(digest) not in PCR_SIZES:
            raise MalformedEvidence(f"PCR{index} must be a byte string of 32, 48 or 64 bytes")
        out[index] = digest
    if 0 not in out:
        raise MalformedEvidence("pcrs lacks PCR0 (the enclave image measurement)")
    return out


def _der_bytes(value: object, name: str) -> bytes:
    if not isinstance(value, bytes) or not 0 < len(value) <= MAX_CERTIFICATE_BYTES:
        raise MalformedEvidence(f"{name} must be a byte string of 1..{MAX_CERTIFICATE_BYTES} bytes")
    return value


def _optional(value: object, name: str) -> OptionalField:
    if value is None:
        return OptionalField()
    if isinstance(value, str):
        encoded = value.encode("utf-8")
        if len(encoded) > MAX_OPTIONAL_FIELD_BYTES:
            raise MalformedEvidence(f"{name} is longer than {MAX_OPTIONAL_FIELD_BYTES} bytes")
        return OptionalField(encoded, value)
    if not isinstance(value, bytes):
        raise MalformedEvidence(f"{name} must be null, a byte string or a text string")
    if len(value) > MAX_OPTIONAL_FIELD_BYTES:
        raise MalformedEvidence(f"{name} is longer than {MAX_OPTIONAL_FIELD_BYTES} bytes")
    return OptionalField(value)
