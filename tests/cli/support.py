"""Running ``kms-sim up`` and the ``kms`` command as real subprocesses, for the CLI tests."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KMS = [sys.executable, "-m", "kms.cli"]


@dataclass
class Sim:
    state: Path
    url: str

    @property
    def admin(self) -> Path:
        return self.state / "client.toml"


def read_ready(process: subprocess.Popen[str], timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if line.startswith("ready "):
                return line.strip()
            if not line and process.poll() is not None:
                break
    raise AssertionError("kms-sim did not get ready")


@contextmanager
def running_sim(state: Path) -> Iterator[Sim]:
    """``kms-sim up`` on a free loopback port, stopped with SIGTERM (SIGKILL if stuck)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator.cli", "up", "--state", str(state),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = read_ready(process)
        yield Sim(state, line.removeprefix("ready "))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def kms(
    profile: Path, *args: str, stdin: bytes = b"", expect: int | None = 0
) -> subprocess.CompletedProcess[bytes]:
    """Run ``kms --profile PROFILE ARGS``; check the exit code and the one-line failure."""
    done = subprocess.run(
        [*KMS, "--profile", str(profile), *args],
        input=stdin, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    if expect is not None:
        assert done.returncode == expect, (args, done.returncode, done.stderr.decode())
    if done.returncode != 0:
        # every failure: one line on stderr
        assert len(done.stderr.decode().strip().splitlines()) == 1, done.stderr
    return done
