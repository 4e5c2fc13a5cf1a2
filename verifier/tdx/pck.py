"""The Intel SGX PCK certificate extension (OID 1.2.840.113741.1.13.1), parsed from DER.

What this module owns: reading FMSPC, PCE-ID, SGX type and the PCK TCB (16 SGX TCB
component SVNs, PCESVN, CPUSVN) from a PCK leaf certificate. Reference: "Intel SGX PCK
Certificate and Certificate Revocation List Profile Specification", section 1.5 "Intel
SGX PCK Certificate: SGX Extensions". It verifies nothing; ``verify`` checks the chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from verifier._internal import der
from verifier._internal.x509 import Certificate
from verifier.errors import MalformedCertificate

OID_SGX_EXTENSIONS = "1.2.840.113741.1.13.1"
_PPID = OID_SGX_EXTENSIONS + ".1"
_TCB = OID_SGX_EXTENSIONS + ".2"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"
_PCE_ID = OID_SGX_EXTENSIONS + ".3"
_FMSPC = OID_SGX_EXTENSIONS + ".4"
_SGX_TYPE = OID_SGX_EXTENSIONS + ".5"
TAG_ENUMERATED = 0x0A
TCB_COMPONENTS = 16
PCK_CN_PHRASE = "SGX PCK Certificate"  # PCK profile 1.3 / QVL 4.1.2.4.4


@dataclass(frozen=True)
class PckTcb:
    """PCK profile 1.5, TCB: the 16 SGX TCB component SVNs, PCESVN and CPUSVN."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes


@dataclass(frozen=True)
class PckExtensions:
    fmspc: bytes
    pce_id: bytes
    sgx_type: int
    tcb: PckTcb

    @classmethod
    def from_certificate(cls, cert: Certificate) -> PckExtensions:
        ext = cert.extension(OID_SGX_EXTENSIONS)
        if ext is None:
            raise MalformedCertificate(
                f"{cert.common_name!r} carries no SGX extension ({OID_SGX_EXTENSIONS})"
            )
        try:
            return cls._parse(ext.value)
        except (der.DerError, IndexError, ValueError) as exc:
            raise MalformedCertificate(f"PCK SGX extension is malformed: {exc}") from None

    @classmethod
    def _parse(cls, value: bytes) -> PckExtensions:
        fields = _oid_map(der.read_single(value))
        fmspc = _octets(fields, _FMSPC, 6)
        pce_id = _octets(fields, _PCE_ID, 2)
        if _PPID not in fields:
            raise der.DerError("PPID is missing")
        sgx_type_el = fields.get(_SGX_TYPE)
        if sgx_type_el is None or sgx_type_el.tag != TAG_ENUMERATED or not sgx_type_el.content:
            raise der.DerError("SGX type is missing or not ENUMERATED")
        sgx_type = int.from_bytes(sgx_type_el.content, "big")
        tcb_el = fields.get(_TCB)
        if tcb_el is None:
            raise der.DerError("TCB is missing")
        tcb_fields = _oid_map(tcb_el)
        components = []
        for index in range(1, TCB_COMPONENTS + 1):
            element = tcb_fields.get(f"{_TCB}.{index}")
            if element is None:
                raise der.DerError(f"TCB component {index} is missing")
            components.append(_small_int(element))
        pce_el = tcb_fields.get(_PCESVN)
        if pce_el is None:
            raise der.DerError("PCESVN is missing")
        tcb = PckTcb(
            sgx_components=tuple(components),
            pce_svn=_small_int(pce_el),
            cpu_svn=_octets(tcb_fields, _CPUSVN, 16),
        )
        return cls(fmspc=fmspc, pce_id=pce_id, sgx_type=sgx_type, tcb=tcb)


def _oid_map(sequence: der.Element) -> dict[str, der.Element]:
    """A SEQUENCE of SEQUENCE { OID, value } as a map; a repeated OID is an error."""
    out: dict[str, der.Element] = {}
    for item in der.expect(sequence, der.TAG_SEQUENCE, "SGX extension").children():
        parts = der.expect(item, der.TAG_SEQUENCE, "SGX extension entry").children()
        if len(parts) != 2:
            raise der.DerError("SGX extension entry must be OID and value")
        oid = der.decode_oid(parts[0])
        if oid in out:
            raise der.DerError(f"SGX extension entry {oid} is repeated")
        out[oid] = parts[1]
    return out


def _octets(fields: dict[str, der.Element], oid: str, size: int) -> bytes:
    element = fields.get(oid)
    if element is None:
        raise der.DerError(f"{oid} is missing")
    value = der.expect(element, der.TAG_OCTET_STRING, oid).content
    if len(value) != size:
        raise der.DerError(f"{oid} is {len(value)} bytes, expected {size}")
    return value


def _small_int(element: der.Element) -> int:
    value = der.decode_integer(element)
    if not 0 <= value <= 0xFFFF:
        raise der.DerError(f"SVN {value} is out of range")
    return value
