from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.testing import SimulatedLaunch
from tests.hsm import support


@pytest.fixture(scope="module")
def shared_hsm() -> Iterator[support.SharedHsm]:
    """The process's one PKCS#11 backend, borrowed for this module only (released at its
    end, so later packages may open a token of their own)."""
    shared = support.acquire()
    yield shared
    support.release()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> SimulatedLaunch:
    """Fake hardware, roots and launch.json made once; tests copy them (RSA keygen is slow)."""
    return SimulatedLaunch.prepare(tmp_path_factory.mktemp("template"))


@pytest.fixture
def state(template: SimulatedLaunch, tmp_path: Path) -> Path:
    target = tmp_path / "state"
    shutil.copytree(template.state, target)
    return target
