"""The SEV-SNP ATTESTATION_REPORT: bytes at fixed offsets, decoded into frozen values.

What this module owns: the layout of the 1184-byte report (AMD SEV-SNP ABI specification,
publication 56860, table "ATTESTATION_REPORT Structure"), its must-be-zero ranges, and the
decoding of the packed fields (GUEST POLICY, PLATFORM_INFO, the signer word at 0x48 and
TCB_VERSION). It never touches a
certificate, a clock, a file or the network, and it does not check the signature: that is
``verifier.snp.verify``. Every rejection is ``MalformedEvidence``.

Comments cite 56860 rev. 1.57 as "spec" and its tables by name, because table numbers change
between revisions: "report table" is "ATTESTATION_REPORT Structure", "row 0xNN" one of its
rows, "signature table" is "ECDSA P-384 with SHA-384 Signature".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Literal

from verifier.claims import JsonValue
from verifier.errors import MalformedEvidence

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000..0x29F (report table, SIGNATURE row)
SIGNATURE_OFFSET = 0x2A0
SIGNATURE_COMPONENT_SIZE = 72  # R and S: 72-byte little-endian fields (signature table)
P384_COMPONENT_SIZE = 48  # only the low 48 bytes of R and S carry the P-384 value
SIGNATURE_USED_END = SIGNATURE_OFFSET + 2 * SIGNATURE_COMPONENT_SIZE  # 0x330

SUPPORTED_VERSIONS = (2, 3, 5)
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1  # spec table "Signature Algorithm Encodings"

SIGNING_KEY_VCEK = 0
SIGNING_KEY_VLEK = 1
SIGNING_KEY_NONE = 7

REPORT_ID_MA_NONE = b"\xff" * 32

Product = Literal["Milan", "Genoa", "Turin"]
PRODUCTS: tuple[Product, ...] = ("Milan", "Genoa", "Turin")
FAMILY_ZEN3_ZEN4 = 0x19  # Milan (models 0x00..0x0F), Genoa/Bergamo/Siena (0x10..0x1F, 0xA0..0xAF)
FAMILY_ZEN5 = 0x1A  # Turin

# (start, end) byte ranges that must be zero, per report version. Offsets are exclusive at
# the end, as in the spec's "bits" column converted to bytes.
_MBZ_COMMON: tuple[tuple[int, int], ...] = (
    (0x04C, 0x050),  # reserved after the signer word
    (0x1EB, 0x1EC),  # reserved after CURRENT_MAJOR
    (0x1EF, 0x1F0),  # reserved after COMMITTED_MAJOR
    (SIGNATURE_USED_END, REPORT_SIZE),  # SIGNATURE: bytes past R and S (signature table)
)
_MBZ_BY_VERSION: dict[int, tuple[tuple[int, int], ...]] = {
    # v2: CPUID fields did not exist yet; 0x188..0x19F reserved; 0x1F8..0x29F reserved.
    2: ((0x188, 0x1A0), (0x1F8, SIGNED_SIZE)),
    # v3: CPUID_FAM_ID/MOD_ID/STEP at 0x188..0x18A; mitigation vectors not yet defined.
    3: ((0x18B, 0x1A0), (0x1F8, SIGNED_SIZE)),
    # v5: LAUNCH_MIT_VECTOR 0x1F8, CURRENT_MIT_VECTOR 0x200; reserved up to the signature.
    5: ((0x18B, 0x1A0), (0x208, SIGNED_SIZE)),
}

# GUEST POLICY bits (spec "Guest Policy" table).
POLICY_SMT = 16
POLICY_RESERVED_MUST_BE_ONE = 17
POLICY_MIGRATE_MA = 18
POLICY_DEBUG = 19
POLICY_SINGLE_SOCKET = 20
POLICY_CXL_ALLOW = 21
POLICY_MEM_AES_256_XTS = 22
POLICY_RAPL_DIS = 23
POLICY_CIPHERTEXT_HIDING = 24
POLICY_PAGE_SWAP_DISABLE = 25
POLICY_HIGHEST_DEFINED_BIT = 25


def _mbz(data: bytes, start: int, end: int) -> None:
    if data.count(0, start, end) != end - start:
        raise MalformedEvidence(
            f"SEV-SNP report bytes 0x{start:03X}..0x{end - 1:03X} are reserved and must be zero"
        )


@dataclass(frozen=True)
class GuestPolicy:
    """The GUEST POLICY word the VM was launched with (spec "Guest Policy" table)."""

    raw: int
    abi_minor: int
    abi_major: int
    smt: bool
    migrate_ma: bool
    debug: bool
    single_socket: bool
    cxl_allowed: bool
    mem_aes_256_xts: bool
    rapl_disabled: bool
    ciphertext_hiding: bool
    page_swap_disabled: bool

    @classmethod
    def from_raw(cls, raw: int) -> GuestPolicy:
        # spec "Guest Policy" table: bit 17 is reserved, must be one; bits 63:26 reserved, MBZ.
        if not raw >> POLICY_RESERVED_MUST_BE_ONE & 1:
            raise MalformedEvidence("guest policy bit 17 is reserved and must be one")
        if raw >> (POLICY_HIGHEST_DEFINED_BIT + 1):
            raise MalformedEvidence(f"guest policy 0x{raw:x} sets reserved bits 63:26")

        return cls(
            raw,
            raw & 0xFF,
            raw >> 8 & 0xFF,
            bool(raw >> POLICY_SMT & 1),
            bool(raw >> POLICY_MIGRATE_MA & 1),
            bool(raw >> POLICY_DEBUG & 1),
            bool(raw >> POLICY_SINGLE_SOCKET & 1),
            bool(raw >> POLICY_CXL_ALLOW & 1),
            bool(raw >> POLICY_MEM_AES_256_XTS & 1),
            bool(raw >> POLICY_RAPL_DIS & 1),
            bool(raw >> POLICY_CIPHERTEXT_HIDING & 1),
            bool(raw >> POLICY_PAGE_SWAP_DISABLE & 1),
        )

    def flags(self) -> dict[str, JsonValue]:
        return {
            "abi_major": self.abi_major,
            "abi_minor": self.abi_minor,
            "smt": self.smt,
            "migrate_ma": self.migrate_ma,
            "debug": self.debug,
            "single_socket": self.single_socket,
            "cxl_allowed": self.cxl_allowed,
            "mem_aes_256_xts": self.mem_aes_256_xts,
            "rapl_disabled": self.rapl_disabled,
            "ciphertext_hiding": self.ciphertext_hiding,
            "page_swap_disabled": self.page_swap_disabled,
        }


@dataclass(frozen=True)
class PlatformInfo:
    """PLATFORM_INFO (spec "PLATFORM_INFO Field" table); informational, unknown bits kept."""

    raw: int

    def flags(self) -> dict[str, JsonValue]:
        names = (
            "smt_enabled",  # bit 0
            "tsme_enabled",  # bit 1
            "ecc_enabled",  # bit 2
            "rapl_disabled",  # bit 3
            "ciphertext_hiding_enabled",  # bit 4
            "alias_check_complete",  # bit 5
        )
        out: dict[str, JsonValue] = {name: bool(self.raw >> i & 1) for i, name in enumerate(names)}
        out["tio_enabled"] = bool(self.raw >> 7 & 1)  # bit 7 (bit 6 reserved)
        out["raw"] = f"{self.raw:016x}"
        return out


@dataclass(frozen=True)
class SignerInfo:
    """The word at 0x48: AUTHOR_KEY_EN (bit 0), MASK_CHIP_KEY (bit 1), SIGNING_KEY (4:2)."""

    raw: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: int

    @classmethod
    def from_raw(cls, raw: int) -> SignerInfo:
        # report table, row 0x48: bits 31:5 reserved, MBZ.
        if raw >> 5:
            raise MalformedEvidence(f"signer info 0x{raw:08x} sets reserved bits 31:5")
        signing_key = raw >> 2 & 0x7
        # SIGNING_KEY: 0 = VCEK, 1 = VLEK, 7 = none; 2..6 reserved.
        if signing_key not in (SIGNING_KEY_VCEK, SIGNING_KEY_VLEK, SIGNING_KEY_NONE):
            raise MalformedEvidence(f"SIGNING_KEY {signing_key} is reserved")
        return cls(raw, bool(raw & 1), bool(raw >> 1 & 1), signing_key)

    @property
    def signing_key_name(self) -> str:
        return {SIGNING_KEY_VCEK: "vcek", SIGNING_KEY_VLEK: "vlek"}.get(self.signing_key, "none")


@dataclass(frozen=True)
class TcbVersion:
    """TCB_VERSION (spec "TCB_VERSION Structure" table), decoded for a product.

    Milan and Genoa (family 19h): BOOT_LOADER byte 0, TEE byte 1, SNP byte 6, MICROCODE
    byte 7 (bytes 2..5 reserved). Turin (family 1Ah): FMC byte 0, BOOT_LOADER byte 1, TEE
    byte 2, SNP byte 3, MICROCODE byte 7 (bytes 4..6 reserved).
    """

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, product: Product) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if product == "Turin":
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def components(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp}
        out["microcode"] = self.microcode
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def to_json(self) -> dict[str, JsonValue]:
        return tcb_json(self.raw, "Turin" if self.fmc is not None else "Milan")


def tcb_json(raw: int, product: Product) -> dict[str, JsonValue]:
    """``TcbVersion.decode(raw, product).to_json()`` without the intermediate object."""
    b = raw.to_bytes(8, "little")
    if product == "Turin":
        return {"bootloader": b[1], "tee": b[2], "snp": b[3], "microcode": b[7], "fmc": b[0],
                "raw": f"{raw:016x}"}  # fmt: skip
    return {"bootloader": b[0], "tee": b[1], "snp": b[6], "microcode": b[7], "raw": f"{raw:016x}"}


def encode_tcb(product: Product, *, bootloader: int, tee: int, snp: int, microcode: int,
               fmc: int = 0) -> int:  # fmt: skip
    """The TCB_VERSION integer for these components (inverse of ``TcbVersion.decode``)."""
    if product == "Turin":
        b = bytes((fmc, bootloader, tee, snp, 0, 0, 0, microcode))
    else:
        b = bytes((bootloader, tee, 0, 0, 0, 0, snp, microcode))
    return int.from_bytes(b, "little")


@dataclass(frozen=True)
class Cpuid:
    """CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (0x188..0x18A, report version 3 and later)."""

    family: int
    model: int
    stepping: int

    @property
    def product(self) -> Product | None:
        if self.family == FAMILY_ZEN5:
            return "Turin"
        if self.family == FAMILY_ZEN3_ZEN4:
            if self.model <= 0x0F:
                return "Milan"
            if 0x10 <= self.model <= 0x1F or 0xA0 <= self.model <= 0xAF:
                return "Genoa"
        return None

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "family": f"0x{self.family:02x}",
            "model": f"0x{self.model:02x}",
            "stepping": f"0x{self.stepping:x}",
        }


@dataclass(frozen=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


_HEAD = struct.Struct("<IIQ16s16sIIQQI")  # 0x000..0x04B
_COMMITTED = struct.Struct("<Q3Bx3BxQ")  # 0x1E0..0x1F7


@dataclass(frozen=True)
class AttestationReport:
    """A structurally valid ATTESTATION_REPORT. Construct with ``from_bytes``.

    TCB fields are kept raw: how to split them depends on the product, which version 2
    reports do not state (it comes from the VCEK chain); see ``TcbVersion.decode``.
    """

    raw: bytes = field(repr=False)
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: PlatformInfo
    signer: SignerInfo
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    cpuid: Cpuid | None
    chip_id: bytes
    committed_tcb: int
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationReport:
        # report table: the report is exactly 0x4A0 bytes.
        if len(data) != REPORT_SIZE:
            raise MalformedEvidence(f"an SEV-SNP report is {REPORT_SIZE} bytes, got {len(data)}")
        data = bytes(data)
        (
            version, guest_svn, policy_raw, family_id, image_id, vmpl, signature_algo,
            current_tcb, platform_info, signer_raw,
        ) = _HEAD.unpack_from(data, 0)  # fmt: skip
        # report table, row 0x00 VERSION: 2 (rev. 1.51), 3 (rev. 1.55), 5 (rev. 1.57).
        if version not in SUPPORTED_VERSIONS:
            raise MalformedEvidence(
                f"SEV-SNP report version {version} is not supported (expected 2, 3 or 5)"
            )
        for start, end in _MBZ_COMMON + _MBZ_BY_VERSION[version]:
            _mbz(data, start, end)
        # report table, row 0x34 SIGNATURE_ALGO; spec "Signature Algorithm Encodings" table:
        # 1 = ECDSA P-384 with SHA-384.
        if signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
            raise MalformedEvidence(
                f"SIGNATURE_ALGO {signature_algo} is not ECDSA P-384 with SHA-384 (1)"
            )
        signer = SignerInfo.from_raw(signer_raw)
        if signer.signing_key == SIGNING_KEY_NONE:
            raise MalformedEvidence("the report is not signed (SIGNING_KEY = none)")
        if signer.mask_chip_key:
            # MASK_CHIP_KEY = 1: the firmware wrote a zero signature.
            raise MalformedEvidence("the report is not signed (MASK_CHIP_KEY = 1)")
        # report table, row 0x30 VMPL: 0..3 for guest requests (0xFFFFFFFF: host request).
        if vmpl > 3:
            raise MalformedEvidence(f"VMPL {vmpl} is not a guest VMPL (0..3)")
        cpuid = None
        if version >= 3:
            cpuid = Cpuid(data[0x188], data[0x189], data[0x18A])
        committed_tcb, cur_build, cur_minor, cur_major, com_build, com_minor, com_major, launch = (
            _COMMITTED.unpack_from(data, 0x1E0)
        )
        launch_mit = current_mit = None
        if version >= 5:
            launch_mit, current_mit = struct.unpack_from("<QQ", data, 0x1F8)
        r_le = data[SIGNATURE_OFFSET : SIGNATURE_OFFSET + SIGNATURE_COMPONENT_SIZE]
        s_le = data[SIGNATURE_OFFSET + SIGNATURE_COMPONENT_SIZE : SIGNATURE_USED_END]
        # signature table: R and S are zero-extended little-endian; P-384 uses 48 bytes.
        high = SIGNATURE_COMPONENT_SIZE - P384_COMPONENT_SIZE
        if r_le.count(0, P384_COMPONENT_SIZE) != high or s_le.count(0, P384_COMPONENT_SIZE) != high:
            raise MalformedEvidence("signature R or S is wider than a P-384 scalar")
        return cls(
            raw=data,
            version=version,
            guest_svn=guest_svn,
            policy=GuestPolicy.from_raw(policy_raw),
            family_id=family_id,
            image_id=image_id,
            vmpl=vmpl,
            signature_algo=signature_algo,
            current_tcb=current_tcb,
            platform_info=PlatformInfo(platform_info),
            signer=signer,
            report_data=data[0x050:0x090],
            measurement=data[0x090:0x0C0],
            host_data=data[0x0C0:0x0E0],
            id_key_digest=data[0x0E0:0x110],
            author_key_digest=data[0x110:0x140],
            report_id=data[0x140:0x160],
            report_id_ma=data[0x160:0x180],
            reported_tcb=int.from_bytes(data[0x180:0x188], "little"),
            cpuid=cpuid,
            chip_id=data[0x1A0:0x1E0],
            committed_tcb=committed_tcb,
            current_version=FirmwareVersion(cur_major, cur_minor, cur_build),
            committed_version=FirmwareVersion(com_major, com_minor, com_build),
            launch_tcb=launch,
            launch_mit_vector=launch_mit,
            current_mit_vector=current_mit,
            signature_r=int.from_bytes(r_le, "little"),
            signature_s=int.from_bytes(s_le, "little"),
        )

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]


def signature_field(r: int, s: int) -> bytes:
    """The 512-byte SIGNATURE field for (r, s): two 72-byte little-endian values, then zeros."""
    return (
        r.to_bytes(SIGNATURE_COMPONENT_SIZE, "little")
        + s.to_bytes(SIGNATURE_COMPONENT_SIZE, "little")
    ).ljust(REPORT_SIZE - SIGNATURE_OFFSET, b"\x00")
