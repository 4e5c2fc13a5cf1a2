"""A file-backed MonotonicCounter: a test double standing in for the HSM counter.

Durable (temp file, fsync, rename, directory fsync) and compare-and-advance under an
exclusive flock, so it survives kill -9 like the real one survives a crash.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from enclave.storage.counter import CounterConflict


class FileCounter:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_suffix(".lock")

    def read(self) -> int:
        try:
            return int(self.path.read_text())
        except FileNotFoundError:
            return 0

    def advance(self, expected: int) -> int:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.read()
            if current != expected:
                raise CounterConflict(f"counter is at {current}, not at {expected}")
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as handle:
                handle.write(str(expected + 1))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return expected + 1

    def force(self, value: int) -> None:
        """Test only: set the value directly (a reset counter)."""
        self.path.write_text(str(value))


class CrashingCounter:
    """Wraps a counter; ``advance`` fails while ``crash`` is set, as if the process died
    between the SQLite commit and the counter advance."""

    def __init__(self, inner: FileCounter) -> None:
        self.inner = inner
        self.crash = False

    def read(self) -> int:
        return self.inner.read()

    def advance(self, expected: int) -> int:
        if self.crash:
            raise OSError("simulated crash before the counter advanced")
        return self.inner.advance(expected)
