"""Address parsing and limits: an object that exists is valid."""

from __future__ import annotations

import pytest

from host import ConfigError, EnclaveAddress, ListenAddress, ProxyConfig

LISTEN = ListenAddress("127.0.0.1", 0)
UNIX = EnclaveAddress.parse("unix:/run/kms.sock")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/kms/enclave.sock", EnclaveAddress("unix", path="/run/kms/enclave.sock")),
        ("unix:relative.sock", EnclaveAddress("unix", path="relative.sock")),
        ("vsock:16:5000", EnclaveAddress("vsock", cid=16, port=5000)),
        ("vsock:4294967295:4294967295", EnclaveAddress("vsock", cid=2**32 - 1, port=2**32 - 1)),
        ("tcp:127.0.0.1:8443", EnclaveAddress("tcp", host="127.0.0.1", port=8443)),
        ("tcp:[::1]:8443", EnclaveAddress("tcp", host="::1", port=8443)),
        ("tcp:enclave.internal:443", EnclaveAddress("tcp", host="enclave.internal", port=443)),
    ],
    ids=["unix-abs", "unix-rel", "vsock", "vsock-max", "tcp-v4", "tcp-v6", "tcp-name"],
)
def test_enclave_addresses_parse_and_round_trip(text: str, expected: EnclaveAddress) -> None:
    parsed = EnclaveAddress.parse(text)
    assert parsed == expected
    assert EnclaveAddress.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/run/kms.sock",
        "unix:",
        "unix:" + "x" * 108,
        "unix:/a\x00b",
        "vsock:16",
        "vsock:cid:5000",
        "vsock:16:-1",
        "vsock:4294967296:1",
        "tcp:127.0.0.1",
        "tcp:127.0.0.1:0",
        "tcp:127.0.0.1:65536",
        "tcp:::1:80",
        "tcp:[nothex]:80",
        "http:127.0.0.1:80",
    ],
    ids=lambda t: repr(t)[:30],
)
def test_bad_enclave_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        EnclaveAddress.parse(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:8443", "127.0.0.1", 8443), ("0.0.0.0:0", "0.0.0.0", 0), ("[::]:443", "::", 443)],
)
def test_listen_addresses(text: str, host: str, port: int) -> None:
    assert ListenAddress.parse(text) == ListenAddress(host, port)


@pytest.mark.parametrize("text", ["8443", ":8443", "host:", "host:port", "::1:80"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError):
        ListenAddress.parse(text)


@pytest.mark.parametrize(
    "limits",
    [
        {"max_connections": 0},
        {"idle_timeout": 0},
        {"idle_timeout": float("nan")},
        {"connect_timeout": -1},
        {"shutdown_grace": float("inf")},
        {"read_chunk_bytes": 10},
        {"write_high_water_bytes": 1 << 30},
        {"backlog": 0},
    ],
    ids=lambda d: next(iter(d)),
)
def test_bad_limits_are_refused(limits: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        ProxyConfig(LISTEN, UNIX, **limits)  # type: ignore[arg-type]


def test_config_is_frozen_and_bounds_memory() -> None:
    config = ProxyConfig(LISTEN, UNIX)
    with pytest.raises(AttributeError):
        config.max_connections = 5  # type: ignore[misc]
    assert config.max_buffered_bytes_per_connection < 2 * 1024 * 1024
