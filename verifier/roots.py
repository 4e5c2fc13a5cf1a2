"""Trust roots: the pinned vendor roots shipped as package data, or simulated ones.

Loading roots reads files; that happens here, once, outside verification. The verification
functions take a ``TrustRoots`` value and never touch the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from verifier._internal.x509 import Certificate, load_certificates
from verifier.claims import Platform

_PRODUCTION_FILES: dict[Platform, tuple[str, ...]] = {
    "sev-snp": (
        "amd_ask_ark_milan.pem",
        "amd_ask_ark_milan_vlek.pem",
        "amd_ask_ark_genoa.pem",
        "amd_ask_ark_genoa_vlek.pem",
        "amd_ask_ark_turin_vcek.pem",
        "amd_ask_ark_turin_vlek.pem",
    ),
    "tdx": ("intel_sgx_root_ca.der", "intel_sgx_tcb_signing_chain.pem"),
    "nitro": ("aws_nitro_root_g1.pem",),
}

# File names a simulated root directory holds (written by enclave.attestation.simulated).
SIMULATED_FILES: dict[Platform, str] = {
    "sev-snp": "sev-snp-roots.pem",
    "tdx": "tdx-roots.pem",
    "nitro": "nitro-roots.pem",
}


@dataclass(frozen=True)
class PlatformRoots:
    """Anchors (self-signed roots, pinned by bytes) and known intermediates for one TEE."""

    anchors: tuple[Certificate, ...] = ()
    intermediates: tuple[Certificate, ...] = ()

    @classmethod
    def from_certificates(cls, certs: list[Certificate]) -> PlatformRoots:
        anchors: list[Certificate] = []
        intermediates: list[Certificate] = []
        seen: set[bytes] = set()
        for cert in certs:
            if cert.fingerprint in seen:
                continue
            seen.add(cert.fingerprint)
            (anchors if cert.is_self_issued() else intermediates).append(cert)
        return cls(tuple(anchors), tuple(intermediates))


@dataclass(frozen=True)
class TrustRoots:
    """The roots a verifier trusts for each platform.

    ``simulated`` marks fake-hardware roots: claims verified under them say so, and a
    policy refuses them unless it sets ``allow_simulated``.
    """

    label: str
    simulated: bool
    platforms: dict[Platform, PlatformRoots] = field(default_factory=dict)

    def for_platform(self, platform: Platform) -> PlatformRoots:
        return self.platforms.get(platform, PlatformRoots())

    @classmethod
    def production(cls) -> TrustRoots:
        package = resources.files("verifier") / "roots"
        platforms: dict[Platform, PlatformRoots] = {}
        for platform, names in _PRODUCTION_FILES.items():
            certs: list[Certificate] = []
            for name in names:
                certs.extend(load_certificates((package / name).read_bytes()))
            platforms[platform] = PlatformRoots.from_certificates(certs)
        return cls(label="production", simulated=False, platforms=platforms)

    @classmethod
    def simulated_from_directory(cls, directory: Path) -> TrustRoots:
        """Simulated roots as written by the simulator into ``directory``."""
        platforms: dict[Platform, PlatformRoots] = {}
        for platform, name in SIMULATED_FILES.items():
            path = directory / name
            if path.exists():
                platforms[platform] = PlatformRoots.from_certificates(
                    load_certificates(path.read_bytes())
                )
        return cls(label=f"simulated:{directory}", simulated=True, platforms=platforms)

    @classmethod
    def from_pem(cls, pems: dict[Platform, bytes], *, simulated: bool, label: str) -> TrustRoots:
        return cls(
            label=label,
            simulated=simulated,
            platforms={
                p: PlatformRoots.from_certificates(load_certificates(b)) for p, b in pems.items()
            },
        )
