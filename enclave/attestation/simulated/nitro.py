"""A simulated AWS Nitro Secure Module: fake Nitro PKI, real attestation document format.

What this module owns: a fake NSM that signs attestation documents exactly as the real
one formats them (untagged COSE_Sign1, ES384, indefinite-length payload map as current
NSMs emit, cabundle root first, a fresh short-lived P-384 leaf per document) under a
SIM Nitro root (P-384, self-signed) and one intermediate, made once and kept in
``hw_dir``. It is fake hardware, not a bypass: the real verifier checks its documents,
given ``roots_pem()`` as its Nitro roots, and only a policy that allows simulated roots
accepts them. It must never be used to produce evidence for production trust roots.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from enclave.attestation.evidence import Evidence, check_report_data
from enclave.attestation.launch import NITRO_CONFIG_PCR, LaunchIdentity
from verifier.claims import Platform

Clock = Callable[[], datetime]

HW_FILE = "nitro-hw.pem"
"""The fake NSM's PKI in ``hw_dir``: root key, root cert, intermediate key and cert (0600)."""

SIM_ROOT_COMMON_NAME = "sim.aws.nitro-enclaves"
SIM_INTERMEDIATE_COMMON_NAME = "sim.us-east-1.aws.nitro-enclaves"
SIM_ORGANIZATION = "Enclave KMS simulated hardware (not AWS)"
# Fixed CA windows (like the real root G1: 2019-10-28 .. 2049-10-28), so an injected clock
# anywhere in that span gets a valid chain.
CA_NOT_BEFORE = datetime(2019, 10, 28, tzinfo=UTC)
CA_NOT_AFTER = datetime(2049, 10, 28, tzinfo=UTC)
LEAF_LIFETIME = timedelta(hours=3)  # real NSM leaves expire about 3 hours after issue
PCR_COUNT = 16  # PCR0..15 are reported by the NSM; PCR16 carries our launch config
MAX_NONCE_BYTES = 512
MAX_PUBLIC_KEY_BYTES = 1024
_COSE_PROTECTED_ES384 = cbor2.dumps({1: -35})  # {alg: ES384}, RFC 9052 / RFC 9053
_ES384 = ec.ECDSA(hashes.SHA384())


def _utc_now() -> datetime:
    return datetime.now(UTC)


def derived_pcr(label: str, measurement: bytes) -> bytes:
    """A stand-in for PCR1 (kernel, bootstrap) and PCR2 (application) of a launch."""
    return hashlib.sha384(
        f"enclave-kms/sim-nitro/{label}".encode() + b"\x00" + measurement
    ).digest()


def launch_pcrs(launch: LaunchIdentity) -> dict[int, bytes]:
    """The PCRs a simulated enclave of ``launch`` reports: PCR0 is the measurement."""
    pcrs = dict.fromkeys(range(PCR_COUNT), bytes(48))
    pcrs[0] = launch.measurement
    pcrs[1] = derived_pcr("pcr1", launch.measurement)
    pcrs[2] = derived_pcr("pcr2", launch.measurement)
    pcrs[NITRO_CONFIG_PCR] = launch.nitro_config_pcr
    return pcrs


