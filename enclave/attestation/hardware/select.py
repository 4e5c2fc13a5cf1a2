"""Choosing the hardware evidence provider: configfs-tsm when present, else the ioctl."""

from __future__ import annotations

from pathlib import Path

from enclave.attestation.evidence import EvidenceProvider
from enclave.attestation.hardware.configfs_tsm import (
    DEFAULT_TSM_ROOT,
    ConfigfsTsm,
    TsmEvidenceProvider,
)
from enclave.attestation.hardware.ioctl import DeviceError
from enclave.attestation.hardware.nsm import NSM_DEVICE, NsmProvider
from enclave.attestation.hardware.sev_guest import SEV_GUEST_DEVICE, SevGuestProvider
from enclave.attestation.hardware.tdx_guest import TDX_GUEST_DEVICE, TdxGuestProvider
from verifier.claims import Platform


def hardware_provider(
    platform: Platform, *, tsm_root: Path = DEFAULT_TSM_ROOT, vmpl: int = 0
) -> EvidenceProvider:
    """The provider for this machine's TEE, or DeviceError naming what is missing."""
    if platform == "nitro":
        if not NSM_DEVICE.exists():
            raise DeviceError(f"{NSM_DEVICE} is missing: not inside a Nitro enclave")
        return NsmProvider()
    if tsm_root.is_dir():
        return TsmEvidenceProvider(platform, ConfigfsTsm(tsm_root), vmpl=vmpl)
    if platform == "sev-snp":
        if not SEV_GUEST_DEVICE.exists():
            raise DeviceError("neither configfs-tsm nor /dev/sev-guest is present")
        return SevGuestProvider(vmpl=vmpl)
    if not TDX_GUEST_DEVICE.exists():
        raise DeviceError("neither configfs-tsm nor /dev/tdx_guest is present")
    return TdxGuestProvider()
