"""SIGKILL at every step of the bootstrap, then a restart: one consistent state, nothing twice.

Each case runs ``python -m enclave.bootstrap`` with ``KMS_BOOTSTRAP_PAUSE_AFTER=<step>`` (the
documented test seam, simulated attestation only), waits until it reports the pause, kills it
with SIGKILL, then boots the state again to completion and checks what it holds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enclave.attestation.providers import RUNNING_TREE
from enclave.bootstrap import BOOTSTRAP_STEPS, PAUSE_ENV
from tests.hsm.support import require_softhsm

TIMEOUT = 60.0


def _command(state: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "enclave.bootstrap", "--state", str(state),
            "--platform", "sev-snp", *extra]  # fmt: skip


def _boot(state: Path, *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        _command(state, *extra), capture_output=True, timeout=TIMEOUT, check=False,
        env={k: v for k, v in os.environ.items() if k != PAUSE_ENV},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return summary


def _kill_after(state: Path, step: str) -> None:
    process = subprocess.Popen(
        _command(state), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, PAUSE_ENV: step},
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline().decode().strip()
        if line != f"bootstrap paused after {step}":
            process.send_signal(signal.SIGKILL)
            pytest.fail(f"no pause after {step}: {process.stderr.read().decode()[-3000:]}")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(TIMEOUT)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert process.returncode == -signal.SIGKILL


def _check_consistent(summary: dict[str, Any]) -> None:
    assert summary["system"] == ["identity", "kek", "policy"]
    assert summary["keks"] == [summary["kek"]]  # one KEK, not one per attempt
    assert sorted(summary["identity_keys"]) == summary["system_keys"]
    assert len(summary["system_keys"]) == 3
    assert summary["keys"] == []
    assert summary["tokens"] == 1
    assert summary["kms_id"].startswith("kms_")


@pytest.fixture(autouse=True)
def _softhsm() -> None:
    require_softhsm()


@pytest.mark.parametrize("step", BOOTSTRAP_STEPS)
def test_sigkill_after_each_step_then_restart_is_consistent(state: Path, step: str) -> None:
    _kill_after(state, step)
    after = _boot(state)
    _check_consistent(after)
    # The identity is born once: in the restart unless it was committed before the kill.
    assert after["first_boot"] is (step not in ("identity", "policy"))


def test_uninterrupted_boots_are_stable_and_seal_every_secret(state: Path) -> None:
    first = _boot(state)
    _check_consistent(first)
    assert first["first_boot"] is True
    second = _boot(state)
    assert second["first_boot"] is False
    for name in ("kms_id", "kek", "identity_keys", "keks", "system_keys", "policy_sha256"):
        assert second[name] == first[name]
    assert second["counter"] > first["counter"]
    # The PIN exists only sealed: recover it as the enclave does, and look for it in clear.
    from enclave.attestation.launch import LaunchIdentity
    from enclave.attestation.providers import read_launch_config, simulated_launch_identity
    from enclave.sealing.format import Binding
    from enclave.sealing.providers.simulated import SimulatedSealKeyProvider
    from enclave.sealing.sealer import Sealer

    identity: LaunchIdentity = simulated_launch_identity(
        RUNNING_TREE, read_launch_config(state / "launch.json")
    )
    sealer = Sealer(
        SimulatedSealKeyProvider.load_or_create(state), Binding.for_launch("sev-snp", identity)
    )
    pin = sealer.unseal((state / "hsm" / "pin.sealed").read_bytes())
    storage_key = sealer.unseal((state / "storage.key.sealed").read_bytes())
    assert len(pin) >= 16 and len(storage_key) == 32
    for path in state.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert pin not in data and storage_key not in data, path


def test_changed_code_refuses_to_start_with_a_clear_message(state: Path, tmp_path: Path) -> None:
    _boot(state)
    tree = tmp_path / "tree"
    for name in ("enclave", "verifier"):
        shutil.copytree(RUNNING_TREE / name, tree / name,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    target = tree / "enclave" / "bootstrap.py"
    target.write_bytes(target.read_bytes() + b"\n# changed code\n")
    refused = subprocess.run(
        [sys.executable, "-m", "enclave.server", "serve", "--state", str(state),
         "--listen", f"unix:{tmp_path / 'e.sock'}", "--platform", "sev-snp",
         "--measure-root", str(tree)],
        capture_output=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert refused.returncode == 3
    message = refused.stderr.decode()
    assert "kms-enclave: cannot start:" in message
    assert "measurement" in message and "code changed" in message
    assert not (tmp_path / "e.sock").exists()
    assert _boot(state)["first_boot"] is False  # the original code still starts


def test_kms_sim_reset_discards_only_the_kms_state(state: Path) -> None:
    from simulator.stack import reset_kms_state

    first = _boot(state)
    reset_kms_state(state)
    assert (state / "launch.json").exists() and (state / "hw").is_dir()
    assert not (state / "kms.db").exists() and not (state / "hsm").exists()
    fresh = _boot(state)
    assert fresh["first_boot"] is True and fresh["kms_id"] != first["kms_id"]
