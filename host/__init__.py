"""The untrusted host side: an L4 proxy that forwards bytes to the enclave and nothing more.

Everything here is outside the trust boundary: it may drop, delay or reorder bytes, and the
client's attested-TLS check catches any tampering. Nothing here imports enclave code.
"""

from host.config import EnclaveAddress, ListenAddress, ProxyConfig
from host.errors import ConfigError, EnclaveUnreachable, HostError
from host.proxy import HostProxy, ProxyStats

__all__ = [
    "ConfigError",
    "EnclaveAddress",
    "EnclaveUnreachable",
    "HostError",
    "HostProxy",
    "ListenAddress",
    "ProxyConfig",
    "ProxyStats",
]
