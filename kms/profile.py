"""The client profile (``client.toml``): where the KMS is, whom to trust, what to accept.

This module owns reading a profile (``tomllib``; unknown keys are errors, so a typo never
silently weakens a check), validating it into a frozen ``Profile``, and writing one with a
small TOML writer (the subset profiles use). A profile is self-contained: simulated roots
are inline PEM. File paths inside it are relative to the profile's directory.

Layout::

    version = 1
    platform = "sev-snp"
    endpoints = ["https://127.0.0.1:8443", "https://kms.eu-west.example:8443"]

    [trust]
    roots = "simulated"          # or "production" (the vendor roots shipped with verifier/)
    pem = '''-----BEGIN CERTIFICATE----- ...'''   # simulated only; or pem_file = "roots.pem"

    [policy]                     # verifier.policy.Policy fields; hex exactly as `kms attest`
    allow_debug = false
    host_data = "..."
    [[policy.measurements]]
    name = "kms-sim"
    value = "..."

    [verifier]                   # optional: a remote kms-verifier instead of the library
    url = "http://127.0.0.1:9000"
    jwks = '{"keys": [...]}'     # its token key, pinned

    [client]                     # optional limits (timeouts in seconds, retries)
    [credentials]                # filled by the admin onboarding (next issue)
    [audit]                      # pinned by the first `kms audit export` (attested TLS)
    public_key = "..."           # the KMS's audit checkpoint key, base64 Ed25519
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from kms.errors import ProfileError
from kms.retry import RetryPolicy
from verifier.claims import PLATFORMS, Platform
from verifier.errors import VerificationError
from verifier.policy import Policy
from verifier.roots import TrustRoots

MAX_PROFILE_BYTES = 1024 * 1024
PROFILE_VERSION = 1
RootsKind = Literal["production", "simulated"]

_TOP_LEVEL = {
    "version",
    "platform",
    "endpoints",
    "trust",
    "policy",
    "verifier",
    "client",
    "credentials",
    "audit",
}
_AUDIT_KEYS = {"public_key", "kms_id"}
_TRUST_KEYS = {"roots", "pem", "pem_file"}
_VERIFIER_KEYS = {"url", "jwks", "issuer"}
_CLIENT_KEYS = {
    "connect_timeout", "request_timeout", "max_attempts", "base_delay", "max_delay",
    "max_retry_after", "max_answer_bytes",
}  # fmt: skip


@dataclass(frozen=True)
class TrustConfig:
    kind: RootsKind
    simulated_roots_pem: bytes | None = field(default=None, repr=False)

    @property
    def simulated(self) -> bool:
        return self.kind == "simulated"

    def roots(self, platform: Platform) -> TrustRoots:
        if self.kind == "production":
            return TrustRoots.production()
        assert self.simulated_roots_pem is not None
        try:
            return TrustRoots.from_pem(
                {platform: self.simulated_roots_pem}, simulated=True, label="simulated:profile"
            )
        except (ValueError, VerificationError) as exc:
            raise ProfileError(f"the simulated roots PEM is not usable: {exc}") from None


@dataclass(frozen=True)
class RemoteVerifier:
    url: str
    jwks: Mapping[str, Any] | None = None
    issuer: str | None = None


@dataclass(frozen=True)
class ClientSettings:
    connect_timeout: float = 5.0
    request_timeout: float = 30.0
    max_answer_bytes: int = 4 * 1024 * 1024
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class Profile:
    """A validated client profile. Construct with ``load``, ``from_mapping`` or ``create``."""

    platform: Platform
    endpoints: tuple[str, ...]
    trust: TrustConfig
    policy_document: Mapping[str, Any]
    verifier: RemoteVerifier | None = None
    client: ClientSettings = field(default_factory=ClientSettings)
    credentials: Mapping[str, Any] = field(default_factory=dict)
    audit: Mapping[str, str] = field(default_factory=dict)
    directory: Path = field(default_factory=Path.cwd)
    policy: Policy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ProfileError("the profile lists no endpoints")
        for url in self.endpoints:
            _check_https_url(url)
        document = dict(self.policy_document)
        if document.get("allow_simulated") and not self.trust.simulated:
            raise ProfileError("policy.allow_simulated is only allowed with simulated roots")
        if "platform" in document and document["platform"] != self.platform:
            raise ProfileError("policy.platform differs from the profile's platform")
        # The profile decides these two: simulated evidence is accepted exactly when the
        # profile trusts simulated roots; the platform is the profile's.
        document["platform"] = self.platform
        document["allow_simulated"] = self.trust.simulated
        try:
            policy = Policy.from_mapping(document)
        except VerificationError as exc:
            raise ProfileError(f"[policy] is invalid: {exc.detail}") from None
        object.__setattr__(self, "policy", policy)

    @property
    def policy_for_verifier(self) -> dict[str, Any]:
        """The policy as sent to a remote verifier (and digested in its token)."""
        return self.policy.to_json()

    def resolve(self, relative: str | Path) -> Path:
        """A path named in the profile, relative to the profile's directory."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.directory / path

    # -- reading -------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        path = Path(path)
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_PROFILE_BYTES + 1)
        except OSError as exc:
            raise ProfileError(f"cannot read profile {path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_PROFILE_BYTES:
            raise ProfileError(f"profile {path} is larger than {MAX_PROFILE_BYTES} bytes")
        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None
        return cls.from_mapping(document, directory=path.resolve().parent)

    @classmethod
    def from_mapping(cls, document: Mapping[str, Any], *, directory: Path) -> Profile:
        _no_unknown(document, _TOP_LEVEL, "the profile")
        version = document.get("version", PROFILE_VERSION)
        if version != PROFILE_VERSION:
            raise ProfileError(f"profile version {version!r} is not supported")
        platform = document.get("platform")
        if platform not in PLATFORMS:
            raise ProfileError(f"platform must be one of {', '.join(PLATFORMS)}")
        endpoints = document.get("endpoints")
        if not isinstance(endpoints, list) or not all(isinstance(e, str) for e in endpoints):
            raise ProfileError("endpoints must be a list of https:// URLs")
        trust = _trust(_table(document, "trust"), directory)
        verifier_table = document.get("verifier")
        verifier = _verifier(verifier_table) if verifier_table else None
        return cls(
            platform=platform,
            endpoints=tuple(e.rstrip("/") for e in endpoints),
            trust=trust,
            policy_document=_table(document, "policy"),
            verifier=verifier,
            client=_client(_table(document, "client")),
            credentials=_table(document, "credentials"),
            audit=_audit(_table(document, "audit")),
            directory=directory,
        )

    # -- writing -------------------------------------------------------------------------

    def to_mapping(self) -> dict[str, Any]:
        trust: dict[str, Any] = {"roots": self.trust.kind}
        if self.trust.simulated_roots_pem is not None:
            trust["pem"] = self.trust.simulated_roots_pem.decode("ascii")
        policy = {k: v for k, v in self.policy_document.items() if k not in ("platform",)}
        policy.setdefault("allow_debug", False)
        out: dict[str, Any] = {
            "version": PROFILE_VERSION,
            "platform": self.platform,
            "endpoints": list(self.endpoints),
            "trust": trust,
            "policy": policy,
        }
        if self.verifier is not None:
            table: dict[str, Any] = {"url": self.verifier.url}
            if self.verifier.jwks is not None:
                table["jwks"] = json.dumps(self.verifier.jwks, sort_keys=True)
            if self.verifier.issuer:
                table["issuer"] = self.verifier.issuer
            out["verifier"] = table
        out["credentials"] = dict(self.credentials)
        if self.audit:
            out["audit"] = dict(self.audit)
        return out

    def dumps(self) -> str:
        header = (
            "# Enclave KMS client profile. Hex values are exactly as `kms attest` prints them;\n"
            "# paths are relative to this file's directory.\n"
        )
        return header + dumps_toml(self.to_mapping())

    def write(self, path: str | Path) -> None:
        path = Path(path)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(self.dumps(), encoding="utf-8")
        temporary.replace(path)


def _check_https_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ProfileError(f"endpoint {url!r} must be an https:// URL")
    if parts.query or parts.fragment:
        raise ProfileError(f"endpoint {url!r} must not carry a query or fragment")


def _no_unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ProfileError(f"unknown key(s) in {where}: {', '.join(unknown)}")


def _table(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name, {})
    if not isinstance(value, dict):
        raise ProfileError(f"[{name}] must be a table")
    return value


def _audit(table: Mapping[str, Any]) -> dict[str, str]:
    _no_unknown(table, _AUDIT_KEYS, "[audit]")
    if not all(isinstance(v, str) for v in table.values()):
        raise ProfileError("[audit] values must be strings")
    return dict(table)


def _trust(table: Mapping[str, Any], directory: Path) -> TrustConfig:
    _no_unknown(table, _TRUST_KEYS, "[trust]")
    kind = table.get("roots", "production")
    if kind == "production":
        if "pem" in table or "pem_file" in table:
            raise ProfileError("[trust] production roots take no pem (they ship with verifier/)")
        return TrustConfig("production")
    if kind != "simulated":
        raise ProfileError("trust.roots must be 'production' or 'simulated'")
    if "pem" in table:
        pem = table["pem"]
        if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
            raise ProfileError("trust.pem must hold PEM certificates")
        return TrustConfig("simulated", pem.encode("ascii"))
    if "pem_file" in table:
        path = Path(str(table["pem_file"]))
        path = path if path.is_absolute() else directory / path
        try:
            return TrustConfig("simulated", path.read_bytes())
        except OSError as exc:
            raise ProfileError(f"cannot read trust.pem_file {path}: {exc.strerror}") from None
    raise ProfileError("simulated roots need trust.pem (inline) or trust.pem_file")


def _verifier(table: Mapping[str, Any]) -> RemoteVerifier:
    _no_unknown(table, _VERIFIER_KEYS, "[verifier]")
    url = table.get("url")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        raise ProfileError("verifier.url must be an http(s) URL")
    jwks: Mapping[str, Any] | None = None
    if "jwks" in table:
        raw = table["jwks"]
        try:
            jwks = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (ValueError, TypeError):
            raise ProfileError("verifier.jwks must be a JWKS (JSON text or table)") from None
        if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
            raise ProfileError("verifier.jwks must be an object with a keys list")
    issuer = table.get("issuer")
    return RemoteVerifier(url.rstrip("/"), jwks, str(issuer) if issuer else None)


def _client(table: Mapping[str, Any]) -> ClientSettings:
    _no_unknown(table, _CLIENT_KEYS, "[client]")
    defaults = ClientSettings()
    retry_defaults = defaults.retry

    def number(name: str, default: float) -> float:
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ProfileError(f"client.{name} must be a non-negative number")
        return float(value)

    try:
        retry = RetryPolicy(
            max_attempts=int(number("max_attempts", retry_defaults.max_attempts)),
            base_delay=number("base_delay", retry_defaults.base_delay),
            max_delay=number("max_delay", retry_defaults.max_delay),
            max_retry_after=number("max_retry_after", retry_defaults.max_retry_after),
        )
    except ValueError as exc:
        raise ProfileError(f"[client] {exc}") from None
    return ClientSettings(
        connect_timeout=number("connect_timeout", defaults.connect_timeout) or 5.0,
        request_timeout=number("request_timeout", defaults.request_timeout) or 30.0,
        max_answer_bytes=int(number("max_answer_bytes", defaults.max_answer_bytes)),
        retry=retry,
    )


# -- a small TOML writer (strings, numbers, booleans, arrays, tables, arrays of tables) -----


def dumps_toml(document: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _write_table(lines, document, ())
    return "\n".join(lines).rstrip("\n") + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_table(v) for v in value)


def _write_table(lines: list[str], table: Mapping[str, Any], path: tuple[str, ...]) -> None:
    for key, value in table.items():
        if not _is_table(value) and not _is_table_array(value):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        if _is_table(value):
            lines.append("")
            lines.append(f"[{'.'.join(_key(k) for k in (*path, key))}]")
            _write_table(lines, value, (*path, key))
    for key, value in table.items():
        if _is_table_array(value):
            for item in value:
                lines.append("")
                lines.append(f"[[{'.'.join(_key(k) for k in (*path, key))}]]")
                _write_table(lines, item, (*path, key))


def _key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key) and key.isascii():
        return key
    return _basic_string(key)


def _basic_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if (
            "\n" in value
            and "'''" not in value
            and all(c in "\n\t" or 0x20 <= ord(c) != 0x7F for c in value)
        ):
            return "'''\n" + value + "'''"
        return _basic_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise ProfileError(f"cannot write {type(value).__name__} to TOML")
