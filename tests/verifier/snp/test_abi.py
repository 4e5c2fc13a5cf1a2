"""The ATTESTATION_REPORT parser: sizes, versions, must-be-zero ranges, packed fields."""

from __future__ import annotations

import struct

import pytest

from tests.verifier.snp.conftest import vector
from verifier.encoding import decode_evidence
from verifier.errors import MalformedEvidence
from verifier.snp.abi import (
    REPORT_SIZE,
    AttestationReport,
    Cpuid,
    GuestPolicy,
    Product,
    TcbVersion,
    encode_tcb,
)

V2 = decode_evidence(vector("virtee_milan_v2_report.hex"))
V3 = vector("azure_genoa_v3_report.bin")
V5 = vector("teekit_gcp_milan_v5_report.bin")
BY_VERSION = {2: V2, 3: V3, 5: V5}


def patched(report: bytes, offset: int, value: bytes) -> bytes:
    data = bytearray(report)
    data[offset : offset + len(value)] = value
    return bytes(data)


@pytest.mark.parametrize("size", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 2600])
def test_wrong_size_is_malformed(size: int) -> None:
    with pytest.raises(MalformedEvidence, match="1184"):
        AttestationReport.from_bytes((V5 * 3)[:size])


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0xFFFFFFFF])
def test_unsupported_version_is_malformed(version: int) -> None:
    with pytest.raises(MalformedEvidence, match="version"):
        AttestationReport.from_bytes(patched(V5, 0, struct.pack("<I", version)))


MBZ_CASES = {
    "v2-after-signer-0x4c": (2, 0x04C),
    "v2-cpuid-bytes-reserved-0x188": (2, 0x188),
    "v2-reserved-0x19f": (2, 0x19F),
    "v2-after-current-major-0x1eb": (2, 0x1EB),
    "v2-after-committed-major-0x1ef": (2, 0x1EF),
    "v2-mitigation-vectors-reserved-0x1f8": (2, 0x1F8),
    "v2-reserved-0x29f": (2, 0x29F),
    "v3-after-cpuid-0x18b": (3, 0x18B),
    "v3-mitigation-vectors-reserved-0x200": (3, 0x200),
    "v5-after-mitigation-vectors-0x208": (5, 0x208),
    "v5-reserved-0x29f": (5, 0x29F),
    "v5-signature-tail-0x330": (5, 0x330),
    "v5-signature-tail-0x49f": (5, 0x49F),
}


@pytest.mark.parametrize(("version", "offset"), MBZ_CASES.values(), ids=MBZ_CASES.keys())
def test_must_be_zero_byte_set_is_malformed(version: int, offset: int) -> None:
    with pytest.raises(MalformedEvidence):
        AttestationReport.from_bytes(patched(BY_VERSION[version], offset, b"\x01"))


@pytest.mark.parametrize("offset", [0x2A0 + 48, 0x2A0 + 71, 0x2E8 + 48, 0x2E8 + 71])
def test_signature_wider_than_p384_is_malformed(offset: int) -> None:
    with pytest.raises(MalformedEvidence, match="P-384"):
        AttestationReport.from_bytes(patched(V5, offset, b"\x01"))


def test_signature_algorithm_must_be_ecdsa_p384() -> None:
    with pytest.raises(MalformedEvidence, match="SIGNATURE_ALGO"):
        AttestationReport.from_bytes(patched(V5, 0x34, struct.pack("<I", 2)))


@pytest.mark.parametrize(
    ("signer_word", "message"),
    [(7 << 2, "none"), (2 << 2, "reserved"), (1 << 1, "MASK_CHIP_KEY"), (1 << 5, "31:5")],
    ids=["signing-key-none", "signing-key-reserved", "mask-chip-key", "reserved-bits"],
)
def test_signer_word_rejections(signer_word: int, message: str) -> None:
    with pytest.raises(MalformedEvidence, match=message):
        AttestationReport.from_bytes(patched(V5, 0x48, struct.pack("<I", signer_word)))


def test_vmpl_above_three_is_malformed() -> None:
    with pytest.raises(MalformedEvidence, match="VMPL"):
        AttestationReport.from_bytes(patched(V5, 0x30, struct.pack("<I", 0xFFFFFFFF)))


@pytest.mark.parametrize("policy", [0x10000, 0x30000 | 1 << 26, 0x30000 | 1 << 63])
def test_policy_reserved_bits(policy: int) -> None:
    with pytest.raises(MalformedEvidence, match="policy"):
        GuestPolicy.from_raw(policy)


def test_policy_decoding() -> None:
    policy = GuestPolicy.from_raw(0xB001F)
    assert policy.debug and policy.smt and not policy.migrate_ma
    assert (policy.abi_major, policy.abi_minor) == (0, 0x1F)


def test_fields_of_v3_vlek_report() -> None:
    report = AttestationReport.from_bytes(vector("trustee_milan_v3_vlek_report.bin"))
    assert report.version == 3
    assert report.signer.signing_key_name == "vlek"
    assert report.chip_id == b"\x00" * 64
    assert report.vmpl == 1
    assert report.cpuid == Cpuid(0x19, 0x01, 0x01)
    assert report.cpuid.product == "Milan"
    assert str(report.current_version) == "1.55.29"
    assert report.launch_mit_vector is None


def test_v5_mitigation_vectors_and_cpuid() -> None:
    report = AttestationReport.from_bytes(V5)
    assert report.launch_mit_vector is not None and report.current_mit_vector is not None
    assert report.cpuid is not None and report.cpuid.product == "Milan"
    assert report.signed_bytes == V5[:0x2A0]


def test_v2_has_no_cpuid() -> None:
    assert AttestationReport.from_bytes(V2).cpuid is None


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, "Milan"),
        (0x19, 0x11, "Genoa"),
        (0x19, 0xA0, "Genoa"),
        (0x1A, 0x02, "Turin"),
        (0x19, 0x21, None),
        (0x17, 0x31, None),
    ],
)
def test_cpuid_product(family: int, model: int, product: str | None) -> None:
    assert Cpuid(family, model, 0).product == product


def test_tcb_layout_milan_genoa() -> None:
    # TCB_VERSION for family 19h: bootloader byte 0, tee byte 1, snp byte 6, microcode byte 7.
    tcb = TcbVersion.decode(int.from_bytes(bytes([3, 0, 0, 0, 0, 0, 8, 115]), "little"), "Milan")
    assert tcb.components() == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert tcb.fmc is None


def test_tcb_layout_turin() -> None:
    # TCB_VERSION for family 1Ah: fmc byte 0, bootloader 1, tee 2, snp 3, microcode byte 7.
    raw = int.from_bytes(bytes([1, 2, 3, 4, 0, 0, 0, 8]), "little")
    tcb = TcbVersion.decode(raw, "Turin")
    assert tcb.components() == {"bootloader": 2, "tee": 3, "snp": 4, "microcode": 8, "fmc": 1}
    assert tcb.to_json()["raw"] == f"{raw:016x}"


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
def test_tcb_encode_roundtrip(product: Product) -> None:
    parts = {"bootloader": 9, "tee": 1, "snp": 24, "microcode": 219}
    fmc = {"fmc": 5} if product == "Turin" else {}
    raw = encode_tcb(product, **parts, **fmc)
    assert TcbVersion.decode(raw, product).components() == parts | fmc
