"""`kms audit export`, `kms audit verify` and `kms report` through the real attested stack:
the in-process enclave with its attested TLS behind the host proxy, the real client and
its request tokens from the profile's credentials."""

from __future__ import annotations

import io
import json
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.attestation.providers import RUNNING_TREE
from enclave.features.kms_api import KMS_SERVICE
from kms.cli import main as kms_main
from kms.credentials import with_credentials, write_private_key
from measurements.compute import canonical_launch_config, simulated_measurement
from simulator.testing import InProcessEnclave, SimulatedLaunch
from tests.api.conftest import write_launch_config


def launch_with_admin(state: Path, admin: Ed25519PrivateKey) -> SimulatedLaunch:
    prepared = SimulatedLaunch.prepare(state)
    write_launch_config(state, admin)
    canonical = canonical_launch_config(json.loads((state / "launch.json").read_text()))
    return SimulatedLaunch(state, prepared.platform, prepared.roots_pem, canonical,
                           simulated_measurement(RUNNING_TREE, canonical))  # fmt: skip


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[InProcessEnclave, Path]]:
    admin = Ed25519PrivateKey.generate()
    launch = launch_with_admin(tmp_path / "state", admin)
    async with InProcessEnclave(launch, tmp_path / "enclave.sock") as enclave:
        assert enclave.app is not None
        admins = enclave.app[KMS_SERVICE].principal_directory.all()
        write_private_key(tmp_path / "state" / "admin.key", admin)
        profile = with_credentials(launch.profile([enclave.url]), admins[0].id, "admin.key")
        path = tmp_path / "state" / "client.toml"
        profile.write(path)
        yield enclave, path


def kms(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = kms_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue() + err.getvalue()


async def test_export_pins_the_key_and_verifies_offline(
    stack: tuple[InProcessEnclave, Path], tmp_path: Path
) -> None:
    import asyncio

    enclave, profile = stack
    log = tmp_path / "audit.log"
    code, text = await asyncio.to_thread(
        kms, "--profile", str(profile), "audit", "export", "--out", str(log)
    )
    assert code == 0, text
    assert "pinned" in text and "intact" in text
    assert "[audit]" in profile.read_text()
    assert enclave.runtime.audit.public_key.hex()  # the pinned key is the KMS's own
    code, text = kms("audit", "verify", str(log), "--profile", str(profile))
    assert code == 0 and "intact" in text and "no pinned" not in text, text
    # a second export must carry the pinned key, and does
    code, text = await asyncio.to_thread(
        kms, "--profile", str(profile), "audit", "export", "--out", str(tmp_path / "2.log")
    )
    assert code == 0 and "pinned in" not in text, text
    # one edited byte: named, exit 1
    lines = log.read_bytes().splitlines(keepends=True)
    victim = json.loads(lines[3])
    lines[3] = lines[3].replace(b'"outcome":"', b'"outcome":"X', 1)
    log.write_bytes(b"".join(lines))
    code, text = kms("audit", "verify", str(log), "--profile", str(profile))
    assert code == 1 and f"record {victim['seq']}:" in text, text


async def test_report_command_html_and_json(
    stack: tuple[InProcessEnclave, Path], tmp_path: Path
) -> None:
    import asyncio

    _, profile = stack
    # the compliance report, HTML (self-contained) and JSON
    html = tmp_path / "report.html"
    code, text = await asyncio.to_thread(
        kms, "--profile", str(profile), "report", "--format", "html",
        "--from", (datetime.now(UTC) - timedelta(days=2)).date().isoformat(), "--out", str(html),
    )  # fmt: skip
    assert code == 0, text
    page = html.read_text()
    assert "<svg" in page and "Key lifecycle" in page and "<script" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    report = tmp_path / "report.json"
    code, text = await asyncio.to_thread(
        kms, "--profile", str(profile), "report", "--format", "json", "--out", str(report)
    )
    assert code == 0, text
    assert json.loads(report.read_text())["type"] == "kms-compliance-report/v1"
    assert not stat.S_IMODE((profile.parent / "admin.key").stat().st_mode) & 0o077
