"""``kms release`` against a real ``kms-sim up``: the documented flow, as a user types it.

``kms release --example-policy`` -> ``kms keys release-policy`` -> ``kms release`` (a
SIMULATED client enclave on the sim's fake hardware unwraps the key and confirms receipt)
-> the receipt in the audit log (``kms audit export``). A client workload the policy does
not name is refused (exit 5, ``release-refused``) and gets nothing. Each ``kms`` call is a
real subprocess.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave.keys.material import Ciphertext, SymmetricKey
from enclave.kms.context import canonical_context
from kms.release_client import SIM_RELEASE_CLIENT, SIM_RELEASE_CLIENT_NAME
from tests.cli.support import Sim, kms, running_sim

OTHER_MEASUREMENT = "ab" * 48
CLI_EXIT_USAGE = 1  # kms.errors.UsageError (argparse errors exit 2)
CLI_EXIT_SERVER_ERROR = 5


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    with running_sim(tmp_path_factory.mktemp("kms-release") / "state") as running:
        yield running


def kms_json(profile: Path, *args: str, stdin: bytes = b"") -> dict[str, object]:
    document = json.loads(kms(profile, *args, "--json", stdin=stdin).stdout)
    assert isinstance(document, dict)
    return document


def audit_records(sim: Sim, out: Path) -> list[dict[str, object]]:
    kms(sim.admin, "audit", "export", "--out", str(out))
    records = []
    for line in out.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if isinstance(record, dict) and "operation" in record:
                records.append(record)
    return records


@pytest.fixture(scope="module")
def releasable(sim: Sim) -> tuple[str, bytes]:
    """An encrypt key with the documented example release policy, and a ciphertext of it."""
    work = sim.state / "release-work"
    work.mkdir()
    key = kms_json(sim.admin, "keys", "create", "--purpose", "encrypt")
    key_id = str(key["id"])
    policy = work / "policy.json"
    policy.write_bytes(kms(sim.admin, "release", "--example-policy").stdout)
    document = json.loads(policy.read_text())
    assert document["allow_simulated"] is True and document["platform"] == "sev-snp"
    assert document["measurements"] == [
        {"name": SIM_RELEASE_CLIENT_NAME, "value": SIM_RELEASE_CLIENT.measurement.hex()}
    ]
    kms(sim.admin, "keys", "release-policy", key_id, "--policy", str(policy))
    ciphertext = kms(sim.admin, "encrypt", "--key", key_id, "--context", "app=release",
                     stdin=b"for the client enclave").stdout.strip()  # fmt: skip
    return key_id, ciphertext


def test_release_unwraps_locally_and_the_receipt_is_recorded(
    sim: Sim, releasable: tuple[str, bytes], tmp_path: Path
) -> None:
    key_id, ciphertext = releasable
    out = tmp_path / "released.key"
    result = kms_json(
        sim.admin, "release", "--key", key_id, "--simulated-hardware", str(sim.state),
        "--out", str(out),
    )  # fmt: skip

    assert result["simulated"] is True
    assert result["key_id"] == key_id and result["version"] == 1
    assert result["client_measurement"] == SIM_RELEASE_CLIENT.measurement.hex()
    release_id = str(result["release_id"])
    assert release_id.startswith("rel_")
    receipt = result["receipt"]
    assert isinstance(receipt, dict) and receipt["confirmed"] is True and receipt["confirmed_at"]
    assert "key_material" not in result

    # The material: only in --out, 0600; it opens what the KMS encrypted under the key.
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    material = out.read_bytes()
    assert len(material) == 32
    envelope = Ciphertext.from_bytes(base64.b64decode(ciphertext))
    opened = SymmetricKey(key_id, 1, material).decrypt(
        envelope, canonical_context({"app": "release"})
    )
    assert opened == b"for the client enclave"

    # The release and its receipt are in the KMS's audit log.
    records = audit_records(sim, tmp_path / "audit.log")
    mine = [r for r in records if isinstance(r.get("details"), dict)
            and r["details"].get("release_id") == release_id]  # type: ignore[union-attr]  # fmt: skip
    operations = [(r["operation"], r["outcome"]) for r in mine]
    assert ("keys.release", "allowed") in operations
    assert ("keys.confirm_receipt", "allowed") in operations


def test_the_hardware_directory_itself_and_text_output_never_show_the_key(
    sim: Sim, releasable: tuple[str, bytes]
) -> None:
    key_id, _ = releasable
    done = kms(sim.admin, "release", "--key", key_id, "--simulated-hardware",
               str(sim.state / "hw"))  # fmt: skip
    text = done.stdout.decode()
    assert text.startswith("SIMULATED release of " + key_id)
    assert "release_id:  rel_" in text and "receipt:     confirmed at" in text
    assert "not written" in text and "key (b64)" not in text

    shown = kms_json(sim.admin, "release", "--key", key_id, "--simulated-hardware",
                     str(sim.state), "--show-key")  # fmt: skip
    assert len(base64.b64decode(str(shown["key_material"]))) == 32


def test_a_client_the_policy_does_not_name_is_refused(
    sim: Sim, releasable: tuple[str, bytes], tmp_path: Path
) -> None:
    key_id, _ = releasable
    out = tmp_path / "never.key"
    refused = kms(
        sim.admin, "release", "--key", key_id, "--simulated-hardware", str(sim.state),
        "--measurement", OTHER_MEASUREMENT, "--out", str(out), "--json",
        expect=CLI_EXIT_SERVER_ERROR,
    )  # fmt: skip
    problem = json.loads(refused.stdout)
    assert problem["type"].endswith("release-refused"), problem
    assert problem["status"] == 403
    assert b"release-refused" in refused.stderr
    assert not out.exists()


def test_a_key_without_a_release_policy_is_refused(sim: Sim) -> None:
    other = kms_json(sim.admin, "keys", "create", "--purpose", "encrypt")
    refused = kms(
        sim.admin, "release", "--key", str(other["id"]), "--simulated-hardware", str(sim.state),
        "--json", expect=CLI_EXIT_SERVER_ERROR,
    )  # fmt: skip
    assert "release-refused" in json.loads(refused.stdout)["type"]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--simulated-hardware", "MISSING"], id="no-fake-hardware-there"),
        pytest.param(["--measurement", "abcd"], id="measurement-too-short"),
        pytest.param(["--measurement", "zz" * 48], id="measurement-not-hex"),
        pytest.param([], id="no-key"),
    ],
)
def test_usage_errors(sim: Sim, releasable: tuple[str, bytes], args: list[str]) -> None:
    key_id, _ = releasable
    base = ["--key", key_id] if args else []
    if "--simulated-hardware" not in args:
        args = [*args, "--simulated-hardware", str(sim.state)]
    args = [str(sim.state / a) if a == "MISSING" else a for a in args]
    done = kms(sim.admin, "release", *base, *args, expect=CLI_EXIT_USAGE)
    assert done.stdout == b""
    assert not (sim.state / "MISSING").exists()  # no fake hardware was made there
