"""Where key bytes made in the enclave come from, and the label each version records.

``EntropySource`` reads the OS CSPRNG (getrandom(2)) and, when given an extra source (the
Nitro Secure Module's GetRandom on Nitro), mixes both through HKDF-SHA256: the output is as
unpredictable as the stronger of the two, so a weak or hostile extra source cannot make
it worse than getrandom alone. Keys generated inside the HSM record ``EntropyKind.HSM``
instead and do not pass through here.

Must never: return bytes when a source fails (it raises), or log what it returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIX_INFO = b"enclave-kms/entropy-mix/v1"
EXTRA_BYTES = 32
MAX_REQUEST_BYTES = 255 * 32  # the HKDF-SHA256 output limit


class EntropyKind(Enum):
    HSM = "hsm"
    OS_CSPRNG = "os-csprng"
    OS_CSPRNG_NSM = "os-csprng+nsm"


class ExtraEntropy(Protocol):
    """An additional randomness source, e.g. NSM GetRandom on Nitro."""

    @property
    def kind(self) -> EntropyKind:
        """The label versions record when this source is mixed in (``OS_CSPRNG_NSM``)."""
        ...

    def read(self, length: int) -> bytes: ...


def _getrandom(length: int) -> bytes:
    if hasattr(os, "getrandom"):
        return os.getrandom(length)  # blocks until the kernel CSPRNG is seeded
    return os.urandom(length)


@dataclass(frozen=True)
class EntropySource:
    """The OS CSPRNG, optionally mixed with ``extra`` through HKDF-SHA256."""

    extra: ExtraEntropy | None = None

    @property
    def kind(self) -> EntropyKind:
        return self.extra.kind if self.extra is not None else EntropyKind.OS_CSPRNG

    def random_bytes(self, length: int) -> bytes:
        if not 1 <= length <= MAX_REQUEST_BYTES:
            raise ValueError(f"length must be 1..{MAX_REQUEST_BYTES}")
        os_bytes = _getrandom(max(length, 32))
        if self.extra is None:
            return os_bytes[:length]
        extra = self.extra.read(EXTRA_BYTES)
        if len(extra) != EXTRA_BYTES:
            raise RuntimeError("extra entropy source returned a short read")
        return HKDF(hashes.SHA256(), length, salt=None, info=MIX_INFO).derive(os_bytes + extra)
