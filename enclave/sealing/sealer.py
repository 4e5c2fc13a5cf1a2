"""Seal and unseal bytes to the running launch with a provider's seal key.

``Sealer(provider, binding)`` asks the provider once for the 32-byte seal key of
``binding`` (the running launch: platform, measurement, configuration hash) and keeps it
only inside an ``AESGCM`` object. ``seal`` writes a ``SealedBlob`` whose header is the AAD;
``unseal`` refuses, with the one opaque ``UnsealError``, anything that is not a blob sealed
to this very binding by a key this provider derives.

A blob sealed under another measurement fails twice over: its header names another
binding (refused before decryption), and the provider derives a different key for the
running binding (so forging the header does not help).

This module never logs, and never puts key or plaintext bytes in an error or a repr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.sealing.errors import SealKeyUnavailable, UnsealError
from enclave.sealing.format import MAX_COUNTER, NONCE_BYTES, TAG_BYTES, Binding, SealedBlob

SEAL_KEY_BYTES = 32
# Headroom under MAX_SEALED_BYTES for the header, so every sealed blob can be unsealed.
MAX_PLAINTEXT_BYTES = 16 * 1024 * 1024 - 4096


class SealKeyProvider(Protocol):
    """Where a seal key comes from: platform hardware, simulated hardware or a quorum.

    The key must depend on the binding: a different measurement or configuration gives a
    different key. Raises ``SealKeyUnavailable`` when the platform cannot answer.
    """

    def derive_seal_key(self, binding: Binding) -> bytes: ...


@dataclass(frozen=True)
class Unsealed:
    """The result of a successful unseal: the plaintext and the header's counter."""

    plaintext: bytes = field(repr=False)
    counter: int
    binding: Binding


class Sealer:
    """Seals to, and unseals from, exactly one binding (the running launch)."""

    __slots__ = ("_aead", "_binding")

    def __init__(self, provider: SealKeyProvider, binding: Binding) -> None:
        key = provider.derive_seal_key(binding)
        if not isinstance(key, bytes) or len(key) != SEAL_KEY_BYTES:
            raise SealKeyUnavailable("the seal-key provider returned a key of the wrong size")
        self._aead = AESGCM(key)
        self._binding = binding

    def __repr__(self) -> str:
        return f"Sealer(binding={self._binding!r})"

    @property
    def binding(self) -> Binding:
        return self._binding

    def seal(self, plaintext: bytes, counter: int = 0) -> bytes:
        """Seal ``plaintext``; ``counter`` (the caller's version of this blob) is in the AAD.

        The nonce is random (96 bits): one seal key may seal up to 2**32 blobs, far more
        than a KMS seals in its life (it seals a few keys, not traffic).
        """
        if not isinstance(plaintext, bytes) or len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise ValueError(f"plaintext must be bytes of at most {MAX_PLAINTEXT_BYTES}")
        if type(counter) is not int or not 0 <= counter <= MAX_COUNTER:
            raise ValueError("counter must be an integer in [0, 2**64)")
        nonce = os.urandom(NONCE_BYTES)
        header = SealedBlob(self._binding, counter, nonce, b"\x00" * TAG_BYTES)
        ciphertext = self._aead.encrypt(nonce, plaintext, header.header_bytes())
        return SealedBlob(self._binding, counter, nonce, ciphertext).to_bytes()

    def unseal(self, blob: bytes) -> bytes:
        """The plaintext of ``blob``, or ``UnsealError`` (one error for every failure)."""
        return self.unseal_with_header(blob).plaintext

    def unseal_with_header(self, blob: bytes) -> Unsealed:
        """Like ``unseal``, also returning the authenticated counter and binding."""
        result = self._try_unseal(blob)
        if result is None:
            # Raised outside any ``except`` block: no cause or context is chained.
            raise UnsealError
        return result

    def _try_unseal(self, blob: bytes) -> Unsealed | None:
        try:
            parsed = SealedBlob.from_bytes(blob)
            if not _same_binding(parsed.binding, self._binding):
                return None
            plaintext = self._aead.decrypt(parsed.nonce, parsed.ciphertext, parsed.header_bytes())
        except Exception:  # every failure is the same failure to the caller
            return None
        return Unsealed(plaintext, parsed.counter, parsed.binding)


def _same_binding(a: Binding, b: Binding) -> bool:
    return constant_time.bytes_eq(a.encode(), b.encode())
