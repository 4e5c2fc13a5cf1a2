"""The claims a platform verifier emits about genuine evidence. Policy decides on them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

Platform = Literal["sev-snp", "tdx", "nitro"]
PLATFORMS: tuple[Platform, ...] = get_args(Platform)
JsonValue = str | int | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


def parse_platform(name: str) -> Platform:
    from verifier.errors import UsageError

    for platform in PLATFORMS:
        if name == platform:
            return platform
    raise UsageError(f"unknown platform {name!r}; expected one of {', '.join(PLATFORMS)}")


@dataclass(frozen=True)
class Claims:
    """Verified facts about one piece of evidence.

    ``measurement`` is SNP MEASUREMENT, TDX MRTD or Nitro PCR0; ``report_data`` the 64
    bytes the guest bound into the evidence (Nitro: ``user_data``). ``details`` holds the
    platform's own fields, already JSON-ready (hex strings, integers, booleans).
    ``simulated`` is True when the evidence chained to simulated (fake hardware) roots.
    """

    platform: Platform
    measurement: bytes
    report_data: bytes
    debug: bool
    simulated: bool = False
    details: Mapping[str, JsonValue] = field(default_factory=dict)

    def to_json(self) -> dict[str, JsonValue]:
        out: dict[str, JsonValue] = {
            "platform": self.platform,
            "measurement": self.measurement.hex(),
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "simulated": self.simulated,
        }
        for key, value in self.details.items():
            if key not in out:
                out[key] = value
        return out
