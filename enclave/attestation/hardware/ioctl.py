"""Linux ioctl request numbers (asm-generic/ioctl.h) and a device interface for tests.

A ``GuestDevice`` is what the providers talk to: the real one opens a character device
and calls ``fcntl.ioctl`` with a mutable buffer; tests pass a fake with the same method.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_WRITE, _IOC_READ = 1, 2


def iowr(kind: int, number: int, size: int) -> int:
    """_IOWR(type, nr, size)."""
    return (
        ((_IOC_READ | _IOC_WRITE) << _IOC_DIRSHIFT)
        | (kind << _IOC_TYPESHIFT)
        | (number << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


class DeviceError(Exception):
    """The device is missing or refused the request. Carries no secret."""


class GuestDevice(Protocol):
    def ioctl(self, request: int, buffer: bytearray) -> None:
        """Issue ``request`` with ``buffer`` (read and written in place)."""
        ...


class CharacterDevice:
    """A real character device (e.g. /dev/sev-guest), opened per call."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ioctl(self, request: int, buffer: bytearray) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            fcntl.ioctl(fd, request, buffer, True)
        except OSError as exc:
            raise DeviceError(f"ioctl on {self.path} failed: {exc.strerror}") from None
        finally:
            os.close(fd)
