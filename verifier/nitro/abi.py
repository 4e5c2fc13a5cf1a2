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

The CBOR is read by a small strict reader written for this format instead of a general
decoder: it keeps the payload bytes exactly as received (they are what was signed, and
current NSMs encode the payload map with indefinite length), refuses duplicate map keys
(a second "pcrs" must never shadow the first), tags other than the optional outer 18,
floats and undefined, and bounds nesting. Every failure is ``MalformedEvidence``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

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

_REQUIRED_FIELDS = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_OPTIONAL_FIELDS = ("public_key", "user_data", "nonce")
_KNOWN_FIELDS = frozenset(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)
# Year 9999 in milliseconds: anything later cannot be a real NSM clock.
_MAX_TIMESTAMP_MS = 253_402_300_799_999


# --------------------------------------------------------------------------- CBOR reader


class _Break:
    """The CBOR "break" stop code (0xff) that ends an indefinite-length item."""


_BREAK = _Break()


@dataclass(frozen=True)
class _Tagged:
    tag: int
    value: object


class _CborReader:
    """A strict RFC 8949 reader for the subset a COSE_Sign1 Nitro document uses."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.what = what
        self.pos = 0

    def fail(self, why: str) -> MalformedEvidence:
        return MalformedEvidence(f"{self.what}: CBOR error at byte {self.pos}: {why}")

    def _take(self, count: int) -> bytes:
        end = self.pos + count
        if count < 0 or end > len(self.data):
            raise self.fail("truncated item")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _argument(self, info: int) -> int | None:
        """The head's argument; None for indefinite length (info 31)."""
        if info < 24:
            return info
        if info == 24:
            return self._take(1)[0]
        if info == 25:
            return int.from_bytes(self._take(2), "big")
        if info == 26:
            return int.from_bytes(self._take(4), "big")
        if info == 27:
            return int.from_bytes(self._take(8), "big")
        if info == 31:
            return None
        raise self.fail(f"reserved additional information {info}")

    def read(self, depth: int = 0, *, allow_break: bool = False) -> object:
        if depth > MAX_NESTING:
            raise self.fail("nesting too deep")
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if initial == 0xFF:
            if allow_break:
                return _BREAK
            raise self.fail("unexpected break")
        argument = self._argument(info)
        if major == 0:
            if argument is None:
                raise self.fail("indefinite integer")
            return argument
        if major == 1:
            if argument is None:
                raise self.fail("indefinite integer")
            return -1 - argument
        if major in (2, 3):
            raw = self._string(major, argument)
            if major == 2:
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("text string is not UTF-8") from None
        if major == 4:
            items: list[object] = []
            if argument is None:
                while (item := self.read(depth + 1, allow_break=True)) is not _BREAK:
                    items.append(item)
                return items
            self._bound(argument)
            for _ in range(argument):
                items.append(self.read(depth + 1))
            return items
        if major == 5:
            return self._map(argument, depth)
        if major == 6:
            if argument is None:
                raise self.fail("indefinite tag")
            return _Tagged(argument, self.read(depth + 1))
        # major 7: simple values. Only false, true and null occur in this format.
        if argument is None:
            raise self.fail("unexpected break")
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        raise self.fail("floating point and simple values other than true/false/null")

    def _bound(self, count: int) -> None:
        # Every item takes at least one byte, so a count beyond the bytes left is a lie.
        if count > len(self.data) - self.pos:
            raise self.fail("container length exceeds the data")

    def _string(self, major: int, argument: int | None) -> bytes:
        if argument is not None:
            return self._take(argument)
        chunks: list[bytes] = []
        while True:
            initial = self._take(1)[0]
            if initial == 0xFF:
                return b"".join(chunks)
            if initial >> 5 != major:
                raise self.fail("indefinite string chunk of another type")
            length = self._argument(initial & 0x1F)
            if length is None:
                raise self.fail("nested indefinite string chunk")
            chunks.append(self._take(length))

    def _map(self, argument: int | None, depth: int) -> dict[object, object]:
        out: dict[object, object] = {}
        if argument is not None:
            self._bound(argument)
        count = 0
        while argument is None or count < argument:
            key = self.read(depth + 1, allow_break=argument is None)
            if key is _BREAK:
                break
            if not isinstance(key, int | str) or isinstance(key, bool):
                raise self.fail("map key is neither an integer nor a text string")
            if key in out:
                raise self.fail(f"duplicate map key {key!r}")
            out[key] = self.read(depth + 1)
            count += 1
        return out

    def read_single(self) -> object:
        value = self.read()
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes")
        return value


def decode_cbor(data: bytes, what: str = "CBOR item") -> object:
    """Decode one CBOR item that fills ``data`` exactly (strict subset, see module doc)."""
    return _CborReader(data, what).read_single()


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
        if isinstance(outer, _Tagged):
            if outer.tag != COSE_SIGN1_TAG:
                raise MalformedEvidence(f"CBOR tag {outer.tag} is not COSE_Sign1 (18)")
            outer, tagged = outer.value, True
        if not isinstance(outer, list) or len(outer) != 4:
            raise MalformedEvidence("COSE_Sign1 must be an array of four items")
        protected, unprotected, payload, signature = outer
        if not isinstance(protected, bytes):
            raise MalformedEvidence("COSE_Sign1 protected header must be a byte string")
        if not isinstance(unprotected, dict):
            raise MalformedEvidence("COSE_Sign1 unprotected header must be a map")
        if not isinstance(payload, bytes):
            # RFC 9052 4.2: nil means a detached payload, which an NSM never produces.
            raise MalformedEvidence("COSE_Sign1 payload must be an attached byte string")
        if not isinstance(signature, bytes):
            raise MalformedEvidence("COSE_Sign1 signature must be a byte string")
        return cls(protected, unprotected, payload, signature, tagged)

    def algorithm(self) -> int:
        """The protected ``alg``; RFC 9052 3.1 forbids a parameter in both buckets."""
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
        missing = [name for name in _REQUIRED_FIELDS if name not in payload]
        if missing:
            raise MalformedEvidence(f"attestation document lacks {', '.join(missing)}")
        unknown = sorted(str(k) for k in payload if k not in _KNOWN_FIELDS)
        if unknown:
            # The AWS CDDL is closed; an unknown field is refused rather than ignored.
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
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_PCRS:
            raise MalformedEvidence(f"PCR index {index!r} is not in 0..{MAX_PCRS - 1}")
        if not isinstance(digest, bytes) or len(digest) not in PCR_SIZES:
            raise MalformedEvidence(f"PCR{index} must be a byte string of 32, 48 or 64 bytes")
        out[index] = digest
    if 0 not in out:
        raise MalformedEvidence("pcrs lacks PCR0 (the enclave image measurement)")
    return dict(sorted(out.items()))


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
