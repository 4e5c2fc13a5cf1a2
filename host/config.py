"""Configuration of the untrusted host proxy: addresses and named limits, parsed and frozen.

This module owns the parsing of ``HOST:PORT`` listen addresses and ``unix:PATH``,
``vsock:CID:PORT`` and ``tcp:HOST:PORT`` enclave addresses, and the limits every
connection is held to. An object that exists is valid: construct addresses with ``parse``
and the config with ``ProxyConfig(...)``, which checks its limits. It does no I/O.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Literal

from host.errors import ConfigError

MAX_PORT = 65535
MAX_VSOCK_FIELD = 0xFFFFFFFF
UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL


def _port(text: str, what: str, *, maximum: int = MAX_PORT) -> int:
    if not text.isdigit():
        raise ConfigError(f"{what} port {text!r} is not a number")
    value = int(text)
    if value > maximum:
        raise ConfigError(f"{what} port {value} is out of range (0..{maximum})")
    return value


def _split_host_port(text: str, what: str) -> tuple[str, int]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{what} {text!r} must look like [IPV6]:PORT")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{what} {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ConfigError(f"{what} {text!r} must look like HOST:PORT (IPv6 as [ADDR]:PORT)")
    return host, _port(port_text, what)


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class ListenAddress:
    """The TCP address the proxy accepts clients on. Port 0 picks a free port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        host, port = _split_host_port(text.strip(), "listen address")
        return cls(host, port)

    def __str__(self) -> str:
        return f"{_format_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class EnclaveAddress:
    """Where the enclave listens: a unix socket, a vsock (CID, port) or a TCP address."""

    kind: Literal["unix", "vsock", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0
    cid: int = 0

    @classmethod
    def parse(cls, text: str) -> EnclaveAddress:
        scheme, sep, rest = text.strip().partition(":")
        if not sep:
            raise ConfigError(
                f"enclave address {text!r} must be unix:PATH, vsock:CID:PORT or tcp:HOST:PORT"
            )
        if scheme == "unix":
            if not rest:
                raise ConfigError("unix enclave address needs a path")
            if "\x00" in rest or len(rest.encode()) > UNIX_PATH_MAX:
                raise ConfigError(
                    f"unix socket path must be at most {UNIX_PATH_MAX} bytes without NUL"
                )
            return cls("unix", path=rest)
        if scheme == "vsock":
            cid_text, sep, port_text = rest.partition(":")
            if not sep:
                raise ConfigError(f"vsock enclave address {text!r} must be vsock:CID:PORT")
            cid = _port(cid_text, "vsock CID", maximum=MAX_VSOCK_FIELD)
            return cls("vsock", cid=cid, port=_port(port_text, "vsock", maximum=MAX_VSOCK_FIELD))
        if scheme == "tcp":
            host, port = _split_host_port(rest, "tcp enclave address")
            if port == 0:
                raise ConfigError("tcp enclave port must not be 0")
            return cls("tcp", host=host, port=port)
        raise ConfigError(f"unknown enclave address scheme {scheme!r} (unix, vsock or tcp)")

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "vsock":
            return f"vsock:{self.cid}:{self.port}"
        return f"tcp:{_format_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class ProxyConfig:
    """One proxy: where it listens, where the enclave is, and the limits it holds to.

    Connections over ``max_connections`` are closed at once, without contacting the
    enclave (no waiting room: a queue in the untrusted host would only hide overload from
    clients, who retry with back-off). Memory per connection is bounded by
    ``max_buffered_bytes_per_connection``.
    """

    listen: ListenAddress
    enclave: EnclaveAddress
    max_connections: int = 1024
    idle_timeout: float = 300.0  # no byte either way for this long: close both sides
    connect_timeout: float = 5.0  # to reach the enclave socket
    shutdown_grace: float = 10.0  # in-flight connections may finish within this on stop
    close_timeout: float = 5.0  # a closed side may flush its buffered bytes within this
    read_chunk_bytes: int = 64 * 1024  # largest single read (recv) forwarded at once
    write_high_water_bytes: int = 64 * 1024  # reading the other side pauses above this
    backlog: int = 128

    def __post_init__(self) -> None:
        if not 1 <= self.max_connections <= 1_000_000:
            raise ConfigError("max_connections must be between 1 and 1000000")
        for name in ("idle_timeout", "connect_timeout", "shutdown_grace", "close_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ConfigError(f"{name} must be a positive number of seconds")
        for name in ("read_chunk_bytes", "write_high_water_bytes"):
            if not 1024 <= getattr(self, name) <= 16 * 1024 * 1024:
                raise ConfigError(f"{name} must be between 1 KiB and 16 MiB")
        if not 1 <= self.backlog <= 65535:
            raise ConfigError("backlog must be between 1 and 65535")

    @property
    def max_buffered_bytes_per_connection(self) -> int:
        """Upper bound on the bytes the proxy holds for one connection, both directions.

        Per direction: one receive buffer of ``read_chunk_bytes``, and the transport write
        buffer, which reaches at most the high-water mark plus the one chunk whose write
        crossed it (reading from the other side pauses there until it drains).
        """
        return 2 * (2 * self.read_chunk_bytes + self.write_high_water_bytes)
