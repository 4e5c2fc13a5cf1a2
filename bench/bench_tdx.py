"""TDX quote verification throughput beside the two raw P-256 ECDSA verifies it contains.

A TDX verification checks two ECDSA P-256/SHA-256 signatures (the attestation key over
header + body, the PCK key over the QE report), the QE binding, the PCK chain (cached
links, validity at ``at``) and builds the claims. The baseline is one call doing both raw
verifies over the same bytes with the same keys, measured in the same run; the target is
at least 80 % of its rate. No collateral: the figure is the per-quote cost a verifier pays.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bench.common import BenchResult, rate, result
from verifier._internal.x509 import load_certificates
from verifier.roots import TrustRoots
from verifier.tdx.abi import Quote
from verifier.verify import Verifier

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "tdx"
QUOTE = VECTORS / "dcapqvl_v4_quote.bin"
AT = datetime(2026, 6, 1, tzinfo=UTC)  # inside the PCK window (2025-02-06 .. 2032-02-06)


def _der(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def run() -> list[BenchResult]:
    verifier = Verifier(TrustRoots.production())
    raw = QUOTE.read_bytes()

    def tdx_verify() -> None:
        verifier.verify("tdx", raw, at=AT)

    quote = Quote.from_bytes(raw)
    attestation_key = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + quote.attestation_key
    )
    pck_key = load_certificates(quote.pck_chain.rstrip(b"\x00"))[0].public_key()
    assert isinstance(pck_key, ec.EllipticCurvePublicKey)
    quote_sig, qe_sig = _der(quote.signature), _der(quote.qe_report_signature)
    signed, qe_report = quote.signed_data, quote.qe_report.raw
    algorithm = ec.ECDSA(hashes.SHA256())

    def two_raw_verifies() -> None:
        attestation_key.verify(quote_sig, signed, algorithm)
        pck_key.verify(qe_sig, qe_report, algorithm)

    # Interleave so that both see the same machine load.
    raw_rates, tdx_rates = [], []
    for _ in range(3):
        raw_rates.append(rate(two_raw_verifies, seconds=0.5, repeats=3))
        tdx_rates.append(rate(tdx_verify, seconds=0.5, repeats=3))
    raw_rate = sorted(raw_rates)[1]
    tdx_rate = sorted(tdx_rates)[1]
    return [
        result(
            "tdx verify (Verifier.verify, cached chain)",
            tdx_rate,
            "verif/s",
            "2x raw P-256 ECDSA verify",
            raw_rate,
            ">= 0.80",
        )
    ]


if __name__ == "__main__":
    for row in run():
        print(row)
