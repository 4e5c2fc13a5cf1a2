"""The quorum comes from the attested launch configuration, strictly parsed."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.governance.errors import GovernanceConfigError
from enclave.governance.quorum import QuorumConfig
from tests.governance.conftest import raw_public


def test_from_launch_config_reads_threshold_and_admins(launch_config: dict[str, Any]) -> None:
    config = QuorumConfig.from_launch_config(launch_config)
    assert config.threshold == 2
    assert [a.name for a in config.admins] == ["alice", "bob", "carol"]


def test_from_canonical_json_bytes(launch_config: dict[str, Any]) -> None:
    raw = json.dumps(launch_config, sort_keys=True, separators=(",", ":")).encode()
    assert QuorumConfig.from_launch_config(raw) == QuorumConfig.from_launch_config(launch_config)


def test_keys_as_base64_strings() -> None:
    keys = [raw_public(Ed25519PrivateKey.generate()) for _ in range(2)]
    config = QuorumConfig.from_launch_config(
        {
            "quorum": {
                "threshold": 2,
                "admins": [
                    base64.b64encode(keys[0]).decode(),
                    base64.urlsafe_b64encode(keys[1]).decode().rstrip("="),
                ],
            }
        }
    )
    assert [a.public_key for a in config.admins] == keys


@pytest.mark.parametrize(
    "quorum",
    [
        pytest.param({"threshold": 1, "admins": []}, id="default-config-no-admins"),
        pytest.param({"threshold": 3, "admins": ["K0", "K1"]}, id="threshold-above-n"),
        pytest.param({"threshold": 0, "admins": ["K0"]}, id="threshold-zero"),
        pytest.param({"threshold": True, "admins": ["K0"]}, id="threshold-bool"),
        pytest.param({"threshold": 1, "admins": ["K0", "K0"]}, id="duplicate-key"),
        pytest.param({"threshold": 1, "admins": ["00" * 31]}, id="short-key"),
        pytest.param({"threshold": 1, "admins": ["K0"], "extra": 1}, id="unknown-field"),
        pytest.param({"threshold": 1, "admins": [{"public_key": "K0", "x": 1}]}, id="admin-field"),
        pytest.param({"admins": ["K0"]}, id="no-threshold"),
    ],
)
def test_bad_quorums_are_refused(quorum: dict[str, Any]) -> None:
    key = raw_public(Ed25519PrivateKey.generate()).hex()

    def fill(value: Any) -> Any:
        if value == "K0":
            return key
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    with pytest.raises(GovernanceConfigError):
        QuorumConfig.from_launch_config({"version": 1, "quorum": fill(quorum)})
