"""Nitro attestation document verification rate against raw P-384 ECDSA verification.

A document verification is one ES384 signature check plus CBOR parsing, a certificate
chain (links and parsed certificates come from the caches attached to the verifier's
``ChainVerifier``) and the claims. The baseline is the bare cryptography: the same ES384
signature over the same Sig_structure with an already loaded key. Target: >= 0.80.

The two rates are measured in alternating short rounds so that a noisy shared machine
slows both alike; each reported value is the median over the rounds.
"""

from __future__ import annotations

import statistics
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bench.common import BenchResult, rate, result
from verifier._internal.x509 import Certificate
from verifier.nitro.abi import NitroDocument
from verifier.roots import TrustRoots
from verifier.verify import Verifier

VECTOR = Path(__file__).resolve().parent.parent / "tests/vectors/nitro/evervault_beta_doc.cbor"
ROUNDS = 7
ROUND_SECONDS = 0.4


def run() -> list[BenchResult]:
    raw = VECTOR.read_bytes()
    document = NitroDocument.from_bytes(raw)
    # Fixed verification time: the document's own timestamp (inside its leaf's window).
    at = datetime.fromtimestamp(document.timestamp_ms / 1000, UTC)
    verifier = Verifier(TrustRoots.production())

    leaf_key = Certificate.from_der(document.certificate).public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    half = len(document.signature) // 2
    der_signature = encode_dss_signature(
        int.from_bytes(document.signature[:half], "big"),
        int.from_bytes(document.signature[half:], "big"),
    )
    signed = document.cose.sig_structure()
    es384 = ec.ECDSA(hashes.SHA384())

    def verify_document() -> None:
        verifier.verify("nitro", raw, at=at)

    def verify_raw() -> None:
        leaf_key.verify(der_signature, signed, es384)

    verify_document()  # fills the certificate and chain caches
    verify_raw()
    documents, raws = [], []
    for _ in range(ROUNDS):
        documents.append(rate(verify_document, seconds=ROUND_SECONDS, repeats=1))
        raws.append(rate(verify_raw, seconds=ROUND_SECONDS, repeats=1))
    return [
        result(
            "nitro: attestation document verifications",
            statistics.median(documents),
            "verif/s",
            "raw P-384 ECDSA verify (same signature)",
            statistics.median(raws),
            ">= 0.80",
        )
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
