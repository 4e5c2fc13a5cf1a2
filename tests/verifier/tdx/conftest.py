"""Shared fixtures for the TDX verifier tests: vector files, verifiers, a simulated machine."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from enclave.attestation.simulated.tdx import SimulatedTdx
from verifier.roots import TrustRoots
from verifier.verify import Verifier

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "tdx"
# PROVENANCE.md: every PCK chain here is valid 2026-01-27T14:36:27Z .. 2029-09-20T13:20:31Z.
ALL_CHAINS_VALID = datetime(2026, 6, 1, tzinfo=UTC)


def read(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="session")
def production() -> Verifier:
    return Verifier(TrustRoots.production())


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tdx-hw")


@pytest.fixture(scope="session")
def sim(sim_dir: Path) -> SimulatedTdx:
    return SimulatedTdx.load_or_create(sim_dir)


@pytest.fixture(scope="session")
def sim_verifier(sim: SimulatedTdx) -> Verifier:
    return Verifier(TrustRoots.from_pem({"tdx": sim.roots_pem()}, simulated=True, label="sim"))


@pytest.fixture
def vector() -> Callable[[str], bytes]:
    return read
