"""Choosing the evidence provider for this launch: simulated (fake hardware) or hardware.

In simulation the fake hardware is what measures the launch: this module reads the launch
configuration the host handed over (``STATE/launch.json``), canonicalises it, measures the
code tree with ``measurements.compute`` exactly as a reviewer does, and gives both to the
fake device as the ``LaunchIdentity``. Hardware providers (configfs-tsm, /dev/sev-guest,
/dev/tdx_guest, /dev/nsm; ``enclave.attestation.hardware``) measure for themselves; when
the device is missing, asking for one fails closed. This module never falls back from
hardware to simulation.
"""

from __future__ import annotations

import importlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.attestation.evidence import Evidence, EvidenceProvider, check_report_data
from enclave.attestation.launch import LaunchIdentity
from enclave.config import EnclaveConfig
from verifier.claims import Platform

MAX_LAUNCH_CONFIG_BYTES = 1024 * 1024
# The tree this enclave runs from: the directory holding the enclave/ and verifier/ packages.
RUNNING_TREE = Path(__file__).resolve().parent.parent.parent

_SIMULATED_DEVICES: dict[Platform, tuple[str, str]] = {
    "sev-snp": ("enclave.attestation.simulated.snp", "SimulatedSnp"),
    "tdx": ("enclave.attestation.simulated.tdx", "SimulatedTdx"),
    "nitro": ("enclave.attestation.simulated.nitro", "SimulatedNitro"),
}


class ProviderError(RuntimeError):
    """No evidence provider can be made for this configuration (fail closed)."""


@dataclass(frozen=True)
class Launch:
    """What was measured at launch, and the provider that attests to it."""

    # In simulation, what the fake hardware measured; on hardware, the platform measures
    # and only the evidence says what (None here).
    identity: LaunchIdentity | None
    provider: EvidenceProvider


class SerializedProvider:
    """Serialises calls into a provider: devices answer one request at a time."""

    def __init__(self, inner: EvidenceProvider) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    @property
    def platform(self) -> Platform:
        return self._inner.platform

    def evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        with self._lock:
            return self._inner.evidence(report_data)


def read_launch_config(path: Path) -> bytes:
    """The canonical bytes of the launch configuration JSON at ``path``."""
    from measurements.compute import MeasurementError, canonical_launch_config

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProviderError(f"cannot read the launch configuration {path}: {exc}") from None
    if len(raw) > MAX_LAUNCH_CONFIG_BYTES:
        raise ProviderError(f"{path} is larger than {MAX_LAUNCH_CONFIG_BYTES} bytes")
    try:
        document: Any = json.loads(raw)
        return canonical_launch_config(document)
    except (ValueError, UnicodeDecodeError, MeasurementError) as exc:
        raise ProviderError(f"{path} is not a valid launch configuration: {exc}") from None


def simulated_launch_identity(measure_root: Path, launch_config: bytes) -> LaunchIdentity:
    from measurements.compute import MeasurementError, simulated_measurement

    try:
        measurement = simulated_measurement(measure_root, launch_config)
    except (MeasurementError, OSError) as exc:
        raise ProviderError(f"cannot measure {measure_root}: {exc}") from None
    return LaunchIdentity(measurement=measurement, config=launch_config)


def simulated_device(platform: Platform, hw_dir: Path) -> Any:
    """The fake hardware for ``platform`` kept in ``hw_dir`` (made on first use)."""
    module_name, class_name = _SIMULATED_DEVICES[platform]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProviderError(f"no simulated {platform} hardware is available: {exc}") from None
    return getattr(module, class_name).load_or_create(hw_dir)


def launch(config: EnclaveConfig) -> Launch:
    """Measure (in simulation) and open the evidence provider this configuration names."""
    launch_config = read_launch_config(config.launch_config_path)
    if config.attestation == "hardware":
        from enclave.attestation.hardware.ioctl import DeviceError
        from enclave.attestation.hardware.select import hardware_provider

        try:
            device_provider = hardware_provider(config.platform)
        except (DeviceError, OSError) as exc:
            raise ProviderError(f"no {config.platform} hardware: {exc}") from None
        return Launch(identity=None, provider=SerializedProvider(device_provider))
    identity = simulated_launch_identity(config.measure_root or RUNNING_TREE, launch_config)
    device = simulated_device(config.platform, config.hardware_dir)
    provider: EvidenceProvider = device.provider(identity)
    if provider.platform != config.platform:
        raise ProviderError(f"the device attests {provider.platform}, not {config.platform}")
    return Launch(identity=identity, provider=SerializedProvider(provider))
