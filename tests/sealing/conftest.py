from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from enclave.attestation.launch import LaunchIdentity
from enclave.sealing import Binding
from enclave.sealing.providers.simulated import SimulatedSealKeyProvider


def make_binding(code: bytes = b"enclave code v1", config: bytes = b"config v1") -> Binding:
    launch = LaunchIdentity(hashlib.sha384(code).digest(), config)
    return Binding.for_launch("sev-snp", launch)


@pytest.fixture
def binding() -> Binding:
    return make_binding()


@pytest.fixture
def sim_provider(tmp_path: Path) -> SimulatedSealKeyProvider:
    return SimulatedSealKeyProvider.load_or_create(tmp_path / "state")
