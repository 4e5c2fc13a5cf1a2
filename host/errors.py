"""Typed errors of the host proxy, grouped by who is at fault.

``ConfigError`` is the operator's (a bad address or limit); ``EnclaveUnreachable`` is the
transport's (the enclave socket is missing, refuses, or does not answer in time). The proxy
never raises on what a client sends: it only forwards bytes, so a client can only make its
own connection close.
"""

from __future__ import annotations


class HostError(Exception):
    """Base of every error the host proxy raises."""


class ConfigError(HostError, ValueError):
    """A listen or enclave address, or a limit, is not valid."""


class EnclaveUnreachable(HostError, ConnectionError):
    """The enclave could not be connected to (missing, refused, timed out, unsupported)."""
