"""The simulated measurement: deterministic, and changed by any code, root or config change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from measurements import (
    DEFAULT_LAUNCH_CONFIG,
    MEASUREMENT_BYTES,
    MeasurementError,
    canonical_launch_config,
    code_digest,
    launch_config_for,
    measured_files,
    simulated_measurement,
)
from measurements.__main__ import main as measurements_main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small self-contained tree with the shape of the real one."""
    root = tmp_path / "tree"
    (root / "enclave" / "attestation").mkdir(parents=True)
    (root / "verifier" / "roots").mkdir(parents=True)
    (root / "enclave" / "__init__.py").write_text("")
    (root / "enclave" / "attestation" / "service.py").write_text("KEY_BITS = 256\n")
    (root / "verifier" / "__init__.py").write_text("")
    (root / "verifier" / "verify.py").write_text("def verify():\n    return False\n")
    (root / "verifier" / "roots" / "ark.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (root / "verifier" / "roots" / "root.der").write_bytes(b"\x30\x82\x01\x00")
    return root


CONFIG = canonical_launch_config(DEFAULT_LAUNCH_CONFIG)


def test_measurement_is_48_bytes_and_deterministic(tree: Path) -> None:
    first = simulated_measurement(tree, CONFIG)
    assert len(first) == MEASUREMENT_BYTES
    assert simulated_measurement(tree, CONFIG) == first
    copy = shutil.copytree(tree, tree.parent / "copy")
    assert simulated_measurement(copy, CONFIG) == first  # location-independent


def test_measured_files_are_sorted_posix_paths_and_skip_non_code(tree: Path) -> None:
    (tree / "enclave" / "README.md").write_text("docs are not measured")
    (tree / "enclave" / "__pycache__").mkdir()
    (tree / "enclave" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (tree / "verifier" / "roots" / "PROVENANCE.md").write_text("not a root")
    assert measured_files(tree) == [
        "enclave/__init__.py",
        "enclave/attestation/service.py",
        "verifier/__init__.py",
        "verifier/roots/ark.pem",
        "verifier/roots/root.der",
        "verifier/verify.py",
    ]


@pytest.mark.parametrize(
    "relative",
    ["enclave/attestation/service.py", "verifier/verify.py", "verifier/roots/root.der"],
)
def test_one_byte_change_in_a_measured_file_changes_the_measurement(
    tree: Path, relative: str
) -> None:
    before = simulated_measurement(tree, CONFIG)
    digest_before = code_digest(tree)
    path = tree / relative
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    assert simulated_measurement(tree, CONFIG) != before
    assert code_digest(tree) != digest_before


def test_adding_renaming_or_removing_a_file_changes_the_measurement(tree: Path) -> None:
    before = simulated_measurement(tree, CONFIG)
    (tree / "enclave" / "extra.py").write_text("")
    added = simulated_measurement(tree, CONFIG)
    assert added != before
    (tree / "enclave" / "extra.py").rename(tree / "enclave" / "other.py")
    assert simulated_measurement(tree, CONFIG) not in (before, added)
    (tree / "enclave" / "other.py").unlink()
    assert simulated_measurement(tree, CONFIG) == before


def test_unmeasured_files_do_not_change_it(tree: Path) -> None:
    before = simulated_measurement(tree, CONFIG)
    (tree / "enclave" / "NOTES.md").write_text("x")
    (tree / "host").mkdir()
    (tree / "host" / "proxy.py").write_text("untrusted = True\n")
    assert simulated_measurement(tree, CONFIG) == before


def test_launch_config_changes_the_measurement_but_not_the_code_digest(tree: Path) -> None:
    digest = code_digest(tree)
    base = simulated_measurement(tree, CONFIG)
    for platform in ("tdx", "nitro"):
        other = canonical_launch_config(launch_config_for(platform))
        assert simulated_measurement(tree, other) != base
    config = launch_config_for("sev-snp")
    config["quorum"]["threshold"] = 2
    assert simulated_measurement(tree, canonical_launch_config(config)) != base
    assert code_digest(tree) == digest


def test_file_and_config_boundaries_are_unambiguous(tree: Path) -> None:
    # Moving bytes from the last file into the config must not collide.
    last = tree / "verifier" / "verify.py"
    content = last.read_bytes()
    before = simulated_measurement(tree, b"X" + CONFIG)
    last.write_bytes(content + b"X")
    assert simulated_measurement(tree, CONFIG) != before


def test_canonical_launch_config_is_sorted_compact_utf8() -> None:
    encoded = canonical_launch_config({"b": 1, "a": {"z": "é", "y": [1, 2]}})
    assert encoded == '{"a":{"y":[1,2],"z":"é"},"b":1}'.encode()
    assert canonical_launch_config(DEFAULT_LAUNCH_CONFIG) == (
        b'{"platform":"sev-snp","quorum":{"admins":[],"threshold":1},"version":1}'
    )


def test_default_launch_config_is_frozen() -> None:
    with pytest.raises(TypeError):
        DEFAULT_LAUNCH_CONFIG["version"] = 2  # type: ignore[index]
    copy = launch_config_for("tdx")
    copy["quorum"]["admins"].append("x")
    assert DEFAULT_LAUNCH_CONFIG["quorum"]["admins"] == ()


@pytest.mark.parametrize(
    "bad",
    [{"x": float("nan")}, {1: "int key"}, {"x": object()}, ["not", "a", "mapping"]],
    ids=["nan", "int-key", "object", "list"],
)
def test_non_json_launch_config_is_refused(bad: object) -> None:
    with pytest.raises(MeasurementError):
        canonical_launch_config(bad)  # type: ignore[arg-type]


def test_missing_tree_or_symlink_is_an_error_not_a_skip(tree: Path) -> None:
    (tree / "enclave" / "link.py").symlink_to(tree / "verifier" / "verify.py")
    with pytest.raises(MeasurementError, match="symbolic link"):
        simulated_measurement(tree, CONFIG)
    (tree / "enclave" / "link.py").unlink()
    shutil.rmtree(tree / "verifier")
    with pytest.raises(MeasurementError, match="verifier/ is missing"):
        simulated_measurement(tree, CONFIG)


def test_cli_prints_the_same_hex(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert measurements_main(["--root", str(tree)]) == 0
    assert capsys.readouterr().out.strip() == simulated_measurement(tree, CONFIG).hex()

    assert measurements_main(["--root", str(tree), "--platform", "tdx", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = simulated_measurement(tree, canonical_launch_config(launch_config_for("tdx")))
    assert out["measurement"] == expected.hex()
    assert out["code_digest"] == code_digest(tree).hex()
    assert out["files"] == 6


def test_cli_config_file_and_errors(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tree.parent / "launch.json"
    config_file.write_text('{ "version": 1, "platform": "nitro", "quorum": {"threshold": 3} }')
    assert measurements_main(["--root", str(tree), "--config", str(config_file)]) == 0
    expected = canonical_launch_config(
        {"version": 1, "platform": "nitro", "quorum": {"threshold": 3}}
    )
    assert capsys.readouterr().out.strip() == simulated_measurement(tree, expected).hex()

    config_file.write_text("[1, 2]")
    assert measurements_main(["--root", str(tree), "--config", str(config_file)]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert measurements_main(["--root", str(tree.parent / "nowhere")]) == 2


def test_the_real_tree_is_measurable() -> None:
    files = measured_files(REPO)
    assert "verifier/policy.py" in files
    assert any(f.startswith("verifier/roots/") and f.endswith(".pem") for f in files)
    assert not any(f.startswith(("host/", "tests/", "measurements/")) for f in files)
    assert len(simulated_measurement(REPO, CONFIG)) == MEASUREMENT_BYTES
