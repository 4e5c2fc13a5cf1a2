"""The simulated platform's seal key: a fake chip secret on disk, HKDF'd with the binding.

Fake hardware, not a bypass: like a real chip, the simulated one holds a secret that never
leaves it (here: 32 random bytes in ``STATE/sim-hw/seal-secret``, mode 0600, created once)
and derives a different key for every binding, so a blob sealed under one measurement
does not unseal under another. Unlike a real chip, anyone who can read the state
directory can read the secret: this provider is for development and tests only, and its
name says so.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.sealing.errors import SealKeyUnavailable
from enclave.sealing.format import Binding

CHIP_SECRET_BYTES = 32
SEAL_SECRET_RELATIVE_PATH = Path("sim-hw") / "seal-secret"
_HKDF_SALT = b"enclave-kms/simulated-seal-key/v1"


@dataclass(frozen=True)
class SimulatedSealKeyProvider:
    """HKDF-SHA256(chip secret, salt, info = canonical binding) -> 32-byte seal key."""

    _chip_secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self._chip_secret) != CHIP_SECRET_BYTES:
            raise ValueError(f"the simulated chip secret is {CHIP_SECRET_BYTES} bytes")

    @classmethod
    def load_or_create(cls, state_dir: Path) -> SimulatedSealKeyProvider:
        """Load ``state_dir/sim-hw/seal-secret``, creating it (0600) the first time."""
        path = Path(state_dir) / SEAL_SECRET_RELATIVE_PATH
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            _create_secret_file(path)
        return cls(_read_secret_file(path))

    def derive_seal_key(self, binding: Binding) -> bytes:
        hkdf = HKDF(hashes.SHA256(), length=32, salt=_HKDF_SALT, info=binding.encode())
        return hkdf.derive(self._chip_secret)


def _create_secret_file(path: Path) -> None:
    # Write a private temporary file, then link it into place: link fails if another
    # process won the race, and a reader never sees a half-written secret.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(CHIP_SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_secret_file(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SealKeyUnavailable(f"cannot open the simulated seal secret {path}: {exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SealKeyUnavailable(f"the simulated seal secret {path} is not a regular file")
        if info.st_mode & 0o077:
            raise SealKeyUnavailable(
                f"the simulated seal secret {path} is readable by others "
                f"(mode {stat.S_IMODE(info.st_mode):o}); expected 600"
            )
        data = os.read(fd, CHIP_SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != CHIP_SECRET_BYTES:
        raise SealKeyUnavailable(
            f"the simulated seal secret {path} is {len(data)} bytes, expected {CHIP_SECRET_BYTES}"
        )
    return data
