"""Cross-region replication: only an attested secondary with the reviewed measurement
gets the backup key (simulated SEV-SNP machine, the real verifier with simulated roots)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enclave.attestation.launch import LaunchIdentity
from enclave.attestation.simulated.snp import SimulatedSnp
from enclave.backup.bundle import BackupRecord, CreatedBackup, decrypt_bundle
from enclave.backup.errors import (
    AttestationInvalid,
    ChallengeInvalid,
    MeasurementRefused,
    ReplicationRefused,
)
from enclave.backup.replication import (
    ReplicationPrimary,
    ReplicationRequest,
    ReplicationSecondary,
)
from tests.backup.conftest import Identity
from verifier.policy import Policy
from verifier.roots import TrustRoots
from verifier.verify import Verifier

GOOD = LaunchIdentity(measurement=bytes.fromhex("11" * 48), config=b'{"version":1}')
OTHER = LaunchIdentity(measurement=bytes.fromhex("22" * 48), config=b'{"version":1}')


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(Path(tmp_path_factory.mktemp("sim-snp")))


@pytest.fixture(scope="module")
def verifier(machine: SimulatedSnp) -> Verifier:
    roots = TrustRoots.from_pem({"sev-snp": machine.roots_pem()}, simulated=True, label="sim")
    return Verifier(roots)


def reference_policy(**extra: Any) -> Policy:
    return Policy.from_mapping(
        {
            "platform": "sev-snp",
            "allow_simulated": True,
            "measurements": [{"name": "kms-v1", "value": GOOD.measurement.hex()}],
            **extra,
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


class Audit:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def __call__(self, **kwargs: Any) -> None:
        self.records.append(kwargs)


@pytest.fixture
def audit() -> Audit:
    return Audit()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def primary(verifier: Verifier, audit: Audit, clock: Clock) -> ReplicationPrimary:
    return ReplicationPrimary(
        verifier=verifier,
        policy=reference_policy(),
        kms_identity="kms-primary-eu-1",
        audit=audit,
        clock=clock,
    )


async def test_secondary_with_the_right_measurement_gets_the_key(
    primary: ReplicationPrimary,
    machine: SimulatedSnp,
    created: CreatedBackup,
    identity: Identity,
    records: list[BackupRecord],
    audit: Audit,
) -> None:
    secondary = ReplicationSecondary(machine.provider(GOOD))
    request = secondary.request(primary.issue_challenge())
    # The request crosses the untrusted host as JSON.
    request = ReplicationRequest.from_dict(request.to_dict())
    release = await primary.release_backup_key(request, created.backup_key)
    key = secondary.unwrap(release)
    assert key == created.backup_key
    restored = decrypt_bundle(created.bundle, key, identity.public)
    assert len(restored) == len(records)
    assert [(r["operation"], r["outcome"]) for r in audit.records] == [
        ("replication.release", "allowed")
    ]
    assert audit.records[0]["details"]["measurement"] == GOOD.measurement.hex()


async def test_secondary_with_another_measurement_is_refused(
    primary: ReplicationPrimary, machine: SimulatedSnp, created: CreatedBackup, audit: Audit
) -> None:
    secondary = ReplicationSecondary(machine.provider(OTHER))
    request = secondary.request(primary.issue_challenge())
    with pytest.raises(MeasurementRefused) as info:
        await primary.release_backup_key(request, created.backup_key)
    assert any(m.startswith("measurement") for m in info.value.mismatches)
    assert audit.records[-1]["outcome"] == "denied"
    assert audit.records[-1]["details"]["reason"] == "replication-measurement"
    assert created.backup_key.secret.hex() not in repr(audit.records)


async def test_a_challenge_is_single_use(
    primary: ReplicationPrimary, machine: SimulatedSnp, created: CreatedBackup
) -> None:
    secondary = ReplicationSecondary(machine.provider(GOOD))
    request = secondary.request(primary.issue_challenge())
    await primary.release_backup_key(request, created.backup_key)
    with pytest.raises(ChallengeInvalid):
        await primary.release_backup_key(request, created.backup_key)


async def test_an_expired_or_unknown_challenge_is_refused(
    primary: ReplicationPrimary, machine: SimulatedSnp, created: CreatedBackup, clock: Clock
) -> None:
    secondary = ReplicationSecondary(machine.provider(GOOD))
    request = secondary.request(primary.issue_challenge())
    clock.now += timedelta(minutes=3)
    with pytest.raises(ChallengeInvalid):
        await primary.release_backup_key(request, created.backup_key)
    with pytest.raises(ChallengeInvalid):
        await primary.release_backup_key(secondary.request(b"\x07" * 32), created.backup_key)


async def test_evidence_for_another_key_is_refused(
    primary: ReplicationPrimary, machine: SimulatedSnp, created: CreatedBackup
) -> None:
    # A host relays genuine evidence but substitutes its own public key.
    genuine = ReplicationSecondary(machine.provider(GOOD)).request(primary.issue_challenge())
    attacker = ReplicationSecondary(machine.provider(GOOD))
    from dataclasses import replace

    swapped = replace(genuine, public_key=attacker.public_key)
    with pytest.raises(AttestationInvalid):
        await primary.release_backup_key(swapped, created.backup_key)


async def test_tampered_evidence_is_refused(
    primary: ReplicationPrimary, machine: SimulatedSnp, created: CreatedBackup
) -> None:
    request = ReplicationSecondary(machine.provider(GOOD)).request(primary.issue_challenge())
    evidence = bytearray(request.evidence)
    evidence[0x90] ^= 1  # the measurement field, under the VCEK signature
    from dataclasses import replace

    with pytest.raises(AttestationInvalid):
        await primary.release_backup_key(
            replace(request, evidence=bytes(evidence)), created.backup_key
        )


async def test_simulated_roots_need_a_policy_that_names_them(
    verifier: Verifier, machine: SimulatedSnp, created: CreatedBackup, audit: Audit
) -> None:
    strict = Policy.from_mapping(
        {"platform": "sev-snp", "measurements": [{"name": "v1", "value": GOOD.measurement.hex()}]}
    )
    primary = ReplicationPrimary(
        verifier=verifier, policy=strict, kms_identity="kms-primary", audit=audit
    )
    request = ReplicationSecondary(machine.provider(GOOD)).request(primary.issue_challenge())
    with pytest.raises(MeasurementRefused):
        await primary.release_backup_key(request, created.backup_key)


def test_a_policy_without_measurements_is_refused(verifier: Verifier, audit: Audit) -> None:
    with pytest.raises(ValueError):
        ReplicationPrimary(
            verifier=verifier,
            policy=Policy.from_mapping({"allow_simulated": True}),
            kms_identity="kms-primary",
            audit=audit,
        )


async def test_a_release_for_one_key_does_not_unwrap_with_another(
    primary: ReplicationPrimary, machine: SimulatedSnp, created: CreatedBackup
) -> None:
    secondary = ReplicationSecondary(machine.provider(GOOD))
    release = await primary.release_backup_key(
        secondary.request(primary.issue_challenge()), created.backup_key
    )
    with pytest.raises(ReplicationRefused):
        ReplicationSecondary(machine.provider(GOOD)).unwrap(release)
    assert created.backup_key.secret.hex() not in repr(release)
