from __future__ import annotations

from pathlib import Path

import pytest

from enclave.hsm.config import HsmPin
from enclave.hsm.errors import HsmAuthenticationError, HsmConfigError
from enclave.hsm.token import SoftHsmToken, find_softhsm_library
from tests.hsm.support import require_softhsm


def test_find_softhsm_library_returns_a_file() -> None:
    require_softhsm()
    assert find_softhsm_library().is_file()


def test_provision_writes_own_config_and_generates_hidden_pins(tmp_path: Path) -> None:
    require_softhsm()
    prov = SoftHsmToken.provision(tmp_path, "prov-test")
    assert prov.created
    assert prov.user_pin is not None and prov.so_pin is not None
    conf = (tmp_path / "hsm" / "softhsm2.conf").read_text()
    assert f"directories.tokendir = {tmp_path.resolve() / 'hsm' / 'tokens'}" in conf
    for pin in (prov.user_pin, prov.so_pin):
        assert pin.text() not in conf
        assert pin.text() not in repr(prov)
        assert pin.text() not in repr(pin)
    assert any((tmp_path / "hsm" / "tokens").iterdir())


def test_provision_is_idempotent_and_checks_a_given_pin(tmp_path: Path) -> None:
    require_softhsm()
    first = SoftHsmToken.provision(tmp_path, "idem", user_pin="user-pin-1")
    again = SoftHsmToken.provision(tmp_path, "idem", user_pin="user-pin-1")
    assert first.created and not again.created
    assert again.user_pin == HsmPin(b"user-pin-1")
    with pytest.raises(HsmAuthenticationError) as info:
        SoftHsmToken.provision(tmp_path, "idem", user_pin="wrong-pin")
    assert "wrong-pin" not in str(info.value)


def test_provision_rejects_bad_labels(tmp_path: Path) -> None:
    with pytest.raises(HsmConfigError):
        SoftHsmToken.provision(tmp_path, "x" * 33)


def test_pin_rules() -> None:
    with pytest.raises(ValueError):
        HsmPin(b"123")
    with pytest.raises(ValueError):
        HsmPin(b"\xff\xfe\xfd\xfc")
    assert HsmPin.of("abcd") == HsmPin(b"abcd")
    assert HsmPin.generate() != HsmPin.generate()
