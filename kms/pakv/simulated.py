"""The simulated K/V server workload that ``kms-sim`` releases K/V private keys to.

A real deployment names its K/V server images' launch measurements in the KMS's launch
configuration (``pakv.release_policy`` in ``launch.json``; see docs/pakv.md). ``kms-sim``
has no K/V server image, so it names this one: a fixed simulated launch identity whose
measurement is ``SHA-384("kms-sim/kv-server-workload/v1")``. A test or a demo plays the
attested K/V server by asking the sim's fake hardware (``STATE/hw``, the same fake AMD-SP
that attests the KMS) for evidence of this launch: genuine simulated evidence, verified by
the same verifier under the fake roots, and accepted only because the policy sets
``allow_simulated``. Any other measurement (``other_kv_server``) is refused with 403.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from enclave.attestation.evidence import EvidenceProvider
from enclave.attestation.launch import LaunchIdentity
from verifier.claims import Platform

SIM_KV_SERVER_NAME = "kms-sim-kv-server"
SIM_KV_SERVER = LaunchIdentity(
    measurement=hashlib.sha384(b"kms-sim/kv-server-workload/v1").digest(),
    config=b'{"workload":"kv-server"}',
)


def other_kv_server(label: str = "not-in-policy") -> LaunchIdentity:
    """A simulated K/V server launch whose measurement no kms-sim policy names."""
    return LaunchIdentity(
        measurement=hashlib.sha384(b"kms-sim/kv-server-workload/" + label.encode()).digest(),
        config=SIM_KV_SERVER.config,
    )


def release_policy_document(
    platform: Platform, launch: LaunchIdentity = SIM_KV_SERVER
) -> dict[str, Any]:
    """The ``pakv.release_policy`` kms-sim writes into ``launch.json``."""
    return {
        "description": "kms-sim: the simulated K/V server workload (kms.pakv.simulated)",
        "platform": platform,
        "allow_simulated": True,
        "allow_debug": False,
        "measurements": [{"name": SIM_KV_SERVER_NAME, "value": launch.measurement.hex()}],
    }


def kv_server_evidence_provider(
    state: Path, platform: Platform = "sev-snp", launch: LaunchIdentity = SIM_KV_SERVER
) -> EvidenceProvider:
    """Evidence of ``launch`` from the fake hardware of the kms-sim state in ``state``."""
    from enclave.attestation.providers import simulated_device

    provider: EvidenceProvider = simulated_device(platform, state / "hw").provider(launch)
    return provider
