"""Fake Intel TDX hardware: SIM Intel SGX roots, a PCK, a Quoting Enclave, real-format quotes.

Like go-tdx-guest's test fakes, this is fake hardware, not a bypass: the PKI uses Intel's
algorithms (ECDSA P-256 with SHA-256 everywhere: SIM Intel SGX Root CA -> SIM PCK Platform
CA -> PCK leaf carrying the SGX extension with FMSPC, TCB components, PCESVN, PCE-ID), the
PCK key signs the QE report, the QE report binds the attestation key
(REPORTDATA = SHA-256(attestation key || QE auth data) || 0^32), and the attestation key
signs a TDX quote v4 (or v5) whose certification data is type 6 wrapping a type-5 PEM
chain, byte for byte in Intel's layout. A SIM TCB Signing key issues PCS-format TCB Info and
QE Identity documents for collateral tests. The real verifier checks all of it, with its
roots swapped for ``roots_pem()``.

Keys are made once and kept in ``hw_dir`` (private keys PEM, mode 0600; file names start
with ``sim-tdx-`` because the directory is shared with the other simulated devices).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from enclave.attestation.evidence import Evidence, check_report_data
from enclave.attestation.launch import LaunchIdentity
from verifier.claims import Platform

ROOT_YEARS = 25
PCK_YEARS = 7
COLLATERAL_DAYS = 30
QE_VENDOR_ID_INTEL = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
# The simulated platform's TCB: what the PCK certificate and the quotes report.
DEFAULT_FMSPC = bytes.fromhex("00806f050000")
DEFAULT_PCE_ID = bytes.fromhex("0000")
DEFAULT_SGX_COMPONENTS: tuple[int, ...] = (7, 7, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
DEFAULT_PCE_SVN = 13
DEFAULT_CPU_SVN = bytes(DEFAULT_SGX_COMPONENTS)
# TEE_TCB_SVN: module SVN 5, module version 1 (identity TDX_01), late microcode 3.
DEFAULT_TEE_TCB_SVN = bytes((5, 1, 3)) + bytes(13)
QE_ISV_SVN = 4
QE_ISV_PROD_ID = 2
QE_MR_SIGNER = hashlib.sha256(b"kms-sim-tdx-quoting-enclave-signer").digest()
QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
QE_ATTRIBUTES_MASK = bytes.fromhex("fbffffffffffffff0000000000000000")
QE_AUTH_DATA = bytes(range(32))
MR_SEAM = hashlib.sha384(b"kms-sim-tdx-module").digest()
SEAM_ATTRIBUTES = bytes(8)
TD_ATTRIBUTES_DEFAULT = (1 << 28).to_bytes(8, "little")  # SEPT_VE_DISABLE; DEBUG (bit 0) off
XFAM_DEFAULT = bytes.fromhex("e702060000000000")

_SGX = "1.2.840.113741.1.13.1"
_OID_SGX_EXTENSIONS = x509.ObjectIdentifier(_SGX)
_FILES = {
    "root_key": "sim-tdx-root-key.pem",
    "pck_ca_key": "sim-tdx-pck-ca-key.pem",
    "pck_key": "sim-tdx-pck-key.pem",
    "attestation_key": "sim-tdx-attestation-key.pem",
    "tcb_signing_key": "sim-tdx-tcb-signing-key.pem",
    "root": "sim-tdx-root.pem",
    "pck_ca": "sim-tdx-pck-ca.pem",
    "pck": "sim-tdx-pck.pem",
    "tcb_signing": "sim-tdx-tcb-signing.pem",
}


def _tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + content


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray((40 * arcs[0] + arcs[1],))
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


def _entry(oid: str, value: bytes) -> bytes:
    return _tlv(0x30, _oid(oid) + value)


def sgx_extension(
    *,
    fmspc: bytes,
    pce_id: bytes,
    sgx_components: Sequence[int],
    pce_svn: int,
    cpu_svn: bytes,
    ppid: bytes,
) -> bytes:
    """The DER of the SGX extension, as the Intel PCK certificate profile (1.5) lays it out."""
    tcb = b"".join(_entry(f"{_SGX}.2.{i + 1}", _int(svn)) for i, svn in enumerate(sgx_components))
    tcb += _entry(f"{_SGX}.2.17", _int(pce_svn)) + _entry(f"{_SGX}.2.18", _tlv(0x04, cpu_svn))
    return _tlv(
        0x30,
        _entry(f"{_SGX}.1", _tlv(0x04, ppid))
        + _entry(f"{_SGX}.2", _tlv(0x30, tcb))
        + _entry(f"{_SGX}.3", _tlv(0x04, pce_id))
        + _entry(f"{_SGX}.4", _tlv(0x04, fmspc))
        + _entry(f"{_SGX}.5", _tlv(0x0A, b"\x00")),  # SGX type: Standard
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Enclave KMS simulated Intel"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Simulation"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ]
    )


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    start: datetime,
    years: int,
    ca: bool,
    path_length: int | None = None,
    extensions: Sequence[x509.UnrecognizedExtension] = (),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class SimulatedTdx:
    """One simulated TDX machine: SIM Intel PKI, its PCK, QE and attestation key."""

    root: x509.Certificate = field(repr=False)
    pck_ca: x509.Certificate = field(repr=False)
    pck: x509.Certificate = field(repr=False)
    tcb_signing: x509.Certificate = field(repr=False)
    pck_key: ec.EllipticCurvePrivateKey = field(repr=False)
    attestation_key: ec.EllipticCurvePrivateKey = field(repr=False)
    tcb_signing_key: ec.EllipticCurvePrivateKey = field(repr=False)
    fmspc: bytes = DEFAULT_FMSPC
    tee_tcb_svn: bytes = DEFAULT_TEE_TCB_SVN

    @classmethod
    def create(
        cls, *, now: datetime | None = None
    ) -> tuple[SimulatedTdx, ec.EllipticCurvePrivateKey, ec.EllipticCurvePrivateKey]:
        """A new machine; also returns the root and PCK CA private keys (to persist)."""
        start = (now or datetime.now(UTC)) - timedelta(days=1)
        root_key, ca_key, pck_key, att_key, tcb_key = (
            ec.generate_private_key(ec.SECP256R1()) for _ in range(5)
        )
        root_name = _name("SIM Intel SGX Root CA")
        ca_name = _name("SIM Intel SGX PCK Platform CA")
        root = _certificate(
            root_name,
            root_name,
            root_key.public_key(),
            root_key,
            start=start,
            years=ROOT_YEARS,
            ca=True,
        )
        pck_ca = _certificate(
            ca_name,
            root_name,
            ca_key.public_key(),
            root_key,
            start=start,
            years=ROOT_YEARS,
            ca=True,
            path_length=0,
        )
        extension = sgx_extension(
            fmspc=DEFAULT_FMSPC,
            pce_id=DEFAULT_PCE_ID,
            sgx_components=DEFAULT_SGX_COMPONENTS,
            pce_svn=DEFAULT_PCE_SVN,
            cpu_svn=DEFAULT_CPU_SVN,
            ppid=hashlib.sha256(
                pck_key.public_key().public_bytes(
                    serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
                )
            ).digest()[:16],
        )
        pck = _certificate(
            _name("SIM Intel SGX PCK Certificate"),
            ca_name,
            pck_key.public_key(),
            ca_key,
            start=start,
            years=PCK_YEARS,
            ca=False,
            extensions=(x509.UnrecognizedExtension(_OID_SGX_EXTENSIONS, extension),),
        )
        tcb_signing = _certificate(
            _name("SIM Intel SGX TCB Signing"),
            root_name,
            tcb_key.public_key(),
            root_key,
            start=start,
            years=PCK_YEARS,
            ca=False,
        )
        machine = cls(root, pck_ca, pck, tcb_signing, pck_key, att_key, tcb_key)
        return machine, root_key, ca_key

    @classmethod
    def load_or_create(cls, hw_dir: Path) -> SimulatedTdx:
        """The machine kept in ``hw_dir``, made (once) if the directory holds none."""
        paths = {name: hw_dir / file for name, file in _FILES.items()}
        if all(path.exists() for path in paths.values()):
            return cls._load(paths)
        hw_dir.mkdir(parents=True, exist_ok=True)
        machine, root_key, ca_key = cls.create()
        _write_private(paths["root_key"], root_key)
        _write_private(paths["pck_ca_key"], ca_key)
        _write_private(paths["pck_key"], machine.pck_key)
        _write_private(paths["attestation_key"], machine.attestation_key)
        _write_private(paths["tcb_signing_key"], machine.tcb_signing_key)
        for name in ("root", "pck_ca", "pck", "tcb_signing"):
            paths[name].write_bytes(_pem(getattr(machine, name)))
        return machine

    @classmethod
    def _load(cls, paths: Mapping[str, Path]) -> SimulatedTdx:
        def cert(name: str) -> x509.Certificate:
            return x509.load_pem_x509_certificate(paths[name].read_bytes())

        return cls(
            root=cert("root"),
            pck_ca=cert("pck_ca"),
            pck=cert("pck"),
            tcb_signing=cert("tcb_signing"),
            pck_key=_load_private(paths["pck_key"]),
            attestation_key=_load_private(paths["attestation_key"]),
            tcb_signing_key=_load_private(paths["tcb_signing_key"]),
        )

    def roots_pem(self) -> bytes:
        """The fake Intel roots a verifier is given: SIM Root CA, then SIM TCB Signing.

        The root is the anchor; the TCB Signing certificate (issued by it) lets the verifier
        check simulated TCB Info and QE Identity, as Intel's TCB signing chain does.
        """
        return _pem(self.root) + _pem(self.tcb_signing)

    def pck_chain_pem(self) -> bytes:
        """Certification data type 5: PCK leaf, PCK Platform CA, root, NUL-terminated."""
        return _pem(self.pck) + _pem(self.pck_ca) + _pem(self.root) + b"\x00"

    def provider(self, launch: LaunchIdentity) -> SimulatedTdxProvider:
        return SimulatedTdxProvider(self, launch)

    def quote(
        self,
        *,
        report_data: bytes,
        mrtd: bytes,
        mr_config_id: bytes = bytes(48),
        mr_owner: bytes = bytes(48),
        mr_owner_config: bytes = bytes(48),
        rtmrs: Sequence[bytes] | None = None,
        debug: bool = False,
        tee_tcb_svn: bytes | None = None,
        version: int = 4,
    ) -> bytes:
        """A signed TDX quote v4 (or v5 with a TDX 1.5 body), in Intel's exact layout."""
        check_report_data(report_data)
        if len(mrtd) != 48 or len(mr_config_id) != 48 or len(mr_owner) != 48:
            raise ValueError("MRTD, MRCONFIGID and MROWNER are 48 bytes")
        rtmr_values = (
            list(rtmrs)
            if rtmrs is not None
            else [
                hashlib.sha384(b"kms-sim-tdx-rtmr" + bytes((i,)) + mrtd).digest() for i in range(4)
            ]
        )
        if len(rtmr_values) != 4 or any(len(v) != 48 for v in rtmr_values):
            raise ValueError("four 48-byte RTMRs")
        td_attributes = bytearray(TD_ATTRIBUTES_DEFAULT)
        if debug:
            td_attributes[0] |= 0x01
        pce_svn = DEFAULT_PCE_SVN
        header = struct.pack(
            "<HHIHH16s20s", version, 2, 0x81, QE_ISV_SVN, pce_svn, QE_VENDOR_ID_INTEL, bytes(20)
        )
        body = b"".join(
            (
                tee_tcb_svn or self.tee_tcb_svn,
                MR_SEAM,
                bytes(48),
                SEAM_ATTRIBUTES,
                bytes(td_attributes),
                XFAM_DEFAULT,
                mrtd,
                mr_config_id,
                mr_owner,
                mr_owner_config,
                *rtmr_values,
                report_data,
            )
        )
        if version == 5:
            body += bytes(16) + bytes(48)  # TEE_TCB_SVN_2, MRSERVICETD (TDX 1.5 body)
            header += struct.pack("<HI", 3, len(body))
        elif version != 4:
            raise ValueError("quote version 4 or 5")
        signed = header + body
        attestation_public = self.attestation_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )[1:]
        qe_report = self._qe_report(hashlib.sha256(attestation_public + QE_AUTH_DATA).digest())
        chain = self.pck_chain_pem()
        qe_cert_data = (
            qe_report
            + _raw_signature(self.pck_key, qe_report)
            + struct.pack("<H", len(QE_AUTH_DATA))
            + QE_AUTH_DATA
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        signature_data = (
            _raw_signature(self.attestation_key, signed)
            + attestation_public
            + struct.pack("<HI", 6, len(qe_cert_data))
            + qe_cert_data
        )
        return signed + struct.pack("<I", len(signature_data)) + signature_data

    def _qe_report(self, binding: bytes) -> bytes:
        report = bytearray(384)
        report[0:16] = DEFAULT_CPU_SVN
        report[48:64] = QE_ATTRIBUTES
        report[64:96] = hashlib.sha256(b"kms-sim-tdx-quoting-enclave").digest()
        report[128:160] = QE_MR_SIGNER
        struct.pack_into("<HH", report, 256, QE_ISV_PROD_ID, QE_ISV_SVN)
        report[320:352] = binding
        return bytes(report)

    def collateral(
        self,
        at: datetime,
        *,
        tcb_status: str = "UpToDate",
        qe_status: str = "UpToDate",
        advisory_ids: Sequence[str] = (),
        days: int = COLLATERAL_DAYS,
    ) -> tuple[bytes, bytes]:
        """PCS-format TCB Info and TD_QE Identity bodies, issued at ``at``, signed by the SIM
        TCB Signing key. The platform's own level carries ``tcb_status``."""
        issue, next_update = _iso(at), _iso(at + timedelta(days=days))

        def components(values: Sequence[int]) -> list[dict[str, int]]:
            return [{"svn": v} for v in values]

        own_level: dict[str, object] = {
            "tcb": {
                "sgxtcbcomponents": components(DEFAULT_SGX_COMPONENTS),
                "pcesvn": DEFAULT_PCE_SVN,
                "tdxtcbcomponents": components(self.tee_tcb_svn),
            },
            "tcbDate": "2025-01-01T00:00:00Z",
            "tcbStatus": tcb_status,
        }
        if advisory_ids:
            own_level["advisoryIDs"] = list(advisory_ids)
        old_level = {
            "tcb": {
                "sgxtcbcomponents": components([1, 1, 1, 1, 1, 1, 0, 1] + [0] * 8),
                "pcesvn": 5,
                "tdxtcbcomponents": components([0] * 16),
            },
            "tcbDate": "2018-01-04T00:00:00Z",
            "tcbStatus": "OutOfDate",
            "advisoryIDs": ["INTEL-SA-00000"],
        }
        module = {
            "mrsigner": "00" * 48,
            "attributes": SEAM_ATTRIBUTES.hex(),
            "attributesMask": "ff" * 8,
        }
        tcb_info = {
            "id": "TDX",
            "version": 3,
            "issueDate": issue,
            "nextUpdate": next_update,
            "fmspc": self.fmspc.hex(),
            "pceId": DEFAULT_PCE_ID.hex(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": 1,
            "tdxModule": module,
            "tdxModuleIdentities": [
                {
                    "id": f"TDX_{self.tee_tcb_svn[1]:02X}",
                    **module,
                    "tcbLevels": [
                        {
                            "tcb": {"isvsvn": self.tee_tcb_svn[0]},
                            "tcbDate": "2025-01-01T00:00:00Z",
                            "tcbStatus": "UpToDate",
                        },
                    ],
                }
            ],
            "tcbLevels": [own_level, old_level],
        }
        qe_identity = {
            "id": "TD_QE",
            "version": 2,
            "issueDate": issue,
            "nextUpdate": next_update,
            "tcbEvaluationDataNumber": 1,
            "miscselect": "00000000",
            "miscselectMask": "ffffffff",
            "attributes": QE_ATTRIBUTES.hex(),
            "attributesMask": QE_ATTRIBUTES_MASK.hex(),
            "mrsigner": QE_MR_SIGNER.hex(),
            "isvprodid": QE_ISV_PROD_ID,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": QE_ISV_SVN},
                    "tcbDate": "2025-01-01T00:00:00Z",
                    "tcbStatus": qe_status,
                },
            ],
        }
        return (
            self._signed_document("tcbInfo", tcb_info),
            self._signed_document("enclaveIdentity", qe_identity),
        )

    def _signed_document(self, key: str, value: Mapping[str, object]) -> bytes:
        body = json.dumps(value, separators=(",", ":")).encode("utf-8")
        signature = _raw_signature(self.tcb_signing_key, body).hex()
        return b'{"' + key.encode() + b'":' + body + b',"signature":"' + signature.encode() + b'"}'


@dataclass(frozen=True)
class SimulatedTdxProvider:
    """``EvidenceProvider`` for one launch on a simulated TDX machine."""

    machine: SimulatedTdx
    launch: LaunchIdentity

    @property
    def platform(self) -> Platform:
        return "tdx"

    def evidence(self, report_data: bytes) -> Evidence:
        quote = self.machine.quote(
            report_data=report_data,
            mrtd=self.launch.measurement,
            mr_config_id=self.launch.tdx_mr_config_id,
        )
        return Evidence(platform="tdx", evidence=quote)
