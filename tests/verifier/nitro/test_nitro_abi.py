"""Syntactic checks of the Nitro document (abi) and mutation properties of the verifier.

Malformed documents are built with cbor2 from a real one, so each case changes exactly
one thing; they are rejected before any cryptography, so no signature is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verifier.errors import (
    BadSignature,
    MalformedEvidence,
    UnsupportedEvidence,
    VerificationError,
)
from verifier.nitro.abi import MAX_DOCUMENT_BYTES, NitroDocument, decode_cbor
from verifier.roots import TrustRoots
from verifier.verify import Verifier

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "nitro"
BETA_RAW = (VECTORS / "evervault_beta_doc.cbor").read_bytes()
BETA_AT = datetime.fromtimestamp(1665651482136 / 1000, UTC)
BASE_RAW = (VECTORS / "base_indefinite_map_doc.cbor").read_bytes()
BASE_AT = datetime.fromtimestamp(1767472867402 / 1000, UTC)
VERIFIER = Verifier(TrustRoots.production())

Payload = dict[str, Any]


def _rebuild(
    payload_change: Callable[[Payload], None] | None = None,
    *,
    protected: bytes | None = None,
    unprotected: object = None,
    signature: bytes | None = None,
    payload_bytes: bytes | None = None,
) -> bytes:
    protected_raw, unprotected_raw, payload_raw, signature_raw = cbor2.loads(BETA_RAW)
    if payload_bytes is None:
        payload = cbor2.loads(payload_raw)
        if payload_change:
            payload_change(payload)
        payload_bytes = cbor2.dumps(payload)
    return cbor2.dumps(
        [
            protected if protected is not None else protected_raw,
            unprotected if unprotected is not None else unprotected_raw,
            payload_bytes,
            signature if signature is not None else signature_raw,
        ]
    )


def _set(name: str, value: object) -> Callable[[Payload], None]:
    def change(payload: Payload) -> None:
        payload[name] = value

    return change


def _drop(name: str) -> Callable[[Payload], None]:
    def change(payload: Payload) -> None:
        del payload[name]

    return change


def _pcr(index: object, value: object) -> Callable[[Payload], None]:
    def change(payload: Payload) -> None:
        payload["pcrs"][index] = value

    return change


def _many_pcrs(payload: Payload) -> None:
    payload["pcrs"] = {i: bytes(48) for i in range(33)}


MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not-cbor", b"\xff\xff"),
    ("trailing-bytes", BETA_RAW + b"\x00"),
    ("too-large", BETA_RAW + b"\x00" * MAX_DOCUMENT_BYTES),
    ("array-of-three", cbor2.dumps(cbor2.loads(BETA_RAW)[:3])),
    ("map-not-array", cbor2.dumps({"a": 1})),
    ("protected-not-bstr", cbor2.dumps([{1: -35}, {}, b"", bytes(96)])),
    ("unprotected-not-map", _rebuild(unprotected=[])),
    ("detached-payload", cbor2.dumps([cbor2.dumps({1: -35}), {}, None, bytes(96)])),
    ("alg-in-both-buckets", _rebuild(unprotected={1: -35})),
    ("no-alg", _rebuild(protected=cbor2.dumps({4: b"kid"}))),
    ("payload-not-map", _rebuild(payload_bytes=cbor2.dumps([1, 2]))),
    ("payload-trailing", _rebuild(payload_bytes=cbor2.loads(BETA_RAW)[2] + b"\x00")),
    ("missing-module_id", _rebuild(_drop("module_id"))),
    ("missing-pcrs", _rebuild(_drop("pcrs"))),
    ("missing-cabundle", _rebuild(_drop("cabundle"))),
    ("missing-certificate", _rebuild(_drop("certificate"))),
    ("missing-timestamp", _rebuild(_drop("timestamp"))),
    ("unknown-field", _rebuild(_set("extra", 1))),
    ("module_id-empty", _rebuild(_set("module_id", ""))),
    ("module_id-bytes", _rebuild(_set("module_id", b"i-0"))),
    ("digest-sha256", _rebuild(_set("digest", "SHA256"))),
    ("timestamp-negative", _rebuild(_set("timestamp", -1))),
    ("timestamp-zero", _rebuild(_set("timestamp", 0))),
    ("timestamp-text", _rebuild(_set("timestamp", "1665651482136"))),
    ("timestamp-float", _rebuild(_set("timestamp", 1665651482136.0))),
    ("timestamp-bool", _rebuild(_set("timestamp", True))),
    ("timestamp-huge", _rebuild(_set("timestamp", 2**64 - 1))),
    ("pcrs-empty", _rebuild(_set("pcrs", {}))),
    ("pcrs-list", _rebuild(_set("pcrs", [bytes(48)]))),
    ("pcrs-33", _rebuild(_many_pcrs)),
    ("pcr-index-32", _rebuild(_pcr(32, bytes(48)))),
    ("pcr-index-negative", _rebuild(_pcr(-1, bytes(48)))),
    ("pcr-index-text", _rebuild(_pcr("1", bytes(48)))),
    ("pcr-47-bytes", _rebuild(_pcr(3, bytes(47)))),
    ("pcr-text", _rebuild(_pcr(3, "00" * 48))),
    ("pcr0-missing", _rebuild(lambda p: p["pcrs"].pop(0))),
    ("certificate-empty", _rebuild(_set("certificate", b""))),
    ("certificate-too-long", _rebuild(_set("certificate", b"\x30" * 1025))),
    ("cabundle-empty", _rebuild(_set("cabundle", []))),
    ("cabundle-not-list", _rebuild(_set("cabundle", b"\x30"))),
    ("cabundle-entry-text", _rebuild(lambda p: p["cabundle"].append("cert"))),
    ("cabundle-nine", _rebuild(_set("cabundle", [b"\x30"] * 9))),
    ("user_data-int", _rebuild(_set("user_data", 5))),
    ("user_data-too-long", _rebuild(_set("user_data", bytes(1025)))),
    ("nonce-list", _rebuild(_set("nonce", [b"1"]))),
    ("public_key-too-long", _rebuild(_set("public_key", "k" * 1025))),
    (
        "duplicate-key",
        # an indefinite map with "nonce" twice: the second must not shadow the first
        _rebuild(
            payload_bytes=cbor2.loads(BASE_RAW)[2][:-1]
            + cbor2.dumps("nonce")
            + cbor2.dumps(b"x")
            + b"\xff"
        ),
    ),
    ("nesting-too-deep", _rebuild(_set("nonce", [[[[[[[[[[b"x"]]]]]]]]]]))),
    ("signature-95-bytes", _rebuild(signature=bytes(95))),
]


@pytest.mark.parametrize(("name", "raw"), MALFORMED, ids=[name for name, _ in MALFORMED])
def test_malformed_document_is_rejected(name: str, raw: bytes) -> None:
    with pytest.raises(MalformedEvidence):
        VERIFIER.verify("nitro", raw, at=BETA_AT)


@pytest.mark.parametrize(
    "protected",
    [
        cbor2.dumps({1: -7}),  # ES256
        cbor2.dumps({1: -36}),  # ES512
        cbor2.dumps({1: "ES384"}),
        cbor2.dumps({1: -35, 2: [99]}),  # crit: an extension we cannot understand
    ],
    ids=["es256", "es512", "text-alg", "crit"],
)
def test_other_algorithms_are_unsupported(protected: bytes) -> None:
    with pytest.raises(UnsupportedEvidence):
        VERIFIER.verify("nitro", _rebuild(protected=protected), at=BETA_AT)


def test_reencoded_payload_fails_the_signature() -> None:
    """Re-encoding the indefinite map as a definite one changes the signed bytes."""
    protected, unprotected, payload, signature = cbor2.loads(BASE_RAW)
    definite = cbor2.dumps(cbor2.loads(payload))
    assert definite != payload
    forged = cbor2.dumps([protected, unprotected, definite, signature])
    with pytest.raises(BadSignature):
        VERIFIER.verify("nitro", forged, at=BASE_AT)


def test_text_optional_fields_are_kept_as_text_and_bytes() -> None:
    document = NitroDocument.from_bytes(
        _rebuild(lambda p: p.update(user_data="hello", nonce=None, public_key="pk"))
    )
    assert document.user_data.value == b"hello"
    assert document.user_data.text == "hello"
    assert document.nonce.value is None
    assert document.public_key.text == "pk"


def test_decode_cbor_refuses_trailing_and_duplicates() -> None:
    assert decode_cbor(b"\xbf\x01\x02\xff") == {1: 2}
    with pytest.raises(MalformedEvidence):
        decode_cbor(b"\x01\x02")
    with pytest.raises(MalformedEvidence):
        decode_cbor(b"\xa2\x01\x02\x01\x03")


PAYLOAD_START = BETA_RAW.index(cbor2.loads(BETA_RAW)[2])
PAYLOAD_END = PAYLOAD_START + len(cbor2.loads(BETA_RAW)[2])
PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(
    offset=st.integers(min_value=PAYLOAD_START, max_value=PAYLOAD_END - 1),
    mask=st.integers(min_value=1, max_value=255),
)
def test_flipping_a_payload_byte_is_rejected(offset: int, mask: int) -> None:
    mutated = bytearray(BETA_RAW)
    mutated[offset] ^= mask
    with pytest.raises(VerificationError):
        VERIFIER.verify("nitro", bytes(mutated), at=BETA_AT)


@PROPERTY_SETTINGS
@given(
    offset=st.integers(min_value=0, max_value=len(BASE_RAW) - 1),
    mask=st.integers(min_value=1, max_value=255),
)
def test_flipping_any_byte_is_rejected(offset: int, mask: int) -> None:
    mutated = bytearray(BASE_RAW)
    mutated[offset] ^= mask
    with pytest.raises(VerificationError):
        VERIFIER.verify("nitro", bytes(mutated), at=BASE_AT)


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=600))
def test_random_input_raises_only_verification_errors(data: bytes) -> None:
    with pytest.raises(VerificationError):
        VERIFIER.verify("nitro", data, at=BETA_AT)


@PROPERTY_SETTINGS
@given(cut=st.integers(min_value=0, max_value=len(BETA_RAW) - 1))
def test_truncated_document_is_rejected(cut: int) -> None:
    with pytest.raises(VerificationError):
        VERIFIER.verify("nitro", BETA_RAW[:cut], at=BETA_AT)


@PROPERTY_SETTINGS
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.binary(max_size=8) | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.integers() | st.text(max_size=4), children, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_random_cbor_raises_only_verification_errors(value: object) -> None:
    for raw in (cbor2.dumps(value), _rebuild(payload_bytes=cbor2.dumps(value))):
        with pytest.raises(VerificationError):
            VERIFIER.verify("nitro", raw, at=BETA_AT)
