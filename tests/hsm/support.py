"""One SoftHSM2 token and one HsmBackend per pytest process, shared by tests/hsm and tests/keys.

A process can load one SoftHSM configuration and hold one open backend, so both test
packages borrow the same backend through ``acquire``/``release`` (reference counted from
their session fixtures) instead of each opening its own.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave.hsm.backend import HsmBackend
from enclave.hsm.config import HsmPin
from enclave.hsm.errors import HsmUnavailable
from enclave.hsm.token import SoftHsmToken, TokenProvisioning, find_softhsm_library

TOKEN_LABEL = "kms-tests"


@dataclass
class SharedHsm:
    state_dir: Path
    provisioning: TokenProvisioning
    backend: HsmBackend

    @property
    def pin(self) -> HsmPin:
        assert self.provisioning.user_pin is not None
        return self.provisioning.user_pin


class _Registry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.shared: SharedHsm | None = None
        self.users = 0


_registry = _Registry()


def require_softhsm() -> Path:
    try:
        return find_softhsm_library()
    except HsmUnavailable:
        pytest.skip("SoftHSM2 is not installed (make system-deps)")


def acquire() -> SharedHsm:
    with _registry.lock:
        if _registry.shared is None:
            require_softhsm()
            state = Path(tempfile.mkdtemp(prefix="kms-hsm-tests-"))
            prov = SoftHsmToken.provision(state, TOKEN_LABEL)
            assert prov.user_pin is not None
            backend = HsmBackend.open_blocking(prov.token.config(), prov.user_pin)
            _registry.shared = SharedHsm(state, prov, backend)
        _registry.users += 1
        return _registry.shared


def release() -> None:
    with _registry.lock:
        _registry.users -= 1
        shared = _registry.shared
        if _registry.users == 0 and shared is not None:
            shared.backend.close_blocking()
            shutil.rmtree(shared.state_dir, ignore_errors=True)
            _registry.shared = None
