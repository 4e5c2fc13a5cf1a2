"""Configuration of the HSM backend, and the PIN as a value that never prints itself.

The PIN is never part of the configuration: the sealing layer unseals it and hands it to
``HsmBackend.open`` as an ``HsmPin``. ``HsmConfig`` holds only where the token is and the
named limits of the backend.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path

MASTER_KEY_LABEL = "enclave-kms/master/v1"
COUNTER_LABEL = "enclave-kms/monotonic-counter/v1"
APPLICATION = "enclave-kms"

# PKCS#11 (and softhsm2-util) bound PINs to 4..255 bytes.
PIN_MIN_LENGTH = 4
PIN_MAX_LENGTH = 255


@dataclass(frozen=True)
class HsmPin:
    """A token PIN. Compares in constant time; never appears in repr, str or errors."""

    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes):
            raise TypeError("HsmPin.value must be bytes")
        if not PIN_MIN_LENGTH <= len(self.value) <= PIN_MAX_LENGTH:
            raise ValueError(f"PIN must be {PIN_MIN_LENGTH}..{PIN_MAX_LENGTH} bytes")
        try:
            self.value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("PIN must be UTF-8 (PKCS#11 CK_UTF8CHAR)") from None

    def text(self) -> str:
        """The PIN as the UTF-8 string the PKCS#11 binding takes."""
        return self.value.decode("utf-8")

    @classmethod
    def of(cls, pin: HsmPin | str | bytes) -> HsmPin:
        if isinstance(pin, HsmPin):
            return pin
        return cls(pin.encode() if isinstance(pin, str) else bytes(pin))

    @classmethod
    def generate(cls) -> HsmPin:
        """A random PIN: 32 hex characters (128 bits) from the OS CSPRNG."""
        return cls(secrets.token_hex(16).encode())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HsmPin):
            return NotImplemented
        return hmac.compare_digest(self.value, other.value)

    def __hash__(self) -> int:
        return hash(HsmPin)  # no hash of the secret; PINs are not meant as dict keys


@dataclass(frozen=True)
class HsmConfig:
    """Where the token is, and the backend's named limits.

    ``softhsm_conf`` is set as SOFTHSM2_CONF while the library initialises (SoftHSM reads
    it in C_Initialize); ``None`` for a real HSM's library.
    """

    library_path: Path
    token_label: str
    softhsm_conf: Path | None = None
    master_key_label: str = MASTER_KEY_LABEL
    counter_label: str = COUNTER_LABEL
    kek_cache_size: int = 256
    private_key_cache_size: int = 256
    secret_key_cache_size: int = 1024
    call_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not self.token_label or len(self.token_label.encode()) > 32:
            raise ValueError("token label must be 1..32 bytes")
        for name in ("kek_cache_size", "private_key_cache_size", "secret_key_cache_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
