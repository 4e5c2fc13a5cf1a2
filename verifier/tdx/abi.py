"""TDX quote v4/v5 wire format: bytes at fixed offsets, no cryptography, no I/O.

What this module owns: turning quote bytes into frozen, typed values (header, optional v5
body descriptor, TD report body, ECDSA signature data, QE certification data) and
rejecting anything whose sizes or types are not those of an ECDSA-256 TDX quote. It never
verifies a signature or a certificate; ``verify`` does that.

Spec references are to "Intel TDX DCAP Quote Generation Library and Quote Verification
Library" (quote format appendix, v4 and v5 layouts; sections cited as "Quote Format A.3.x"
for v4 and "A.4.x" for v5) and to the Intel SGX ECDSA Quote Library reference for the
384-byte SGX report body of the Quoting Enclave.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol, overload

from verifier.errors import MalformedEvidence

# Quote Format A.3.1 / A.4.1: the 48-byte quote header.
HEADER_SIZE = 48
QUOTE_VERSION_4 = 4
QUOTE_VERSION_5 = 5
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x00000081
QE_VENDOR_ID_SIZE = 16
USER_DATA_SIZE = 20

# Quote Format A.4.2: v5 body descriptor (u16 type, u32 size) after the header.
BODY_DESCRIPTOR_SIZE = 6
BODY_TYPE_TDX10 = 2  # TD report body of TDX 1.0
BODY_TYPE_TDX15 = 3  # TD report body of TDX 1.5 (adds TEE_TCB_SVN_2 and MRSERVICETD)
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
BODY_SIZES = {BODY_TYPE_TDX10: TD_REPORT10_SIZE, BODY_TYPE_TDX15: TD_REPORT15_SIZE}

# Quote Format A.3.8 / A.4.9: ECDSA 256-bit quote signature data.
SIGNATURE_SIZE = 64  # r || s, big-endian
ATTESTATION_KEY_SIZE = 64  # x || y of the P-256 attestation public key
CERT_DATA_HEADER_SIZE = 6  # u16 type, u32 size

# Quote Format A.3.9 / A.3.11: certification data types used here.
CERT_TYPE_PCK_CHAIN = 5  # PCK leaf, intermediate and root, PEM (or DER)
CERT_TYPE_QE_REPORT = 6  # QE report certification data, wrapping type 5

# Intel SGX ECDSA Quote Library reference "SGX report body": the QE report.
ENCLAVE_REPORT_SIZE = 384
QE_REPORT_SIGNATURE_SIZE = 64

MAX_QUOTE_BYTES = 1 << 20

_TD_FIELDS_10: tuple[tuple[str, int], ...] = (
    # Quote Format A.3.2 "TD Quote Body" (TDX 1.0), in wire order.
    ("tee_tcb_svn", 16),
    ("mr_seam", 48),
    ("mr_signer_seam", 48),
    ("seam_attributes", 8),
    ("td_attributes", 8),
    ("xfam", 8),
    ("mrtd", 48),
    ("mr_config_id", 48),
    ("mr_owner", 48),
    ("mr_owner_config", 48),
    ("rtmr0", 48),
    ("rtmr1", 48),
    ("rtmr2", 48),
    ("rtmr3", 48),
    ("report_data", 64),
)
# Quote Format A.4.4 "TD Quote Body v1.5": two fields appended.
_TD_FIELDS_15_EXTRA: tuple[tuple[str, int], ...] = (("tee_tcb_svn_2", 16), ("mr_servicetd", 48))


def _offsets(layout: tuple[tuple[str, int], ...]) -> dict[str, tuple[int, int]]:
    out, offset = {}, 0
    for name, size in layout:
        out[name] = (offset, offset + size)
        offset += size
    return out


TD_REPORT_OFFSETS = _offsets(_TD_FIELDS_10 + _TD_FIELDS_15_EXTRA)
assert TD_REPORT_OFFSETS["report_data"][1] == TD_REPORT10_SIZE
assert TD_REPORT_OFFSETS["mr_servicetd"][1] == TD_REPORT15_SIZE


class _Bytes:
    """A read-only field at a fixed offset of a validated raw structure (``self.raw``).

    Parsing validates the sizes once; fields are then slices of the raw bytes, read on
    access. This keeps each parsed object a single immutable ``bytes`` value, which matters
    on the per-quote path (a frozen dataclass pays for every field it stores).
    """

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    @overload
    def __get__(self, obj: None, owner: type) -> _Bytes: ...
    @overload
    def __get__(self, obj: _Raw, owner: type) -> bytes: ...
    def __get__(self, obj: _Raw | None, owner: type) -> _Bytes | bytes:
        if obj is None:
            return self
        return obj.raw[self.start : self.end]


class _Raw(Protocol):
    @property
    def raw(self) -> bytes: ...


def _td(name: str) -> _Bytes:
    return _Bytes(*TD_REPORT_OFFSETS[name])


@dataclass(frozen=True)
class QuoteHeader:
    """Quote Format A.3.1: version, key type, TEE type, QE/PCE SVN, QE vendor, user data."""

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> QuoteHeader:
        if len(data) < HEADER_SIZE:
            raise MalformedEvidence(f"TDX quote is {len(data)} bytes, shorter than its header")
        version, att_key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", data, 0)
        # A.3.1: only ECDSA-256-with-P-256 attestation keys and TEE type 0x81 (TDX).
        if version not in (QUOTE_VERSION_4, QUOTE_VERSION_5):
            raise MalformedEvidence(f"TDX quote version {version} is not 4 or 5")
        if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
            raise MalformedEvidence(
                f"attestation key type {att_key_type} is not 2 (ECDSA-256-with-P-256)"
            )
        if tee_type != TEE_TYPE_TDX:
            raise MalformedEvidence(f"TEE type 0x{tee_type:x} is not 0x81 (TDX)")
        return cls(
            version=version,
            att_key_type=att_key_type,
            tee_type=tee_type,
            qe_svn=qe_svn,
            pce_svn=pce_svn,
            qe_vendor_id=data[12:28],
            user_data=data[28:48],
        )


@dataclass(frozen=True)
class TdReport:
    """Quote Format A.3.2 / A.4.4: the TD report body the attestation key signs.

    ``raw`` is exactly 584 bytes (type 2, TDX 1.0) or 648 bytes (type 3, TDX 1.5).
    """

    raw: bytes = field(repr=False)
    body_type: int

    tee_tcb_svn = _td("tee_tcb_svn")
    mr_seam = _td("mr_seam")
    mr_signer_seam = _td("mr_signer_seam")
    seam_attributes = _td("seam_attributes")
    td_attributes = _td("td_attributes")
    xfam = _td("xfam")
    mrtd = _td("mrtd")
    mr_config_id = _td("mr_config_id")
    mr_owner = _td("mr_owner")
    mr_owner_config = _td("mr_owner_config")
    rtmr0 = _td("rtmr0")
    rtmr1 = _td("rtmr1")
    rtmr2 = _td("rtmr2")
    rtmr3 = _td("rtmr3")
    report_data = _td("report_data")

    @classmethod
    def from_bytes(cls, data: bytes, body_type: int) -> TdReport:
        expected = BODY_SIZES.get(body_type)
        if expected is None or len(data) != expected:
            raise MalformedEvidence(f"TD report body of type {body_type} is {len(data)} bytes")
        return cls(data, body_type)

    @property
    def tee_tcb_svn_2(self) -> bytes | None:
        """TDX 1.5 only (body type 3)."""
        if self.body_type != BODY_TYPE_TDX15:
            return None
        start, end = TD_REPORT_OFFSETS["tee_tcb_svn_2"]
        return self.raw[start:end]

    @property
    def mr_servicetd(self) -> bytes | None:
        """TDX 1.5 only (body type 3)."""
        if self.body_type != BODY_TYPE_TDX15:
            return None
        start, end = TD_REPORT_OFFSETS["mr_servicetd"]
        return self.raw[start:end]

    @property
    def debug(self) -> bool:
        """TDX module spec, TDINFO ATTRIBUTES: bit 0 (DEBUG) of the little-endian u64."""
        return bool(self.raw[TD_REPORT_OFFSETS["td_attributes"][0]] & 0x01)

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


@dataclass(frozen=True)
class EnclaveReport:
    """The Quoting Enclave's 384-byte SGX report body (SGX ECDSA Quote Library reference,
    "Enclave Report Body"): offsets below, ``raw`` exactly 384 bytes."""

    raw: bytes = field(repr=False)

    cpu_svn = _Bytes(0, 16)
    misc_select = _Bytes(16, 20)
    attributes = _Bytes(48, 64)
    mr_enclave = _Bytes(64, 96)
    mr_signer = _Bytes(128, 160)
    report_data = _Bytes(320, 384)

    @classmethod
    def from_bytes(cls, data: bytes) -> EnclaveReport:
        if len(data) != ENCLAVE_REPORT_SIZE:
            raise MalformedEvidence(f"QE report is {len(data)} bytes, not {ENCLAVE_REPORT_SIZE}")
        return cls(data)

    @property
    def isv_prod_id(self) -> int:
        return int.from_bytes(self.raw[256:258], "little")

    @property
    def isv_svn(self) -> int:
        return int.from_bytes(self.raw[258:260], "little")


@dataclass(frozen=True)
class Quote:
    """A parsed TDX quote. ``signed_data`` is header (+ v5 descriptor) + body, as signed."""

    header: QuoteHeader
    body_type: int
    report: TdReport
    signed_data: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    attestation_key: bytes = field(repr=False)
    qe_report: EnclaveReport = field(repr=False)
    qe_report_signature: bytes = field(repr=False)
    qe_auth_data: bytes = field(repr=False)
    pck_chain: bytes = field(repr=False)

    @classmethod
    def from_bytes(cls, data: bytes) -> Quote:
        if len(data) > MAX_QUOTE_BYTES:
            raise MalformedEvidence(f"TDX quote is larger than {MAX_QUOTE_BYTES} bytes")
        header = QuoteHeader.from_bytes(data)
        offset = HEADER_SIZE
        if header.version == QUOTE_VERSION_4:
            # A.3: v4 always carries a TDX 1.0 body right after the header.
            body_type, body_size = BODY_TYPE_TDX10, TD_REPORT10_SIZE
        else:
            # A.4.2: v5 names the body type and size in a descriptor.
            _need(data, offset, BODY_DESCRIPTOR_SIZE, "body descriptor")
            body_type, body_size = struct.unpack_from("<HI", data, offset)
            offset += BODY_DESCRIPTOR_SIZE
            if BODY_SIZES.get(body_type) != body_size:
                raise MalformedEvidence(
                    f"v5 body descriptor type {body_type} size {body_size} is not a TD report"
                    " (type 2: 584 bytes, type 3: 648 bytes)"
                )
        _need(data, offset, body_size, "TD report body")
        report = TdReport.from_bytes(data[offset : offset + body_size], body_type)
        offset += body_size
        signed_data = data[:offset]
        # A.3.7: u32 signature data length, then the signature data. Bytes after it are
        # padding (configfs-tsm buffers, test fixtures) and are ignored, not signed.
        _need(data, offset, 4, "signature data length")
        (sig_len,) = struct.unpack_from("<I", data, offset)
        offset += 4
        _need(data, offset, sig_len, "signature data")
        sig_data = data[offset : offset + sig_len]
        signature, attestation_key, cert_type, cert_body = _signature_data(sig_data)
        if cert_type != CERT_TYPE_QE_REPORT:
            raise MalformedEvidence(
                f"certification data type {cert_type} is not 6 (QE report certification data)"
            )
        qe_report, qe_sig, qe_auth, pck_chain = _qe_certification_data(cert_body)
        return cls(
            header=header,
            body_type=body_type,
            report=report,
            signed_data=signed_data,
            signature=signature,
            attestation_key=attestation_key,
            qe_report=qe_report,
            qe_report_signature=qe_sig,
            qe_auth_data=qe_auth,
            pck_chain=pck_chain,
        )


def _need(data: bytes, offset: int, size: int, what: str) -> None:
    if offset + size > len(data):
        raise MalformedEvidence(
            f"TDX quote is truncated: {what} needs {size} bytes at offset {offset}, "
            f"quote has {len(data)}"
        )


def _cert_data(data: bytes, offset: int, what: str) -> tuple[int, bytes, int]:
    """A.3.9: u16 certification data type, u32 size, then that many bytes."""
    if offset + CERT_DATA_HEADER_SIZE > len(data):
        raise MalformedEvidence(f"{what} header is truncated")
    cert_type, size = struct.unpack_from("<HI", data, offset)
    start = offset + CERT_DATA_HEADER_SIZE
    if start + size > len(data):
        raise MalformedEvidence(f"{what} of {size} bytes runs past its container")
    return cert_type, data[start : start + size], start + size


def _signature_data(data: bytes) -> tuple[bytes, bytes, int, bytes]:
    """A.3.8: signature (64), attestation key (64), certification data."""
    fixed = SIGNATURE_SIZE + ATTESTATION_KEY_SIZE
    if len(data) < fixed + CERT_DATA_HEADER_SIZE:
        raise MalformedEvidence(f"signature data of {len(data)} bytes is too short")
    signature = data[:SIGNATURE_SIZE]
    attestation_key = data[SIGNATURE_SIZE:fixed]
    cert_type, body, end = _cert_data(data, fixed, "certification data")
    if end != len(data):
        raise MalformedEvidence(
            f"signature data length {len(data)} does not match its content ({end} bytes)"
        )
    return signature, attestation_key, cert_type, body


def _qe_certification_data(data: bytes) -> tuple[EnclaveReport, bytes, bytes, bytes]:
    """A.3.11: QE report (384), its signature (64), u16 auth data size + auth data, and the
    inner certification data, which must be type 5 (the PCK certificate chain)."""
    fixed = ENCLAVE_REPORT_SIZE + QE_REPORT_SIGNATURE_SIZE
    if len(data) < fixed + 2:
        raise MalformedEvidence("QE report certification data is truncated")
    qe_report = EnclaveReport.from_bytes(data[:ENCLAVE_REPORT_SIZE])
    qe_sig = data[ENCLAVE_REPORT_SIZE:fixed]
    (auth_size,) = struct.unpack_from("<H", data, fixed)
    auth_start = fixed + 2
    if auth_start + auth_size > len(data):
        raise MalformedEvidence("QE authentication data runs past its container")
    qe_auth = data[auth_start : auth_start + auth_size]
    inner_type, chain, end = _cert_data(data, auth_start + auth_size, "PCK certification data")
    if inner_type != CERT_TYPE_PCK_CHAIN:
        raise MalformedEvidence(
            f"inner certification data type {inner_type} is not 5 (PCK certificate chain)"
        )
    if end != len(data):
        raise MalformedEvidence("QE report certification data has trailing bytes")
    if not chain.strip(b"\x00"):
        raise MalformedEvidence("PCK certificate chain is empty")
    return qe_report, qe_sig, qe_auth, chain
