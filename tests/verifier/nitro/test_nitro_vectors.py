"""Real Nitro attestation documents (tests/vectors/nitro, see tests/vectors/PROVENANCE.md).

Every valid enclave document is accepted with the production roots at its own timestamp,
with the fields PROVENANCE records; every negative is rejected with the error naming the
failed check; outside the ~3 h leaf window a document is Expired.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from verifier.errors import (
    BadSignature,
    Expired,
    MalformedEvidence,
    UnsupportedEvidence,
    UsageError,
)
from verifier.nitro import validate
from verifier.nitro.abi import NitroDocument
from verifier.policy import Policy
from verifier.roots import TrustRoots
from verifier.verify import Verifier

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "nitro"
ZERO48 = "00" * 48


@dataclass(frozen=True)
class Vector:
    file: str
    module_id: str
    timestamp_ms: int
    window: tuple[str, str]  # PROVENANCE "VALID at a .. b"
    pcr0: str
    user_data: bytes | None = None
    user_data_len: int | None = None
    nonce: bytes | None = None
    nonce_len: int | None = None
    public_key: bytes | None = None
    public_key_len: int | None = None
    more_pcrs: tuple[tuple[int, str], ...] = ()
    indefinite_payload: bool = False

    @property
    def debug(self) -> bool:
        return self.pcr0 == ZERO48

    def raw(self) -> bytes:
        return (VECTORS / self.file).read_bytes()

    def document_bytes(self) -> bytes:
        data = self.raw()
        return base64.b64decode(data) if self.file.endswith(".b64") else data

    @property
    def at(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)


VALID = [
    Vector(
        "evervault_ga_doc.b64",
        module_id="i-0918f6c55e3b61d89-enc018aa8b8e2285d13",
        timestamp_ms=1695049410860,
        window=("2023-09-18T14:37:09Z", "2023-09-18T17:37:12Z"),
        pcr0=ZERO48,
        user_data_len=91,  # a P-256 SubjectPublicKeyInfo
        nonce_len=256,
    ),
    Vector(
        "evervault_beta_doc.cbor",
        module_id="i-020b6af9246d90e92-enc0183d09086c24190",
        timestamp_ms=1665651482136,
        window=("2022-10-13T08:57:59Z", "2022-10-13T11:58:02Z"),
        pcr0="f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b",
        nonce_len=256,
        more_pcrs=(
            (
                1,
                "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f",
            ),
            (
                2,
                "d8f114da658de5481f8d9ec73907feb553560787522f705c92d7d96beed8e15e2aa611984e098c576832c292e8dc469a",
            ),
        ),
    ),
    Vector(
        "evervault_beta_debug_doc.cbor",
        module_id="i-03ad7cdb817437eeb-enc0183cc7569b3f6e1",
        timestamp_ms=1665582606081,
        window=("2022-10-12T13:49:51Z", "2022-10-12T16:49:54Z"),
        pcr0=ZERO48,
        user_data=b"hello, world!",
        public_key=b"my super secret key",
    ),
    Vector(
        "evervault_cage_embedded_doc.cbor",
        module_id="i-0ec0e572c8263d8ff-enc0185c4fd382eeb25",
        timestamp_ms=1674047239280,
        window=("2023-01-18T13:07:13Z", "2023-01-18T16:07:16Z"),
        pcr0="d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5a74fe4891da9817611a71e71b98e5329232902de3cf419af",
        user_data_len=120,
        nonce_len=256,
        more_pcrs=(
            (
                2,
                "e4f634d24ad83b7f6e49fe283bafdb220f6252fb4a278a858e19d15b7cd0f263b9168ed0bacefb4444266df9f9a77f24",
            ),
            (
                8,
                "97c5395a83c0d6a04d53ff962663c714c178c24500bf97f78456ed3721d922cf3f940614da4bb90107c439bc4a1443ca",
            ),
        ),
    ),
    Vector(
        "automata_attestation_1.cbor",
        module_id="i-07fd4cc4df935eab0-enc01915a74e6ed4aa6",
        timestamp_ms=1723799509167,
        window=("2024-08-16T09:11:46Z", "2024-08-16T12:11:49Z"),
        pcr0=ZERO48,
        user_data=b"Automata MPC Demo",
        nonce=b"1234",
        public_key_len=139,
    ),
    Vector(
        "automata_attestation_2.cbor",
        module_id="i-015531f954c54297c-enc018adb700a324d32",
        timestamp_ms=1695899307117,
        window=("2023-09-28T11:08:24Z", "2023-09-28T14:08:27Z"),
        pcr0="ca78fbe0b97bbfe1895dd713639dffcbdd21da5c7e05b8d90fe57a4e122414edc0f677d673df31fee1c16a7b34c16f36",
        user_data_len=290,
        nonce_len=32,
        more_pcrs=(
            (
                2,
                "61d30545473dc728dde6808b502a40face68e7a1bc6cb16515d88cc8ed32c2dd2cc7d8ca69ec2e103fbd4e58e228aace",
            ),
            (8, ZERO48),
        ),
    ),
    Vector(
        "base_indefinite_map_doc.cbor",
        module_id="i-0368fa67e156d6d23-enc019b8596b1a9dad6",
        timestamp_ms=1767472867402,
        window=("2026-01-03T20:40:25Z", "2026-01-03T23:40:28Z"),
        pcr0="",  # production (non-zero); value not listed in PROVENANCE
        user_data=bytes.fromhex("69553adc61d6e9fcdecbe1ea49bb2b52a60238e0"),
        indefinite_payload=True,
    ),
]
BY_NAME = {v.file: v for v in VALID}
BETA = BY_NAME["evervault_beta_doc.cbor"]
BASE = BY_NAME["base_indefinite_map_doc.cbor"]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def verifier() -> Verifier:
    return Verifier(TrustRoots.production())


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.file)
def test_valid_document_is_accepted_at_its_timestamp(verifier: Verifier, vector: Vector) -> None:
    claims = verifier.verify("nitro", vector.raw(), at=vector.at)

    assert claims.platform == "nitro"
    assert not claims.simulated
    assert claims.details["module_id"] == vector.module_id
    assert claims.details["timestamp"] == vector.timestamp_ms
    assert claims.details["digest"] == "SHA384"
    pcrs = claims.details["pcrs"]
    assert isinstance(pcrs, dict)
    assert pcrs["0"] == claims.measurement.hex()
    if vector.pcr0:
        assert claims.measurement.hex() == vector.pcr0
    for index, value in vector.more_pcrs:
        assert pcrs[str(index)] == value
    assert claims.debug is vector.debug
    assert claims.debug is (claims.measurement == bytes(len(claims.measurement)))

    user_data = claims.details["user_data"]
    if vector.user_data is not None:
        assert claims.report_data == vector.user_data
        assert user_data == vector.user_data.hex()
    if vector.user_data_len is not None:
        assert len(claims.report_data) == vector.user_data_len
    if vector.user_data is None and vector.user_data_len is None:
        assert claims.report_data == b""
        assert user_data is None
    _check_optional(claims.details["nonce"], vector.nonce, vector.nonce_len)
    _check_optional(claims.details["public_key"], vector.public_key, vector.public_key_len)


def _check_optional(seen: object, exact: bytes | None, length: int | None) -> None:
    if exact is not None:
        assert seen == exact.hex()
    elif length is not None:
        assert isinstance(seen, str)
        assert len(bytes.fromhex(seen)) == length
    else:
        assert seen is None


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.file)
def test_valid_document_is_accepted_across_its_window(verifier: Verifier, vector: Vector) -> None:
    start, end = (_time(t) for t in vector.window)
    verifier.verify("nitro", vector.raw(), at=start)
    verifier.verify("nitro", vector.raw(), at=end)


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.file)
def test_outside_the_leaf_window_is_expired(verifier: Verifier, vector: Vector) -> None:
    start, end = (_time(t) for t in vector.window)
    # The verifier has cached this chain by now: validity must still be checked each time.
    verifier.verify("nitro", vector.raw(), at=vector.at)
    with pytest.raises(Expired):
        verifier.verify("nitro", vector.raw(), at=end + timedelta(seconds=1))
    with pytest.raises(Expired):
        verifier.verify("nitro", vector.raw(), at=start - timedelta(seconds=1))


def test_expired_on_a_fresh_verifier_too() -> None:
    with pytest.raises(Expired):
        Verifier(TrustRoots.production()).verify(
            "nitro", BETA.raw(), at=BETA.at + timedelta(days=1)
        )


def test_indefinite_length_payload_is_verified_as_received() -> None:
    document = NitroDocument.from_bytes(BASE.raw())
    assert document.cose.payload[0] == 0xBF  # indefinite-length map, signed as is
    assert document.cose.payload[-1] == 0xFF


def test_base64_vector_is_accepted_as_text_and_as_bytes(verifier: Verifier) -> None:
    vector = BY_NAME["evervault_ga_doc.b64"]
    from_text = verifier.verify("nitro", vector.raw(), at=vector.at)
    from_bytes = verifier.verify("nitro", vector.document_bytes(), at=vector.at)
    assert from_text == from_bytes


def test_tagged_cose_sign1_is_accepted(verifier: Verifier) -> None:
    tagged = b"\xd2" + BETA.raw()  # RFC 9052: COSE_Sign1_Tagged = #6.18(COSE_Sign1)
    claims = verifier.verify("nitro", tagged, at=BETA.at)
    assert claims.measurement.hex() == BETA.pcr0


def test_other_tag_is_malformed(verifier: Verifier) -> None:
    with pytest.raises(MalformedEvidence, match="tag"):
        verifier.verify("nitro", b"\xd1" + BETA.raw(), at=BETA.at)


@pytest.mark.parametrize(
    ("file", "at", "error"),
    [
        ("negative/evervault_beta_doc_sigflip.cbor", BETA.at, BadSignature),
        ("negative/evervault_beta_doc_pcr0flip.cbor", BETA.at, BadSignature),
        ("negative/base_doc_as_committed_corrupt.cbor", BASE.at, MalformedEvidence),
        (
            "vaportpm_nitrotpm_doc.cbor",
            datetime.fromtimestamp(1770113522437 / 1000, UTC),
            UnsupportedEvidence,
        ),
    ],
    ids=lambda p: p if isinstance(p, str) else "",
)
def test_negative_vector_is_rejected(
    verifier: Verifier, file: str, at: datetime, error: type[Exception]
) -> None:
    with pytest.raises(error):
        verifier.verify("nitro", (VECTORS / file).read_bytes(), at=at)


def test_nitrotpm_document_is_named_as_such(verifier: Verifier) -> None:
    raw = (VECTORS / "vaportpm_nitrotpm_doc.cbor").read_bytes()
    with pytest.raises(UnsupportedEvidence, match="not an enclave document"):
        verifier.verify("nitro", raw, at=datetime(2026, 2, 3, 11, tzinfo=UTC))


def test_separate_certificates_are_refused(verifier: Verifier) -> None:
    with pytest.raises(UsageError):
        verifier.verify("nitro", BETA.raw(), at=BETA.at, certs=[b"x"])


def test_chain_is_cached_on_the_chain_verifier() -> None:
    from verifier.nitro.verify import CertificateCache, certificate_cache

    fresh = Verifier(TrustRoots.production())
    fresh.verify("nitro", BETA.raw(), at=BETA.at)
    cache = certificate_cache(fresh.chains)
    assert isinstance(cache, CertificateCache)
    assert len(cache) == 5  # leaf + four cabundle certificates, parsed once
    fresh.verify("nitro", BETA.raw(), at=BETA.at)
    assert len(cache) == 5


def test_policy_pcrs_report_every_mismatch(verifier: Verifier) -> None:
    claims = verifier.verify("nitro", BETA.raw(), at=BETA.at)
    good = Policy(pcrs={0: bytes.fromhex(BETA.pcr0), 1: bytes.fromhex(BETA.more_pcrs[0][1])})
    assert validate.mismatches(claims, good) == []
    bad = Policy(pcrs={0: bytes.fromhex(BETA.pcr0), 2: bytes(48), 20: bytes(48)})
    found = validate.mismatches(claims, bad)
    assert [(m.field, m.expected) for m in found] == [
        ("pcrs.2", ZERO48),
        ("pcrs.20", ZERO48),
    ]
    assert found[0].seen == BETA.more_pcrs[1][1]
    assert found[1].seen == "absent"
    assert validate.mismatches(claims, Policy()) == []


def test_policy_appraisal_flags_debug_documents(verifier: Verifier) -> None:
    vector = BY_NAME["evervault_beta_debug_doc.cbor"]
    claims = verifier.verify("nitro", vector.raw(), at=vector.at)
    found = Policy(platform="nitro").mismatches(claims, vector.at)
    assert [m.field for m in found] == ["debug"]
    assert Policy(platform="nitro", allow_debug=True).mismatches(claims, vector.at) == []


def test_text_fields_in_claims_json(verifier: Verifier) -> None:
    claims = verifier.verify("nitro", BETA.raw(), at=BETA.at)
    document = claims.to_json()
    assert document["platform"] == "nitro"
    assert document["measurement"] == BETA.pcr0
    assert document["report_data"] == ""
