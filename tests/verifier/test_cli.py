"""kms-verifier verify: exit codes 0/1/2, JSON shapes, evidence encodings, policy, time."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from verifier.cli import main, parse_rfc3339

SNP = Path(__file__).resolve().parents[1] / "vectors" / "sev-snp"
NITRO = Path(__file__).resolve().parents[1] / "vectors" / "nitro"
VIRTEE_REPORT = SNP / "virtee_milan_v2_report.hex"
VIRTEE_VCEK = SNP / "virtee_milan_v2_vcek.der"
VIRTEE_MEASUREMENT = (
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d"
    "3e1a0dc39b2c60bd95b9c480cd81841f"
)
VIRTEE_REPORT_DATA_PREFIX = "d447b55d"
GOSEV_REPORT = SNP / "gosevguest_milan_v2_report.bin"
GOSEV_VCEK = SNP / "gosevguest_milan_v2_vcek.der"
GOSEV_MEASUREMENT = (
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
    "6bdf8a9ece31a5a608eb0cf2e4872b01"
)
AT = "2026-01-01T00:00:00Z"

snp_verify = pytest.importorskip("verifier.snp.verify")


def run(argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        argv,
        stdout=out,
        stderr=err,
        stdin=io.BytesIO(stdin) if stdin is not None else None,
    )
    return code, out.getvalue(), err.getvalue()


def virtee(*extra: str, evidence: str | Path = VIRTEE_REPORT) -> list[str]:
    return [
        "verify", str(evidence), "--platform", "sev-snp", "--cert", str(VIRTEE_VCEK),
        "--at", AT, *extra,
    ]  # fmt: skip


def gosev(*extra: str) -> list[str]:
    return [
        "verify", str(GOSEV_REPORT), "--platform", "sev-snp", "--cert", str(GOSEV_VCEK),
        "--at", AT, *extra,
    ]  # fmt: skip


def write_policy(tmp_path: Path, document: object) -> str:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    return str(path)


# --- genuine evidence: exit 0, claims on stdout -------------------------------------------


def test_valid_hex_report_prints_claims() -> None:
    code, out, _ = run(virtee("--json"))
    assert code == 0
    claims = json.loads(out)
    assert claims["platform"] == "sev-snp"
    assert claims["measurement"] == VIRTEE_MEASUREMENT
    assert claims["report_data"].startswith(VIRTEE_REPORT_DATA_PREFIX)
    assert claims["debug"] is False


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda raw: raw, id="raw-binary"),
        pytest.param(lambda raw: raw.hex().encode(), id="lower-hex"),
        pytest.param(lambda raw: b"0x" + raw.hex().upper().encode() + b"\n", id="0x-upper-hex"),
        pytest.param(
            lambda raw: b"\n".join(raw.hex().encode()[i : i + 60] for i in range(0, 2368, 60)),
            id="wrapped-hex",
        ),
        pytest.param(base64.b64encode, id="base64"),
        pytest.param(base64.encodebytes, id="wrapped-base64"),
        pytest.param(lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"="), id="base64url"),
    ],
)
def test_evidence_encodings(tmp_path: Path, encode) -> None:  # type: ignore[no-untyped-def]
    raw = bytes.fromhex(VIRTEE_REPORT.read_text())
    path = tmp_path / "evidence"
    path.write_bytes(encode(raw))
    code, out, _ = run(virtee(evidence=path))
    assert code == 0, out
    assert json.loads(out)["measurement"] == VIRTEE_MEASUREMENT


def test_evidence_from_stdin() -> None:
    raw = bytes.fromhex(VIRTEE_REPORT.read_text())
    code, out, _ = run(virtee(evidence="-"), stdin=base64.b64encode(raw))
    assert code == 0
    assert json.loads(out)["measurement"] == VIRTEE_MEASUREMENT


def test_pem_bundle_with_ask_ark_is_accepted() -> None:
    code, out, _ = run(
        [
            "verify",
            str(SNP / "teekit_gcp_milan_v5_report.hex"),
            "--platform",
            "sev-snp",
            "--cert",
            str(SNP / "teekit_gcp_milan_v5_vcek.pem"),
            "--cert",
            str(SNP / "teekit_gcp_milan_ask_ark.pem"),
            "--at",
            AT,
        ]
    )
    assert code == 0, out
    assert json.loads(out)["report_data"] == "00" * 64


def test_debug_evidence_without_policy_is_genuine_and_says_debug() -> None:
    code, out, _ = run(gosev())
    assert code == 0
    claims = json.loads(out)
    assert claims["debug"] is True
    assert claims["measurement"] == GOSEV_MEASUREMENT


def test_default_time_is_now() -> None:
    # The virtee VCEK is valid until 2030-04-03: "now" lies inside that window.
    code, out, _ = run(["verify", str(VIRTEE_REPORT), "--platform", "sev-snp",
                        "--cert", str(VIRTEE_VCEK)])  # fmt: skip
    assert code == 0, out


# --- rejected evidence: exit 1, {"error": {...}} on stdout --------------------------------


def assert_rejected(code: int, out: str, error_type: str) -> dict[str, object]:
    assert code == 1, out
    document = json.loads(out)
    assert set(document) == {"error"}
    assert document["error"]["type"] == error_type
    assert isinstance(document["error"]["detail"], str) and document["error"]["detail"]
    return document["error"]  # type: ignore[no-any-return]


def test_time_after_vcek_validity_is_expired() -> None:
    code, out, _ = run(virtee("--at", "2031-01-01T00:00:00Z"))
    assert_rejected(code, out, "expired")


def test_time_before_vcek_validity_is_expired() -> None:
    code, out, _ = run(virtee("--at", "2020-01-01T00:00:00+02:00"))
    assert_rejected(code, out, "expired")


def test_report_data_mismatch() -> None:
    code, out, _ = run(virtee("--report-data", "00" * 64))
    assert_rejected(code, out, "report-data-mismatch")


def test_report_data_match() -> None:
    expected = json.loads(run(virtee())[1])["report_data"]
    code, _, _ = run(virtee("--report-data", expected.upper()))
    assert code == 0


def test_tampered_report_is_rejected() -> None:
    code, out, _ = run(virtee(evidence=SNP / "negative" / "virtee_milan_v2_report_tampered.bin"))
    assert_rejected(code, out, "bad-signature")


def test_wrong_vcek_is_rejected() -> None:
    code, out, _ = run(["verify", str(VIRTEE_REPORT), "--platform", "sev-snp",
                        "--cert", str(GOSEV_VCEK), "--at", AT])  # fmt: skip
    assert code == 1
    assert json.loads(out)["error"]["type"] in {"bad-signature", "certificate-mismatch"}


def test_missing_certificate() -> None:
    code, out, _ = run(["verify", str(VIRTEE_REPORT), "--platform", "sev-snp", "--at", AT])
    assert_rejected(code, out, "missing-certificate")


@pytest.mark.parametrize(
    "content",
    [b"\x00" * 10, b"not evidence at all", b"\xff" * 1184, b"0x"],
    ids=["short-zeros", "text", "ones", "bare-0x"],
)
def test_garbage_evidence_is_rejected_not_crashed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(content)
    code, out, _ = run(virtee(evidence=path))
    assert code == 1
    assert json.loads(out)["error"]["type"]


# --- policy -------------------------------------------------------------------------------


def test_policy_forbids_debug_by_default(tmp_path: Path) -> None:
    pytest.importorskip("verifier.snp.validate")
    code, out, _ = run(gosev("--policy", write_policy(tmp_path, {"platform": "sev-snp"})))
    error = assert_rejected(code, out, "policy-violation")
    assert {"field": "debug", "seen": "true", "expected": "false"} in error["mismatches"]  # type: ignore[operator]


def test_policy_may_allow_debug(tmp_path: Path) -> None:
    pytest.importorskip("verifier.snp.validate")
    policy = write_policy(tmp_path, {"allow_debug": True})
    code, out, _ = run(gosev("--policy", policy))
    assert code == 0, out
    assert json.loads(out)["debug"] is True


def test_policy_measurement_mismatch_lists_every_field(tmp_path: Path) -> None:
    pytest.importorskip("verifier.snp.validate")
    policy = write_policy(tmp_path, {"measurements": [{"name": "golden", "value": "00" * 48}]})
    code, out, _ = run(gosev("--policy", policy))
    error = assert_rejected(code, out, "policy-violation")
    fields = {m["field"] for m in error["mismatches"]}  # type: ignore[attr-defined]
    assert {"debug", "measurement"} <= fields


def test_policy_accepts_matching_measurement(tmp_path: Path) -> None:
    pytest.importorskip("verifier.snp.validate")
    policy = write_policy(
        tmp_path,
        {"platform": "sev-snp", "measurements": [{"name": "v1", "value": VIRTEE_MEASUREMENT}]},
    )
    code, out, _ = run(virtee("--policy", policy))
    assert code == 0, out


def test_simulated_roots_need_a_policy_that_names_them(tmp_path: Path) -> None:
    # Fake-hardware roots stand in for the vendor's: here the real AMD Milan chain plays the
    # simulator's roots, so the same report verifies but is marked simulated.
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "sev-snp-roots.pem").write_bytes(
        (SNP / "roots" / "amd_milan_ask_ark.pem").read_bytes()
    )
    code, out, _ = run(virtee("--roots", f"simulated:{roots}"))
    assert code == 0, out
    assert json.loads(out)["simulated"] is True
    pytest.importorskip("verifier.snp.validate")
    code, out, _ = run(virtee("--roots", f"simulated:{roots}", "--policy",
                              write_policy(tmp_path, {"platform": "sev-snp"})))  # fmt: skip
    error = assert_rejected(code, out, "policy-violation")
    assert {"field": "roots", "seen": "simulated", "expected": "vendor roots"} in error[
        "mismatches"
    ]  # type: ignore[operator]
    code, out, _ = run(virtee("--roots", f"simulated:{roots}", "--policy",
                              write_policy(tmp_path, {"allow_simulated": True})))  # fmt: skip
    assert code == 0, out


def test_simulated_roots_directory_without_roots_is_usage_error(tmp_path: Path) -> None:
    code, out, err = run(virtee("--roots", f"simulated:{tmp_path}"))
    assert code == 2 and out == "" and "simulated" in err


def test_tdx_quote_with_collateral() -> None:
    pytest.importorskip("verifier.tdx.verify")
    tdx = SNP.parent / "tdx"
    code, out, _ = run(["verify", str(tdx / "dcapqvl_v4_quote_0x.hex"), "--platform", "tdx",
                        "--collateral", str(tdx / "dcapqvl_v4_collateral.json"),
                        "--at", "2025-07-01T00:00:00Z"])  # fmt: skip
    assert code == 0, out
    assert json.loads(out)["platform"] == "tdx"


def test_wrong_platform_for_evidence_is_rejected() -> None:
    code, out, _ = run(["verify", str(VIRTEE_REPORT), "--platform", "nitro", "--at", AT])
    assert code == 1
    assert json.loads(out)["error"]["type"]


# --- usage errors: exit 2, message on stderr, nothing on stdout ---------------------------


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["verify", str(VIRTEE_REPORT), "--platform", "sgx"], id="unknown-platform"),
        pytest.param(["verify", str(VIRTEE_REPORT)], id="no-platform"),
        pytest.param(["verify"], id="no-evidence"),
        pytest.param(["frobnicate"], id="unknown-command"),
        pytest.param([], id="no-command"),
        pytest.param(virtee("--bogus-flag"), id="unknown-flag"),
        pytest.param(virtee("--at", "yesterday"), id="bad-at"),
        pytest.param(virtee("--at", "2026-13-01T00:00:00Z"), id="bad-month"),
        pytest.param(virtee("--at", ""), id="empty-at"),
        pytest.param(virtee("--report-data", "xyz"), id="bad-report-data-hex"),
        pytest.param(virtee("--report-data", "00" * 65), id="report-data-too-long"),
        pytest.param(virtee(evidence="/nonexistent/evidence"), id="missing-evidence-file"),
        pytest.param(
            [
                "verify",
                str(VIRTEE_REPORT),
                "--platform",
                "sev-snp",
                "--cert",
                "/nonexistent/vcek.der",
            ],
            id="missing-cert-file",
        ),
        pytest.param(virtee("--collateral", "/nonexistent/crl.der"), id="missing-collateral"),
        pytest.param(virtee("--policy", "/nonexistent/policy.json"), id="missing-policy"),
        pytest.param(virtee("--roots", "staging"), id="bad-roots"),
        pytest.param(virtee("--roots", "simulated:/nonexistent"), id="missing-sim-roots"),
        pytest.param(virtee(evidence=SNP), id="evidence-is-directory"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv)
    captured = capsys.readouterr()  # argparse writes to the real stderr
    assert code == 2
    assert out == ""
    assert (err + captured.err).strip()


@pytest.mark.parametrize(
    "document",
    [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"allow_debug": "yes"}),
        json.dumps({"unknown_field": 1}),
        json.dumps({"platform": "sgx"}),
        json.dumps({"measurements": [{"name": "x", "value": "zz"}]}),
        '{"a":' * 5000 + "1" + "}" * 5000,  # once RecursionError out of Policy.from_json
    ],
    ids=[
        "not-json",
        "not-object",
        "wrong-type",
        "unknown-field",
        "bad-platform",
        "bad-hex",
        "nested-too-deep",
    ],
)
def test_bad_policy_file_exits_2(tmp_path: Path, document: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(document)
    code, out, err = run(gosev("--policy", str(path)))
    assert code == 2
    assert out == ""
    assert "policy" in err.lower() or err


def test_parse_rfc3339() -> None:
    assert parse_rfc3339("2026-01-01T00:00:00Z").isoformat() == "2026-01-01T00:00:00+00:00"
    assert parse_rfc3339("2026-01-01T02:00:00+02:00").utcoffset() is not None
    assert parse_rfc3339("2026-01-01t00:00:00z").year == 2026


# --- the installed entry points -----------------------------------------------------------


def test_console_script_and_module_exit_codes() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "verifier", *virtee()], check=False, capture_output=True, timeout=30
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["measurement"] == VIRTEE_MEASUREMENT
    expired = subprocess.run(
        [sys.executable, "-m", "verifier", *virtee("--at", "2031-01-01T00:00:00Z")],
        check=False,
        capture_output=True,
        timeout=30,
    )
    assert expired.returncode == 1
    assert json.loads(expired.stdout)["error"]["type"] == "expired"
    usage = subprocess.run(
        [sys.executable, "-m", "verifier", "verify", "x", "--platform", "nope"],
        check=False,
        capture_output=True,
        timeout=30,
    )
    assert usage.returncode == 2
    assert usage.stdout == b""
    assert usage.stderr


def test_nitro_document_at_its_time() -> None:
    pytest.importorskip("verifier.nitro.verify")
    code, out, _ = run(["verify", str(NITRO / "evervault_ga_doc.b64"), "--platform", "nitro",
                        "--at", "2023-09-18T15:03:30Z"])  # fmt: skip
    assert code == 0, out
    claims = json.loads(out)
    assert claims["platform"] == "nitro"
    code, out, _ = run(["verify", str(NITRO / "evervault_ga_doc.b64"), "--platform", "nitro",
                        "--at", "2026-01-01T00:00:00Z"])  # fmt: skip
    assert_rejected(code, out, "expired")
