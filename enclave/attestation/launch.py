"""The launch identity: what the measurement and the configuration fields of evidence hold.

The measurement of a simulated launch is a SHA-384 over the enclave's code and its launch
configuration (``measurements/`` computes it for a tree). The configuration itself (admin
keys, quorum threshold, policy) reaches the enclave attested: its hash goes into SNP
HOST_DATA (SHA-256, 32 bytes), TDX MRCONFIGID (SHA-384, 48 bytes) or Nitro PCR16 (extended
once from zero with the SHA-384, as NSM ExtendPCR would).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

NITRO_CONFIG_PCR = 16


@dataclass(frozen=True)
class LaunchIdentity:
    """The measurement (48 bytes) and the canonical launch-configuration bytes."""

    measurement: bytes
    config: bytes

    def __post_init__(self) -> None:
        if len(self.measurement) != 48:
            raise ValueError("a launch measurement is 48 bytes (SHA-384)")

    @property
    def snp_host_data(self) -> bytes:
        return snp_host_data(self.config)

    @property
    def tdx_mr_config_id(self) -> bytes:
        return tdx_mr_config_id(self.config)

    @property
    def nitro_config_pcr(self) -> bytes:
        return nitro_config_pcr(self.config)


def snp_host_data(config: bytes) -> bytes:
    return hashlib.sha256(config).digest()


def tdx_mr_config_id(config: bytes) -> bytes:
    return hashlib.sha384(config).digest()


def nitro_config_pcr(config: bytes) -> bytes:
    return hashlib.sha384(b"\x00" * 48 + hashlib.sha384(config).digest()).digest()
