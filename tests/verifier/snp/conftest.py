"""Shared fixtures for the SEV-SNP verifier tests: vectors, verifiers, a simulated machine."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave.attestation.simulated.snp import SimulatedSnp
from verifier.roots import TrustRoots
from verifier.verify import Verifier

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "sev-snp"
# Inside every VCEK window of the vectors (PROVENANCE.md: 2025-12-05 .. 2029-09-24).
VCEK_TIME = datetime(2026, 6, 1, tzinfo=UTC)
# Inside the VLEK window (2024-12-10T22:14:21Z .. 2025-12-10T22:14:21Z).
VLEK_TIME = datetime(2025, 6, 1, tzinfo=UTC)


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


@pytest.fixture(scope="session")
def production() -> Verifier:
    return Verifier(TrustRoots.production())


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim-snp-hw")


@pytest.fixture(scope="session")
def sim(sim_dir: Path) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(sim_dir)


@pytest.fixture(scope="session")
def sim_verifier(sim: SimulatedSnp) -> Verifier:
    return Verifier(TrustRoots.from_pem({"sev-snp": sim.roots_pem()}, simulated=True, label="sim"))
