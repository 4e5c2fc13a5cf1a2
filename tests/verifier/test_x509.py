"""verifier._internal.x509: typed errors for corrupt PEM and basicConstraints, and caches that
belong to one ``ChainVerifier`` (``attachment``), never shared between two of them."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from verifier._internal import der
from verifier._internal.x509 import (
    MAX_CHAIN_LENGTH,
    Certificate,
    ChainVerifier,
    RevocationList,
    load_certificates,
)
from verifier.claims import Platform
from verifier.errors import BadCertificateChain, MalformedCertificate
from verifier.roots import PlatformRoots, TrustRoots
from verifier.verify import Verifier

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


# --- helpers: a small CA hierarchy made with cryptography's builder -----------------------


@dataclass(frozen=True)
class Issued:
    cert: Certificate
    key: ec.EllipticCurvePrivateKey
    name: x509.Name


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(
    cn: str,
    *,
    issuer: Issued | None = None,
    ca: bool = True,
    subject: x509.Name | None = None,
    basic_constraints: x509.ExtensionType | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = subject if subject is not None else _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.name if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(
            basic_constraints or x509.BasicConstraints(ca=ca, path_length=None), critical=True
        )
    )
    signer = issuer.key if issuer else key
    der = builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    return Issued(Certificate.from_der(der), key, name)


def crl_pem(issuer: Issued) -> bytes:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.name)
        .last_update(NOW - timedelta(days=1))
        .next_update(NOW + timedelta(days=1))
        .sign(issuer.key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM)


def corrupt_base64(pem: bytes, label: bytes) -> bytes:
    """The same PEM block with one base64 character dropped (so the padding is wrong)."""
    lines = pem.splitlines()
    assert lines[0] == b"-----BEGIN " + label + b"-----"
    body = b"".join(lines[1:-1])
    assert len(body) % 4 == 0
    return b"\n".join([lines[0], body[:-5] + body[-4:], lines[-1]]) + b"\n"


# --- corrupt PEM base64 -----------------------------------------------------------------


def test_good_pem_round_trips() -> None:
    root = issue("Root")
    pem = b"-----BEGIN CERTIFICATE-----\n" + _b64(root.cert.der) + b"\n-----END CERTIFICATE-----\n"
    assert [c.fingerprint for c in load_certificates(pem)] == [root.cert.fingerprint]
    crl = RevocationList.from_bytes(crl_pem(root))
    assert crl.issuer == root.cert.subject


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"MIIB\nA\n", id="bad-padding"),
        pytest.param(b"A", id="single-char"),
        pytest.param(b"MIIBIjAN=B\n", id="data-after-padding"),
    ],
)
def test_corrupt_certificate_base64_is_malformed_certificate(body: bytes) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"
    with pytest.raises(MalformedCertificate):
        load_certificates(pem)


def test_corrupt_base64_in_second_pem_block_is_malformed_certificate() -> None:
    root = issue("Root")
    good = b"-----BEGIN CERTIFICATE-----\n" + _b64(root.cert.der) + b"\n-----END CERTIFICATE-----\n"
    bad = corrupt_base64(good, b"CERTIFICATE")
    with pytest.raises(MalformedCertificate, match="base64"):
        load_certificates(good + bad)


def test_corrupt_crl_base64_is_malformed_certificate() -> None:
    pem = corrupt_base64(crl_pem(issue("Root")), b"X509 CRL")
    with pytest.raises(MalformedCertificate, match="base64"):
        RevocationList.from_bytes(pem)
    with pytest.raises(MalformedCertificate):
        RevocationList.from_bytes(b"-----BEGIN X509 CRL-----\nA\n-----END X509 CRL-----\n")


# --- the unsigned outer signatureAlgorithm ---------------------------------------------

VIRTEE_VCEK = VECTORS / "sev-snp" / "virtee_milan_v2_vcek.der"
VIRTEE_REPORT = VECTORS / "sev-snp" / "virtee_milan_v2_report.hex"
SHA384_OID = bytes.fromhex("0609608648016503040202")
SHA256_OID = bytes.fromhex("0609608648016503040201")


def with_outer_algorithm(signed: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """The certificate or CRL with its outer (unsigned) AlgorithmIdentifier edited."""
    tbs, algorithm, signature = der.read_single(signed).children()
    return der.encode_tlv(
        der.TAG_SEQUENCE, tbs.encoded + edit(algorithm.encoded) + signature.encoded
    )


def _mgf1_sha256(algorithm: bytes) -> bytes:
    # RSASSA-PSS params: [0] hash, [1] MGF1 with its hash, [2] salt, [3] trailer. Only the
    # second SHA-384 OID (the MGF1 hash) is swapped.
    first = algorithm.index(SHA384_OID) + len(SHA384_OID)
    return algorithm[:first] + algorithm[first:].replace(SHA384_OID, SHA256_OID, 1)


def _without_trailer(algorithm: bytes) -> bytes:
    assert algorithm.endswith(bytes.fromhex("a303020101"))
    params = der.read_single(algorithm).children()
    inner = der.read_single(params[1].encoded).children()
    pss = der.encode_tlv(der.TAG_SEQUENCE, b"".join(p.encoded for p in inner[:-1]))
    return der.encode_tlv(der.TAG_SEQUENCE, params[0].encoded + pss)


def _hash_tag_as_set(algorithm: bytes) -> bytes:
    at = algorithm.index(bytes.fromhex("a00f30")) + 2
    return algorithm[:at] + b"\x31" + algorithm[at + 1 :]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_mgf1_sha256, id="pss-mgf1-hash-changed"),
        pytest.param(_without_trailer, id="pss-trailer-dropped"),
        pytest.param(_hash_tag_as_set, id="pss-hash-identifier-retagged"),
    ],
)
def test_outer_signature_algorithm_must_equal_the_signed_one(
    edit: Callable[[bytes], bytes],
) -> None:
    # RFC 5280 4.1.1.2. The AMD VCEK is RSASSA-PSS signed: its outer AlgorithmIdentifier
    # once compared equal to the TBS one after parsing only hash and salt, so an edited
    # copy of a genuine VCEK (same TBS, same signature) was accepted.
    vcek = VIRTEE_VCEK.read_bytes()
    edited = with_outer_algorithm(vcek, edit)
    assert edited != vcek
    with pytest.raises(MalformedCertificate, match="signature algorithm differs"):
        Certificate.from_der(edited)
    with pytest.raises(MalformedCertificate):
        Verifier(TrustRoots.production()).verify(
            "sev-snp", VIRTEE_REPORT.read_bytes(), certs=[edited], at=NOW
        )


def test_crl_outer_signature_algorithm_must_equal_the_signed_one() -> None:
    crl = (VECTORS / "tdx" / "gotdx_root_ca_crl.der").read_bytes()
    RevocationList.from_bytes(crl)

    def with_null_parameters(algorithm: bytes) -> bytes:
        oid = der.read_single(algorithm).children()[0]
        return der.encode_tlv(der.TAG_SEQUENCE, oid.encoded + b"\x05\x00")

    with pytest.raises(MalformedCertificate, match="signature algorithm differs"):
        RevocationList.from_bytes(with_outer_algorithm(crl, with_null_parameters))


# --- malformed basicConstraints ---------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"\x30\x05\x01", id="truncated"),
        pytest.param(b"\x04\x00", id="not-a-sequence"),
        pytest.param(b"\x30\x00\x00", id="trailing-bytes"),
        pytest.param(b"\x30\x03\x01", id="inner-truncated"),
    ],
)
def test_malformed_basic_constraints_is_malformed_certificate(value: bytes) -> None:
    odd = issue(
        "Odd CA",
        basic_constraints=x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, value),
    )
    with pytest.raises(MalformedCertificate, match="basicConstraints"):
        _ = odd.cert.is_ca


def test_malformed_basic_constraints_in_a_chain_is_malformed_certificate() -> None:
    root = issue("Root")
    odd = issue(
        "Odd CA",
        issuer=root,
        basic_constraints=x509.UnrecognizedExtension(
            ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x05\x01"
        ),
    )
    leaf = issue("Leaf", issuer=odd, ca=False)
    with pytest.raises(MalformedCertificate, match="basicConstraints"):
        ChainVerifier().verify_chain(leaf.cert, [odd.cert], [root.cert], NOW)


def test_basic_constraints_values() -> None:
    assert issue("CA").cert.is_ca is True
    assert issue("EE", ca=False).cert.is_ca is False


# --- attachments: per instance, made once -------------------------------------------------


class _Box:
    pass


def test_attachment_is_made_once_per_instance_and_key() -> None:
    first, second = ChainVerifier(), ChainVerifier()
    box = first.attachment("box", _Box)
    assert first.attachment("box", _Box) is box
    assert second.attachment("box", _Box) is not box
    assert first.attachment("other", _Box) is not box


def test_attachment_factory_runs_once_under_contention() -> None:
    chains = ChainVerifier()
    calls: list[object] = []
    barrier = threading.Barrier(8)

    def factory() -> object:
        calls.append(object())
        return calls[-1]

    seen: list[object] = []

    def worker() -> None:
        barrier.wait()
        seen.append(chains.attachment("shared", factory))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert all(item is calls[0] for item in seen)


# --- two ChainVerifiers share no cache ----------------------------------------------------


def test_link_cache_is_per_instance_and_anchors_are_per_call() -> None:
    root = issue("Root")
    impostor = issue("Root", subject=root.name)  # same name, other key
    inter = issue("Intermediate", issuer=root)
    leaf = issue("Leaf", issuer=inter, ca=False)
    trusting, other = ChainVerifier(), ChainVerifier()

    path = trusting.verify_chain(leaf.cert, [inter.cert], [root.cert], NOW)
    assert [c.fingerprint for c in path] == [
        leaf.cert.fingerprint,
        inter.cert.fingerprint,
        root.cert.fingerprint,
    ]
    # What ``trusting`` accepted (and cached) says nothing to ``other``, nor to ``trusting``
    # itself under other anchors.
    for chains in (other, trusting):
        with pytest.raises(BadCertificateChain):
            chains.verify_chain(leaf.cert, [inter.cert], [impostor.cert], NOW)
        with pytest.raises(BadCertificateChain):
            chains.verify_chain(leaf.cert, [inter.cert, root.cert], [impostor.cert], NOW)
    # A forged intermediate under the impostor fails under the real root, with either cache.
    forged_inter = issue("Intermediate", issuer=impostor, subject=inter.name)
    for chains in (trusting, other):
        with pytest.raises(BadCertificateChain):
            chains.verify_chain(leaf.cert, [forged_inter.cert], [root.cert], NOW)


def _impostor_roots(platform: Platform) -> TrustRoots:
    """Production roots for ``platform`` with every anchor swapped for a look-alike: the
    same subject name, another key."""
    real = TrustRoots.production().for_platform(platform)
    fakes = []
    for anchor in real.anchors:
        subject = x509.load_der_x509_certificate(anchor.der).subject
        fakes.append(issue("impostor", subject=subject).cert)
    roots = PlatformRoots(anchors=tuple(fakes), intermediates=real.intermediates)
    return TrustRoots(label="impostor", simulated=False, platforms={platform: roots})


@dataclass(frozen=True)
class Case:
    platform: Platform
    evidence: bytes
    certs: tuple[bytes, ...]
    at: datetime


CASES = [
    pytest.param(
        Case(
            "sev-snp",
            (VECTORS / "sev-snp" / "teekit_gcp_milan_v5_report.bin").read_bytes(),
            ((VECTORS / "sev-snp" / "teekit_gcp_milan_v5_vcek.pem").read_bytes(),),
            NOW,
        ),
        id="sev-snp",
    ),
    pytest.param(
        Case("tdx", (VECTORS / "tdx" / "dcapqvl_v4_quote.bin").read_bytes(), (), NOW),
        id="tdx",
    ),
    pytest.param(
        Case(
            "nitro",
            (VECTORS / "nitro" / "evervault_beta_doc.cbor").read_bytes(),
            (),
            datetime.fromtimestamp(1665651482.136, UTC),
        ),
        id="nitro",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_evidence_accepted_by_one_verifier_says_nothing_for_another(case: Case) -> None:
    genuine = Verifier(TrustRoots.production())
    impostor = Verifier(_impostor_roots(case.platform))

    def under(verifier: Verifier) -> None:
        verifier.verify(case.platform, case.evidence, certs=case.certs, at=case.at)

    with pytest.raises(BadCertificateChain):
        under(impostor)
    under(genuine)
    under(genuine)  # now from the caches of ``genuine``
    with pytest.raises(BadCertificateChain):
        under(impostor)
    # Each verifier carries its own platform cache (both were made above; none is new here).
    assert genuine.chains is not impostor.chains
    mine = genuine.chains.attachment(case.platform, _never)
    theirs = impostor.chains.attachment(case.platform, _never)
    assert mine is not theirs
    assert type(mine) is type(theirs)


def _chain(length: int) -> list[Issued]:
    """``length`` certificates, root first, each issued by the one before."""
    chain = [issue("Root")]
    while len(chain) < length:
        chain.append(issue(f"CA {len(chain)}", issuer=chain[-1], ca=len(chain) < length - 1))
    return chain


def test_chain_of_the_longest_allowed_length_is_accepted() -> None:
    chain = _chain(MAX_CHAIN_LENGTH)
    path = ChainVerifier().verify_chain(
        chain[-1].cert, [c.cert for c in chain[1:-1]], [chain[0].cert], NOW
    )
    assert len(path) == MAX_CHAIN_LENGTH


def test_longer_chain_is_refused_before_its_signatures_are_walked() -> None:
    # The walk once followed any number of certificates the caller sent (16 files of
    # thousands each for SEV-SNP), checking a signature and scanning the pool per link:
    # about 12 s for 8000 certificates. It now stops at MAX_CHAIN_LENGTH.
    chain = _chain(MAX_CHAIN_LENGTH + 1)
    chains = ChainVerifier()
    with pytest.raises(BadCertificateChain, match="too long"):
        chains.verify_chain(chain[-1].cert, [c.cert for c in chain[1:-1]], [chain[0].cert], NOW)
    assert len(chains._links) <= MAX_CHAIN_LENGTH


def _never() -> object:
    raise AssertionError("the platform cache should already be attached")


def _b64(der: bytes) -> bytes:
    return base64.encodebytes(der).strip()
