"""kill -9 in the middle of a write loop: every acknowledged write is there after reopen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from enclave.storage.sqlite import SqliteStore
from tests.storage.file_counter import FileCounter

ROOT = Path(__file__).resolve().parents[2]
ACKS_BEFORE_KILL = 40
KILL_ROUNDS = 3


def _run_and_kill(db: Path, counter_path: Path, key: bytes, acks_wanted: int) -> list[int]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.writer_child", str(db), str(counter_path), key.hex()],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[int] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        for line in child.stdout:
            if line.startswith("ack "):
                acked.append(int(line.split()[1]))
                if len(acked) >= acks_wanted:
                    break
            assert time.monotonic() < deadline, "the writer is too slow"
        # Kill while the writer is mid-loop (it does not wait for us to read).
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    return acked


def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    key = os.urandom(32)
    counter_path = tmp_path / "counter"
    for round_number in range(KILL_ROUNDS):
        db = tmp_path / f"kms-{round_number}.sqlite"
        acked = _run_and_kill(
            db,
            counter_path.with_name(f"counter-{round_number}"),
            key,
            ACKS_BEFORE_KILL + 7 * round_number,
        )
        assert acked == list(range(len(acked)))
        counter = FileCounter(counter_path.with_name(f"counter-{round_number}"))
        with SqliteStore.open(db, key, counter) as store:
            for i in acked:
                record = store.get("audit", f"rec-{i:06d}")
                assert record is not None, f"acknowledged write {i} lost"
                assert record.value == f"value {i}".encode() * 20
            latest = store.get("keys", "latest")
            assert latest is not None
            # The write in flight when killed may or may not be there; nothing older is lost.
            assert int(latest.value) >= acked[-1]
            assert len(store.list("audit")) in (len(acked), len(acked) + 1)
            assert store.state_counter == counter.read()
