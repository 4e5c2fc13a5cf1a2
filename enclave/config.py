"""The enclave service's configuration: one frozen value, parsed once, with named limits.

This module owns parsing of the listen address (``unix:PATH``, ``vsock:CID:PORT``,
``tcp:HOST:PORT``) and the limits every request handler relies on. It never reads secrets
and never touches the network.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from verifier.claims import Platform, parse_platform

ListenKind = Literal["unix", "vsock", "tcp"]
AttestationMode = Literal["simulated", "hardware"]

NONCE_BYTES = 32
MAX_PORT = 65535
# VMADDR_CID_ANY (-1U): listen on every context id the enclave has.
VSOCK_CID_ANY = 0xFFFFFFFF


class ConfigError(ValueError):
    """A configuration value is malformed (a listen address, a platform, a limit)."""


@dataclass(frozen=True)
class ListenAddress:
    """Where the enclave listens. Construct with ``parse``; ``str()`` gives it back."""

    kind: ListenKind
    path: Path | None = None
    host: str | None = None
    cid: int | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        scheme, sep, rest = text.partition(":")
        if not sep or not rest:
            raise ConfigError(
                f"listen address {text!r}: expected unix:PATH, vsock:CID:PORT or tcp:HOST:PORT"
            )
        if scheme == "unix":
            return cls.unix(Path(rest))
        if scheme == "vsock":
            cid_text, sep, port_text = rest.rpartition(":")
            if not sep:
                raise ConfigError(f"listen address {text!r}: expected vsock:CID:PORT")
            cid = VSOCK_CID_ANY if cid_text in ("any", "-1") else _int(cid_text, "vsock CID", text)
            if not 0 <= cid <= VSOCK_CID_ANY:
                raise ConfigError(f"listen address {text!r}: CID out of range")
            return cls(kind="vsock", cid=cid, port=_port(port_text, text))
        if scheme == "tcp":
            host, sep, port_text = rest.rpartition(":")
            if not sep or not host:
                raise ConfigError(f"listen address {text!r}: expected tcp:HOST:PORT")
            host = host.removeprefix("[").removesuffix("]")
            return cls(kind="tcp", host=host, port=_port(port_text, text, allow_zero=True))
        raise ConfigError(f"listen address {text!r}: unknown scheme {scheme!r}")

    @classmethod
    def unix(cls, path: Path) -> ListenAddress:
        if not str(path):
            raise ConfigError("unix socket path is empty")
        # sun_path is 108 bytes on Linux, including the terminating NUL.
        if len(str(path).encode()) > 107:
            raise ConfigError(f"unix socket path {path} is longer than 107 bytes")
        return cls(kind="unix", path=path)

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "vsock":
            return f"vsock:{self.cid}:{self.port}"
        host = f"[{self.host}]" if self.host and _is_ipv6(self.host) else self.host
        return f"tcp:{host}:{self.port}"


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _int(text: str, what: str, whole: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ConfigError(f"listen address {whole!r}: {what} {text!r} is not a number") from None


def _port(text: str, whole: str, *, allow_zero: bool = False) -> int:
    port = _int(text, "port", whole)
    if not (0 if allow_zero else 1) <= port <= MAX_PORT:
        raise ConfigError(f"listen address {whole!r}: port {port} out of range")
    return port


def _optional_address(value: str | ListenAddress | None) -> ListenAddress | None:
    if value is None or isinstance(value, ListenAddress):
        return value
    return ListenAddress.parse(value)


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request or the service may consume."""

    max_request_body_bytes: int = 64 * 1024
    max_query_bytes: int = 4 * 1024
    # Evidence generation is serialised on the device; this bounds requests waiting for it.
    max_pending_evidence: int = 64
    tls_certificate_days: int = 30
    shutdown_grace_seconds: float = 5.0


@dataclass(frozen=True)
class EnclaveConfig:
    """Everything the enclave service needs to start.

    ``state_dir`` holds what the (untrusted) host gives the enclave: the launch
    configuration ``launch.json`` and, in simulation, the fake hardware under ``hw/`` and
    ``sim-hw/``. ``data_dir`` is where the KMS keeps its own sealed state (HSM token,
    sealed PIN and storage key, database, audit log; see ``enclave.server`` for the
    layout); it defaults to ``state_dir``. ``measure_root`` is, in simulation only, the tree
    the fake hardware measures at launch (default: the tree this code runs from), as a real
    platform measures the image it boots.
    """

    platform: Platform
    state_dir: Path
    listen: ListenAddress
    attestation: AttestationMode = "simulated"
    measure_root: Path | None = None
    limits: Limits = field(default_factory=Limits)
    data_dir: Path | None = None
    # The K/V key service's HTTP/2 listeners (enclave.features.pakv): h2 over the attested
    # TLS identity, and h2c (cleartext, prior knowledge). None: not served.
    pakv_h2: ListenAddress | None = None
    pakv_h2c: ListenAddress | None = None
    # UNSAFE: the K/V service serves only the publicly known K/V test key pair
    # (enclave.pakv.unsafe_test_keys), for interop tests. Simulated attestation only.
    unsafe_pakv_test_keys: bool = False

    def __post_init__(self) -> None:
        if self.unsafe_pakv_test_keys and self.attestation != "simulated":
            raise ConfigError(
                "the UNSAFE K/V test keys are publicly known: they are refused with "
                "hardware attestation (simulated only)"
            )

    @classmethod
    def create(
        cls,
        *,
        platform: str,
        state_dir: Path,
        listen: str | ListenAddress,
        attestation: str = "simulated",
        measure_root: Path | None = None,
        limits: Limits | None = None,
        data_dir: Path | None = None,
        pakv_h2: str | ListenAddress | None = None,
        pakv_h2c: str | ListenAddress | None = None,
        unsafe_pakv_test_keys: bool = False,
    ) -> EnclaveConfig:
        try:
            parsed_platform = parse_platform(platform)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except Exception as exc:  # verifier.errors.UsageError
            raise ConfigError(str(exc)) from None
        if attestation not in ("simulated", "hardware"):
            raise ConfigError(f"attestation must be simulated or hardware, not {attestation!r}")
        mode: AttestationMode = "simulated" if attestation == "simulated" else "hardware"
        address = listen if isinstance(listen, ListenAddress) else ListenAddress.parse(listen)
        return cls(
            platform=parsed_platform,
            state_dir=Path(state_dir),
            listen=address,
            attestation=mode,
            measure_root=measure_root,
            limits=limits or Limits(),
            data_dir=Path(data_dir) if data_dir is not None else None,
            pakv_h2=_optional_address(pakv_h2),
            pakv_h2c=_optional_address(pakv_h2c),
            unsafe_pakv_test_keys=unsafe_pakv_test_keys,
        )

    @property
    def launch_config_path(self) -> Path:
        return self.state_dir / "launch.json"

    @property
    def hardware_dir(self) -> Path:
        return self.state_dir / "hw"

    @property
    def kms_dir(self) -> Path:
        """Where the KMS's own sealed state lives (``data_dir``, else ``state_dir``)."""
        return self.data_dir if self.data_dir is not None else self.state_dir
