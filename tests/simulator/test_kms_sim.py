"""`kms-sim up` end to end: real processes, ready line, `kms attest`, clean stop."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from simulator.stack import reset_kms_state

BIN = Path(sys.executable).parent


def _read_ready(process: subprocess.Popen[str], timeout: float = 90.0) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if line.startswith("ready "):
                return line.strip()
            if not line and process.poll() is not None:
                break
    raise AssertionError(
        f"kms-sim did not get ready: {process.stderr.read() if process.stderr else ''}"
    )


def test_kms_sim_up_attest_and_stop(tmp_path: Path) -> None:
    state = tmp_path / "state"
    process = subprocess.Popen(
        [str(BIN / "kms-sim"), "up", "--state", str(state), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = _read_ready(process)
        assert line.startswith("ready https://127.0.0.1:")
        assert (state / "sim-roots" / "sev-snp-roots.pem").exists()
        assert (state / "launch.json").exists() and (state / "enclave.sock").exists()
        profile = (state / "client.toml").read_text()
        assert "BEGIN CERTIFICATE" in profile and line.removeprefix("ready ") in profile
        measured = subprocess.run(
            [sys.executable, "-m", "measurements", "--config", str(state / "launch.json")],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        for name in ("client.toml", "client-remote.toml"):
            attest = subprocess.run(
                [str(BIN / "kms"), "--profile", str(state / name), "attest", "--json"],
                check=False, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert attest.returncode == 0, attest.stderr
            assert json.loads(attest.stdout)["measurement"] == measured
        assert "attested TLS ready" in (state / "enclave.log").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0
    assert not (state / "enclave.sock").exists()
    # the children are gone: nothing listens on the enclave socket and no process remains
    out = subprocess.run(
        ["ps", "-eo", "pid,args"], check=False, capture_output=True, text=True
    ).stdout
    assert str(state) not in out.replace(f" {os.getpid()} ", "")
    # `kms-sim up --reset` (after a code change nothing sealed to the old launch opens):
    # nothing sealed or bound to the old HSM token may remain, the fake hardware must.
    reset_kms_state(state)
    left = sorted(
        str(p.relative_to(state)) for p in state.rglob("*")
        if p.is_file() and (p.name.endswith(".sealed") or p.name.startswith("kms.db"))
        and p.relative_to(state).parts[0] != "backups"
    )  # fmt: skip
    assert left == []
    assert not (state / "hsm").exists() and not (state / "audit").exists()
    assert (state / "hw").is_dir() and (state / "sim-hw").is_dir()
