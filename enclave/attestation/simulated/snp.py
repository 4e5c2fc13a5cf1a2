"""A fake AMD Secure Processor: SIM ARK/ASK/VCEK and real-format signed SEV-SNP reports.

Like go-sev-guest's ``fake_certs``, this is fake hardware, not a bypass: the roots use the
same algorithms as AMD's (RSA-4096 with RSASSA-PSS/SHA-384, salt 48, for ARK and ASK; a
P-384 VCEK carrying the AMD TCB and hwID extensions), and the reports are the 1184-byte
version 3 ATTESTATION_REPORT signed over bytes 0x000..0x29F exactly as the firmware signs
them. The real verifier checks them with its roots swapped for ``roots_pem()``.

Keys are made once and kept in ``hw_dir`` (private keys PEM, mode 0600), so a simulated
machine keeps its identity across restarts. Nothing here is secret in the real sense: the
simulated roots must never be trusted where vendor roots are expected.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from enclave.attestation.evidence import Evidence, check_report_data
from enclave.attestation.launch import LaunchIdentity
from verifier.claims import Platform
from verifier.snp.abi import (
    PRODUCTS,
    REPORT_ID_MA_NONE,
    REPORT_SIZE,
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    SIGNATURE_OFFSET,
    SIGNED_SIZE,
    SIGNING_KEY_VCEK,
    Product,
    encode_tcb,
    signature_field,
)

PRODUCT: Product = "Milan"  # the default; Genoa and Turin machines can be made for tests
# CPUID family, model, stepping (report table, rows 0x188..0x18A) per product line.
CPUID: Mapping[Product, tuple[int, int, int]] = {
    "Milan": (0x19, 0x01, 0x01),
    "Genoa": (0x19, 0x11, 0x01),
    "Turin": (0x1A, 0x02, 0x00),
}
POLICY_DEFAULT = 0x30000  # SMT allowed, reserved bit 17; debug (bit 19) off
PLATFORM_INFO_DEFAULT = 0x03  # SMT enabled, TSME enabled
FIRMWARE = (1, 55, 21)  # major, minor, build
DEFAULT_TCB: Mapping[str, int] = {"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213}
DEFAULT_TURIN_FMC = 1

ARK_YEARS = 25
VCEK_YEARS = 7
RSA_BITS = 4096
PSS_SALT = 48

_AMD = "1.3.6.1.4.1.3704.1"
_OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{_AMD}.1")
_OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{_AMD}.2")
_OID_SPL = {
    "bootloader": x509.ObjectIdentifier(f"{_AMD}.3.1"),
    "tee": x509.ObjectIdentifier(f"{_AMD}.3.2"),
    "snp": x509.ObjectIdentifier(f"{_AMD}.3.3"),
    "microcode": x509.ObjectIdentifier(f"{_AMD}.3.8"),
    "fmc": x509.ObjectIdentifier(f"{_AMD}.3.9"),
}
_OID_HWID = x509.ObjectIdentifier(f"{_AMD}.4")

_FILES = {
    "ark_key": "sim-ark-key.pem",
    "ask_key": "sim-ask-key.pem",
    "vcek_key": "sim-vcek-key.pem",
    "ark": "sim-ark.pem",
    "ask": "sim-ask.pem",
    "vcek": "sim-vcek.pem",
    "state": "sim-snp.json",
}


def _product(name: object) -> Product:
    for product in PRODUCTS:
        if name == product:
            return product
    raise ValueError(f"unknown SEV-SNP product {name!r}")


def _der_integer(value: int) -> bytes:
    # Small non-negative INTEGER, as AMD encodes the SPL extensions (02 01 nn).
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes((0x02, len(body))) + body


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Simulation"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Enclave KMS simulated AMD-SP"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=PSS_SALT)


def _write_private(path: Path, pem: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)


def _private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class SimulatedSnp:
    """One simulated SEV-SNP machine: its SIM ARK/ASK, its VCEK and its chip ID."""

    ark: x509.Certificate = field(repr=False)
    ask: x509.Certificate = field(repr=False)
    vcek: x509.Certificate = field(repr=False)
    vcek_key: ec.EllipticCurvePrivateKey = field(repr=False)
    chip_id: bytes
    tcb: Mapping[str, int]
    product: Product = PRODUCT

    @classmethod
    def create(
        cls,
        *,
        now: datetime | None = None,
        chip_id: bytes | None = None,
        tcb: Mapping[str, int] = DEFAULT_TCB,
        product: Product = PRODUCT,
    ) -> tuple[SimulatedSnp, rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
        """A new machine; also returns the ARK and ASK private keys (to persist)."""
        now = now or datetime.now(UTC)
        chip_id = chip_id or secrets.token_bytes(64)
        tcb = dict(tcb)
        if product == "Turin":
            tcb.setdefault("fmc", DEFAULT_TURIN_FMC)
        else:
            tcb.pop("fmc", None)
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        vcek_key = ec.generate_private_key(ec.SECP384R1())
        start = now - timedelta(days=1)
        ark_name, ask_name = _name(f"SIM-ARK-{product}"), _name(f"SIM-SEV-{product}")

        def ca(subject: x509.Name, issuer: x509.Name, public: rsa.RSAPublicKey,
               signer: rsa.RSAPrivateKey) -> x509.Certificate:  # fmt: skip
            return (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(issuer)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + timedelta(days=365 * ARK_YEARS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=False,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .sign(signer, hashes.SHA384(), rsa_padding=_pss())
            )

        ark = ca(ark_name, ark_name, ark_key.public_key(), ark_key)
        ask = ca(ask_name, ark_name, ask_key.public_key(), ark_key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("SEV-VCEK"))
            .issuer_name(ask_name)
            .public_key(vcek_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=365 * VCEK_YEARS))
            .add_extension(
                x509.UnrecognizedExtension(_OID_STRUCT_VERSION, _der_integer(0)), critical=False
            )
            .add_extension(
                x509.UnrecognizedExtension(
                    _OID_PRODUCT_NAME, b"\x16\x08" + f"{product}-B0".encode("ascii")
                ),
                critical=False,
            )
        )
        for name, value in tcb.items():
            builder = builder.add_extension(
                x509.UnrecognizedExtension(_OID_SPL[name], _der_integer(value)), critical=False
            )
        # hwID: the raw CHIP_ID as the KDS encodes it (Turin: its first 8 bytes).
        hwid = chip_id[:8] if product == "Turin" else chip_id
        builder = builder.add_extension(x509.UnrecognizedExtension(_OID_HWID, hwid), critical=False)
        vcek = builder.sign(ask_key, hashes.SHA384(), rsa_padding=_pss())
        return cls(ark, ask, vcek, vcek_key, chip_id, tcb, product), ark_key, ask_key

    @classmethod
    def load_or_create(cls, hw_dir: Path) -> SimulatedSnp:
        """The machine kept in ``hw_dir``, made (once) if the directory holds none."""
        paths = {name: hw_dir / file for name, file in _FILES.items()}
        if all(path.exists() for path in paths.values()):
            return cls._load(paths)
        hw_dir.mkdir(parents=True, exist_ok=True)
        machine, ark_key, ask_key = cls.create()
        _write_private(paths["ark_key"], _private_pem(ark_key))
        _write_private(paths["ask_key"], _private_pem(ask_key))
        _write_private(paths["vcek_key"], _private_pem(machine.vcek_key))
        for name, cert in (("ark", machine.ark), ("ask", machine.ask), ("vcek", machine.vcek)):
            paths[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        state = {
            "chip_id": machine.chip_id.hex(),
            "tcb": dict(machine.tcb),
            "product": machine.product,
        }
        paths["state"].write_text(json.dumps(state, indent=2) + "\n")
        return machine

    @classmethod
    def _load(cls, paths: Mapping[str, Path]) -> SimulatedSnp:
        vcek_key = serialization.load_pem_private_key(paths["vcek_key"].read_bytes(), None)
        if not isinstance(vcek_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{paths['vcek_key']} is not an EC private key")
        state = json.loads(paths["state"].read_text())
        return cls(
            ark=x509.load_pem_x509_certificate(paths["ark"].read_bytes()),
            ask=x509.load_pem_x509_certificate(paths["ask"].read_bytes()),
            vcek=x509.load_pem_x509_certificate(paths["vcek"].read_bytes()),
            vcek_key=vcek_key,
            chip_id=bytes.fromhex(state["chip_id"]),
            tcb={str(k): int(v) for k, v in state["tcb"].items()},
            product=_product(state.get("product", PRODUCT)),
        )

    def roots_pem(self) -> bytes:
        """The fake vendor roots a verifier is given: ASK then ARK, PEM (like AMD's files)."""
        return self.ask.public_bytes(serialization.Encoding.PEM) + self.ark.public_bytes(
            serialization.Encoding.PEM
        )

    def certs(self) -> tuple[bytes, ...]:
        """The certificates sent beside the evidence: the VCEK, PEM."""
        return (self.vcek.public_bytes(serialization.Encoding.PEM),)

    def provider(self, launch: LaunchIdentity) -> SimulatedSnpProvider:
        return SimulatedSnpProvider(self, launch)

    def report(
        self,
        *,
        report_data: bytes,
        measurement: bytes,
        host_data: bytes = b"\x00" * 32,
        policy: int = POLICY_DEFAULT,
        debug: bool = False,
        vmpl: int = 0,
        guest_svn: int = 0,
        reported_tcb: Mapping[str, int] | None = None,
        current_tcb: Mapping[str, int] | None = None,
        chip_id: bytes | None = None,
        family_id: bytes = b"\x00" * 16,
        image_id: bytes = b"\x00" * 16,
        report_id: bytes | None = None,
    ) -> bytes:
        """A signed version 3 ATTESTATION_REPORT (AMD SEV-SNP ABI spec, report table).

        Defaults are what the simulated firmware reports for a normal launch; keyword
        arguments make reports for tests (debug policy, another VMPL, a TCB the VCEK was
        not issued for, another chip).
        """
        check_report_data(report_data)
        if len(measurement) != 48 or len(host_data) != 32:
            raise ValueError("measurement is 48 bytes and host_data 32 bytes")
        if debug:
            policy |= 1 << 19
        reported = encode_tcb(self.product, **(reported_tcb or self.tcb))
        current = encode_tcb(self.product, **(current_tcb or reported_tcb or self.tcb))
        major, minor, build = FIRMWARE
        data = bytearray(REPORT_SIZE)
        struct.pack_into(
            "<IIQ16s16sIIQQI", data, 0x000,
            3, guest_svn, policy, family_id, image_id, vmpl,
            SIGNATURE_ALGO_ECDSA_P384_SHA384, current, PLATFORM_INFO_DEFAULT,
            SIGNING_KEY_VCEK << 2,
        )  # fmt: skip
        data[0x050:0x090] = report_data
        data[0x090:0x0C0] = measurement
        data[0x0C0:0x0E0] = host_data
        data[0x140:0x160] = report_id or secrets.token_bytes(32)
        data[0x160:0x180] = REPORT_ID_MA_NONE
        struct.pack_into("<Q", data, 0x180, reported)
        data[0x188:0x18B] = bytes(CPUID[self.product])
        data[0x1A0:0x1E0] = chip_id if chip_id is not None else self.chip_id
        struct.pack_into(
            "<Q3Bx3BxQ", data, 0x1E0, current, build, minor, major, build, minor, major, current
        )
        der_signature = self.vcek_key.sign(bytes(data[:SIGNED_SIZE]), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der_signature)
        data[SIGNATURE_OFFSET:] = signature_field(r, s)
        return bytes(data)


@dataclass(frozen=True)
class SimulatedSnpProvider:
    """``EvidenceProvider`` for one launch on a simulated SEV-SNP machine."""

    machine: SimulatedSnp
    launch: LaunchIdentity

    @property
    def platform(self) -> Platform:
        return "sev-snp"

    def evidence(self, report_data: bytes) -> Evidence:
        report = self.machine.report(
            report_data=report_data,
            measurement=self.launch.measurement,
            host_data=self.launch.snp_host_data,
        )
        return Evidence(platform="sev-snp", evidence=report, certs=self.machine.certs())
