"""Secure storage for audit lines: an append-only file, fsync'd before anything is acknowledged."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol


class AuditSink(Protocol):
    def append(self, lines: list[bytes]) -> None:
        """Append ``lines`` durably (fsync) or raise OSError."""
        ...

    def read_lines(self) -> Iterator[bytes]: ...

    def drop_torn_tail(self) -> int: ...


class FileAuditSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, lines: list[bytes]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            data = b"".join(lines)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_lines(self) -> Iterator[bytes]:
        if not self.path.exists():
            return iter(())
        with self.path.open("rb") as handle:
            return iter(handle.readlines())

    def drop_torn_tail(self) -> int:
        """Cut a last line that a crash left without its newline; return the bytes cut.

        Such a line was never acknowledged: ``append`` returns only after the whole batch,
        newlines included, is written and fsync'd.
        """
        if not self.path.exists():
            return 0
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with self.path.open("r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
        return len(data) - keep


class NullAuditSink:
    """Keeps nothing. Only for the benchmark baseline (audit writer replaced by a no-op)."""

    def append(self, lines: list[bytes]) -> None:
        return None

    def read_lines(self) -> Iterator[bytes]:
        return iter(())

    def drop_torn_tail(self) -> int:
        return 0
