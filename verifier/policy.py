"""Appraisal policy: reference values as reviewed data, and their evaluation against claims.

A policy is parsed once (``Policy.from_json``), rejects unknown fields, and evaluates
claims at a given time. A field left unset is unchecked, except debug, which is forbidden
unless the policy allows it, and simulated roots, which are refused unless the policy names
them. Every mismatch is reported at once, naming the field, the value seen and the value
expected (go-sev-guest ``validate``). Platform fields are checked by each platform's
``validate`` module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from verifier.claims import Claims, Platform, parse_platform
from verifier.errors import InvalidPolicy, Mismatch, PolicyViolation

MAX_POLICY_BYTES = 256 * 1024


@dataclass(frozen=True)
class ReferenceMeasurement:
    name: str
    value: bytes
    expires: datetime | None = None


@dataclass(frozen=True)
class Policy:
    """What a relying party accepts. Construct with ``from_json`` or ``from_mapping``."""

    platform: Platform | None = None
    measurements: tuple[ReferenceMeasurement, ...] = ()
    allow_debug: bool = False
    allow_simulated: bool = False
    report_data: bytes | None = None
    # SEV-SNP
    min_tcb: Mapping[str, int] = field(default_factory=dict)
    host_data: bytes | None = None
    max_vmpl: int | None = None
    # TDX
    mr_config_id: bytes | None = None
    mr_owner: bytes | None = None
    min_tee_tcb_svn: bytes | None = None
    tcb_status: tuple[str, ...] = ()
    rtmrs: Mapping[int, bytes] = field(default_factory=dict)
    # Nitro
    pcrs: Mapping[int, bytes] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes | str) -> Policy:
        if len(data) > MAX_POLICY_BYTES:
            raise InvalidPolicy("policy document is too large")
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidPolicy(f"policy is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidPolicy("policy JSON is nested too deeply") from None
        return cls.from_mapping(document)

    @classmethod
    def from_mapping(cls, document: object) -> Policy:
        if not isinstance(document, dict):
            raise InvalidPolicy("policy must be a JSON object")
        known = {
            "platform", "measurements", "allow_debug", "allow_simulated", "report_data",
            "min_tcb", "host_data", "max_vmpl", "mr_config_id", "mr_owner",
            "min_tee_tcb_svn", "tcb_status", "rtmrs", "pcrs", "description",
        }  # fmt: skip
        unknown = sorted(set(document) - known)
        if unknown:
            raise InvalidPolicy(f"unknown policy field(s): {', '.join(unknown)}")
        try:
            return cls(
                platform=parse_platform(document["platform"]) if "platform" in document else None,
                measurements=tuple(_measurement(m) for m in _list(document, "measurements")),
                allow_debug=_bool(document, "allow_debug"),
                allow_simulated=_bool(document, "allow_simulated"),
                report_data=_hex_or_none(document, "report_data"),
                min_tcb=_int_map(document, "min_tcb"),
                host_data=_hex_or_none(document, "host_data"),
                max_vmpl=_int_or_none(document, "max_vmpl"),
                mr_config_id=_hex_or_none(document, "mr_config_id"),
                mr_owner=_hex_or_none(document, "mr_owner"),
                min_tee_tcb_svn=_hex_or_none(document, "min_tee_tcb_svn"),
                tcb_status=tuple(str(s) for s in _list(document, "tcb_status")),
                rtmrs=_index_hex_map(document, "rtmrs"),
                pcrs=_index_hex_map(document, "pcrs"),
            )
        except InvalidPolicy:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise InvalidPolicy(f"policy field has the wrong type: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"allow_debug": self.allow_debug}
        if self.platform:
            out["platform"] = self.platform
        if self.allow_simulated:
            out["allow_simulated"] = True
        if self.measurements:
            out["measurements"] = [
                {"name": m.name, "value": m.value.hex()}
                | ({"expires": m.expires.isoformat()} if m.expires else {})
                for m in self.measurements
            ]
        for name in ("report_data", "host_data", "mr_config_id", "mr_owner", "min_tee_tcb_svn"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.hex()
        if self.min_tcb:
            out["min_tcb"] = dict(self.min_tcb)
        if self.max_vmpl is not None:
            out["max_vmpl"] = self.max_vmpl
        if self.tcb_status:
            out["tcb_status"] = list(self.tcb_status)
        if self.rtmrs:
            out["rtmrs"] = {str(k): v.hex() for k, v in self.rtmrs.items()}
        if self.pcrs:
            out["pcrs"] = {str(k): v.hex() for k, v in self.pcrs.items()}
        return out

    def evaluate(self, claims: Claims, at: datetime) -> None:
        """Raise ``PolicyViolation`` listing every mismatch, or return when all hold."""
        mismatches = self.mismatches(claims, at)
        if mismatches:
            raise PolicyViolation(mismatches)

    def mismatches(self, claims: Claims, at: datetime) -> list[Mismatch]:
        from verifier import validators

        found: list[Mismatch] = []
        if self.platform is not None and claims.platform != self.platform:
            found.append(Mismatch("platform", claims.platform, self.platform))
        if claims.simulated and not self.allow_simulated:
            found.append(Mismatch("roots", "simulated", "vendor roots"))
        if claims.debug and not self.allow_debug:
            found.append(Mismatch("debug", "true", "false"))
        if self.measurements:
            live = [m for m in self.measurements if m.expires is None or at <= m.expires]
            if not any(m.value == claims.measurement for m in live):
                expired = [m.name for m in self.measurements if m not in live]
                expected = " or ".join(f"{m.name} ({m.value.hex()})" for m in live) or "none"
                if any(m.value == claims.measurement for m in self.measurements):
                    expected = f"{expected}; reference {', '.join(expired)} expired"
                found.append(Mismatch("measurement", claims.measurement.hex(), expected))
        if self.report_data is not None and _pad64(claims.report_data) != _pad64(self.report_data):
            found.append(
                Mismatch("report_data", claims.report_data.hex(), _pad64(self.report_data).hex())
            )
        found.extend(validators.platform_mismatches(claims, self))
        return found


def _pad64(value: bytes) -> bytes:
    return value + b"\x00" * (64 - len(value)) if len(value) < 64 else value


def _measurement(entry: object) -> ReferenceMeasurement:
    if not isinstance(entry, dict):
        raise InvalidPolicy("each measurement must be an object with name and value")
    unknown = set(entry) - {"name", "value", "expires"}
    if unknown:
        raise InvalidPolicy(f"unknown measurement field(s): {', '.join(sorted(unknown))}")
    expires = None
    if entry.get("expires") is not None:
        expires = parse_time(str(entry["expires"]))
    return ReferenceMeasurement(
        name=str(entry.get("name", "")), value=_hex(entry["value"], "measurement"), expires=expires
    )


def parse_time(text: str) -> datetime:
    from datetime import UTC

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidPolicy(f"{text!r} is not an RFC 3339 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _hex(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidPolicy(f"{name} must be a hex string")
    text = value.strip().lower().removeprefix("0x")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidPolicy(f"{name} is not valid hex") from None


def _hex_or_none(document: Mapping[str, object], key: str) -> bytes | None:
    value = document.get(key)
    return None if value is None else _hex(value, key)


def _bool(document: Mapping[str, object], key: str) -> bool:
    value = document.get(key, False)
    if not isinstance(value, bool):
        raise InvalidPolicy(f"{key} must be true or false")
    return value


def _int_or_none(document: Mapping[str, object], key: str) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidPolicy(f"{key} must be a non-negative integer")
    return value


def _list(document: Mapping[str, object], key: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise InvalidPolicy(f"{key} must be a list")
    return value


def _int_map(document: Mapping[str, object], key: str) -> dict[str, int]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise InvalidPolicy(f"{key} must be an object")
    out: dict[str, int] = {}
    for name, number in value.items():
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise InvalidPolicy(f"{key}.{name} must be a non-negative integer")
        out[str(name)] = number
    return out


def _index_hex_map(document: Mapping[str, object], key: str) -> dict[int, bytes]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise InvalidPolicy(f"{key} must be an object of index -> hex")
    out: dict[int, bytes] = {}
    for index, hexval in value.items():
        try:
            number = int(index)
        except ValueError:
            raise InvalidPolicy(f"{key} index {index!r} is not a number") from None
        out[number] = _hex(hexval, f"{key}.{index}")
    return out
