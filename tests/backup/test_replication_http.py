"""Cross-region replication between real in-process KMS instances, and the daily check.

The primary exports a bundle under quorum. A secondary launched from the same reviewed
code and configuration (same measurement, its own identity and state) pulls the bundle
through the untrusted path, attests, and gets the backup key; a secondary with another
measurement is refused, until the quorum adds its measurement to the references. The
daily verification job passes on the stored bundle and raises a Critical alert once the
stored bundle is altered.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from enclave.backup.errors import ReplicationRefused
from enclave.backup.shelf import ReplicaPuller
from enclave.backup.state import identity_public_key
from enclave.features.governance import http_transport
from enclave.features.monitoring import MONITORING
from kms.commands.backup import verify_offline
from simulator.testing import SimulatedLaunch
from tests.governance.harness import Keys, Kms, start_kms
from tests.hsm import support

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def shared_hsm() -> Iterator[support.SharedHsm]:
    shared = support.acquire()
    yield shared
    support.release()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(
    shared_hsm: support.SharedHsm, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Kms]]:
    template = SimulatedLaunch.prepare(tmp_path_factory.mktemp("repl-template"))
    root = tmp_path_factory.mktemp("repl")
    keys = Keys.generate()
    started: dict[str, Kms] = {}
    try:
        started["primary"] = await start_kms(template, root / "primary", shared_hsm.backend, keys)
        started["twin"] = await start_kms(template, root / "twin", shared_hsm.backend, keys)
        started["other"] = await start_kms(
            template, root / "other", shared_hsm.backend, keys, region="us-east-1"
        )
        yield started
    finally:
        for instance in started.values():
            await instance.client.close()


def puller(secondary: Kms, primary: Kms) -> ReplicaPuller:
    url = str(primary.client.make_url("")).rstrip("/")
    return ReplicaPuller(
        transport=http_transport(url),
        provider=secondary.runtime.evidence_provider,
        primary_identity_key=identity_public_key(primary.runtime),
        directory=secondary.state / "replicas",
        sealer=secondary.runtime.sealer,
    )


def releases(kms: Kms) -> list[dict[str, Any]]:
    path = kms.state / "audit" / "audit.log"
    records = [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [r for r in records if r["operation"] == "replication.release"]


async def test_measurements_decide_who_gets_the_backup_key(fleet: dict[str, Kms]) -> None:
    primary, twin, other = fleet["primary"], fleet["twin"], fleet["other"]
    assert twin.runtime.launch_identity.measurement == primary.runtime.launch_identity.measurement
    assert other.runtime.launch_identity.measurement != primary.runtime.launch_identity.measurement
    assert twin.runtime.kms_id != primary.runtime.kms_id
    key_id = await primary.new_key()
    await primary.encrypt(key_id, b"replicated")
    exported = await primary.run("backup.export")

    # The right measurement: the key is released, the bundle opens, the replica is kept.
    pulled = await puller(twin, primary).pull_once()
    assert pulled["pulled"] == exported["backup_id"] and pulled["records"] > 0
    again = puller(twin, primary)
    assert again.replica_key(exported["backup_id"]) is not None  # sealed to the twin
    assert (await again.pull_once())["pulled"] is None  # nothing new

    # Another measurement: refused, audited with the mismatch, nothing released.
    with pytest.raises(ReplicationRefused, match="403"):
        await puller(other, primary).pull_once()
    denied = [r for r in releases(primary) if r["outcome"] == "denied"]
    assert denied and denied[-1]["details"]["reason"] == "replication-measurement"
    assert puller(other, primary).replica_key(exported["backup_id"]) is None

    # The quorum adds the other region's reviewed measurement: now it is released.
    measurement = other.runtime.launch_identity.measurement.hex()
    await primary.run(
        "measurements.change", {"measurements": [{"name": "us-east-1", "value": measurement}]}
    )
    pulled = await puller(other, primary).pull_once()
    assert pulled["pulled"] == exported["backup_id"]
    allowed = [r for r in releases(primary) if r["outcome"] == "allowed"]
    assert len(allowed) == 2


async def test_daily_verification_alerts_on_a_bad_bundle(fleet: dict[str, Kms]) -> None:
    primary = fleet["primary"]
    feature = primary.feature
    jobs = {s.name for s in primary.app[MONITORING].scheduler.status()}
    assert "backup.verify" in jobs
    summary = await feature.verify_latest()
    assert summary["failed"] == 0 and feature.last_verification[0].ok
    newest = feature.shelf.latest()
    assert newest is not None
    status = await primary.ok("GET", "/v1/backup/status")
    assert status["checks"][0]["ok"] is True

    # Offline `kms backup verify` and the job both catch one flipped byte.
    identity = (await primary.ok("GET", "/v1/backup/identity"))["identity_public_key"]
    path = primary.state / "backups" / f"{newest}.bundle"
    data = bytearray(path.read_bytes())
    assert verify_offline(bytes(data), bytes.fromhex(identity))["backup_id"] == newest
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match="does NOT verify"):
        verify_offline(bytes(data), bytes.fromhex(identity))
    summary = await feature.verify_latest()
    assert summary["failed"] == 1
    alerts = primary.app[MONITORING].alerts.recent()
    assert any(a.kind == "backup-verification-failed" for a in alerts)