@dataclass(frozen=True)
class SimulatedNitro:
    """The fake NSM's PKI. Construct with ``load_or_create`` (or ``generate`` in memory)."""

    root_key: ec.EllipticCurvePrivateKey = field(repr=False)
    root: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey = field(repr=False)
    intermediate: x509.Certificate

    @classmethod
    def generate(cls) -> SimulatedNitro:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = _name(SIM_ROOT_COMMON_NAME)
        root = _ca_certificate(root_name, root_key, root_name, root_key, path_length=None)
        intermediate_key = ec.generate_private_key(ec.SECP384R1())
        intermediate = _ca_certificate(
            _name(SIM_INTERMEDIATE_COMMON_NAME), intermediate_key, root_name, root_key,
            path_length=0,
        )  # fmt: skip
        return cls(root_key, root, intermediate_key, intermediate)

    @classmethod
    def load_or_create(cls, hw_dir: Path) -> SimulatedNitro:
        """Load the PKI from ``hw_dir``, making it once (atomically, keys 0600) if absent."""
        path = hw_dir / HW_FILE
        if path.exists():
            return cls.from_pem(path.read_bytes())
        hw_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        device = cls.generate()
        temporary = hw_dir / f".{HW_FILE}.{secrets.token_hex(8)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(device.to_pem())
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)  # fails if another process made it first
            except FileExistsError:
                return cls.from_pem(path.read_bytes())
        finally:
            temporary.unlink(missing_ok=True)
        return device

    @classmethod
    def from_pem(cls, data: bytes) -> SimulatedNitro:
        keys = [
            serialization.load_pem_private_key(block, password=None)
            for block in _pem_blocks(data, b"PRIVATE KEY")
        ]
        certs = x509.load_pem_x509_certificates(data)
        if len(keys) != 2 or len(certs) != 2:
            raise ValueError(f"{HW_FILE} must hold two keys and two certificates")
        root_key, intermediate_key = keys
        root, intermediate = certs
        for key, cert in ((root_key, root), (intermediate_key, intermediate)):
            if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
                key.curve, ec.SECP384R1
            ):
                raise ValueError(f"{HW_FILE} keys must be P-384")
            if key.public_key() != cert.public_key():
                raise ValueError(f"{HW_FILE}: a key does not match its certificate")
        assert isinstance(root_key, ec.EllipticCurvePrivateKey)
        assert isinstance(intermediate_key, ec.EllipticCurvePrivateKey)
        intermediate.verify_directly_issued_by(root)
        return cls(root_key, root, intermediate_key, intermediate)

    def to_pem(self) -> bytes:
        def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
            return key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )

        return b"".join(
            (
                key_pem(self.root_key),
                self.root.public_bytes(serialization.Encoding.PEM),
                key_pem(self.intermediate_key),
                self.intermediate.public_bytes(serialization.Encoding.PEM),
            )
        )

    def roots_pem(self) -> bytes:
        """The SIM Nitro root a verifier pins instead of the AWS Nitro Enclaves root G1."""
        return self.root.public_bytes(serialization.Encoding.PEM)

    @property
    def instance_id(self) -> str:
        """A stable fake EC2 instance id for this simulated machine."""
        digest = hashlib.sha256(self.root.public_bytes(serialization.Encoding.DER)).hexdigest()
        return f"i-sim{digest[:14]}"

    def provider(
        self, launch: LaunchIdentity, *, clock: Clock | None = None
    ) -> SimulatedNitroProvider:
        return SimulatedNitroProvider(self, launch, clock or _utc_now)

    def attestation_document(
        self,
        *,
        module_id: str,
        pcrs: Mapping[int, bytes],
        now: datetime,
        user_data: bytes | str | None = None,
        nonce: bytes | str | None = None,
        public_key: bytes | str | None = None,
    ) -> bytes:
        """What NSM ``Attestation`` returns: an untagged COSE_Sign1 document.

        The optional fields may be given as text to imitate producers that put ASCII text
        where the specification says bstr (seen in real documents); the NSM itself sends
        byte strings.
        """
        if now.tzinfo is None:
            raise ValueError("the simulated NSM clock must be timezone-aware")
        leaf_key = ec.generate_private_key(ec.SECP384R1())
        leaf = self._leaf_certificate(module_id, leaf_key, now)
        timestamp_ms = int(now.timestamp() * 1000)
        # AWS "Attestation document specification": field order as the NSM emits them,
        # in an indefinite-length map like current NSMs.
        fields: list[tuple[str, object]] = [
            ("module_id", module_id),
            ("digest", "SHA384"),
            ("timestamp", timestamp_ms),
            ("pcrs", dict(pcrs)),
            ("certificate", leaf.public_bytes(serialization.Encoding.DER)),
            (
                "cabundle",
                [cert.public_bytes(serialization.Encoding.DER) for cert in self._cabundle()],
            ),
            ("public_key", public_key),
            ("user_data", user_data),
            ("nonce", nonce),
        ]
        payload = (
            b"\xbf"
            + b"".join(cbor2.dumps(name) + cbor2.dumps(value) for name, value in fields)
            + b"\xff"
        )
        # RFC 9052 4.4: Sig_structure = ["Signature1", protected, external_aad, payload].
        to_sign = cbor2.dumps(["Signature1", _COSE_PROTECTED_ES384, b"", payload])
        r, s = decode_dss_signature(leaf_key.sign(to_sign, _ES384))
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")  # RFC 9053 2.1: r || s
        return cbor2.dumps([_COSE_PROTECTED_ES384, {}, payload, signature])

    def _cabundle(self) -> tuple[x509.Certificate, ...]:
        return (self.root, self.intermediate)  # root first, as the NSM orders it

    def _leaf_certificate(
        self, module_id: str, key: ec.EllipticCurvePrivateKey, now: datetime
    ) -> x509.Certificate:
        not_before = now.replace(microsecond=0) - timedelta(seconds=1)
        return (
            x509.CertificateBuilder()
            .subject_name(_name(f"{module_id}.sim.aws"))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + LEAF_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .sign(self.intermediate_key, hashes.SHA384())
        )


class SimulatedNitroProvider:
    """An ``EvidenceProvider`` for one simulated enclave launch."""

    def __init__(self, device: SimulatedNitro, launch: LaunchIdentity, clock: Clock) -> None:
        self._device = device
        self._clock = clock
        self.launch = launch
        self.pcrs = launch_pcrs(launch)
        self.module_id = f"{device.instance_id}-enc{secrets.token_hex(8)}"

    @property
    def platform(self) -> Platform:
        return "nitro"

    def evidence(self, report_data: bytes) -> Evidence:
        """A document whose ``user_data`` is the 64 bytes of report_data."""
        return self.evidence_with(report_data)

    def evidence_with(
        self,
        report_data: bytes,
        *,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> Evidence:
        """As ``evidence``, with the NSM's optional ``nonce`` and ``public_key`` fields."""
        check_report_data(report_data)
        if nonce is not None and len(nonce) > MAX_NONCE_BYTES:
            raise ValueError(f"nonce is longer than {MAX_NONCE_BYTES} bytes")
        if public_key is not None and not 0 < len(public_key) <= MAX_PUBLIC_KEY_BYTES:
            raise ValueError(f"public_key must be 1..{MAX_PUBLIC_KEY_BYTES} bytes")
        document = self._device.attestation_document(
            module_id=self.module_id,
            pcrs=self.pcrs,
            now=self._clock(),
            user_data=report_data,
            nonce=nonce,
            public_key=public_key,
        )
        return Evidence(platform="nitro", evidence=document)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIM_ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    path_length: int | None,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(CA_NOT_BEFORE)
        .not_valid_after(CA_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA384())
    )


def _pem_blocks(data: bytes, label: bytes) -> list[bytes]:
    begin, end = b"-----BEGIN " + label + b"-----", b"-----END " + label + b"-----"
    blocks: list[bytes] = []
    start = data.find(begin)
    while start != -1:
        stop = data.find(end, start)
        if stop == -1:
            raise ValueError(f"unterminated {label.decode()} PEM block")
        blocks.append(data[start : stop + len(end)])
        start = data.find(begin, stop)
    return blocks
