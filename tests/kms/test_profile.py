"""client.toml: written by our writer, read back by tomllib, validated strictly."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from kms.errors import ProfileError
from kms.profile import Profile, RemoteVerifier, TrustConfig, dumps_toml

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _profile(tmp_path: Path, **overrides: object) -> Profile:
    arguments: dict[str, object] = {
        "platform": "sev-snp",
        "endpoints": ("https://127.0.0.1:8443", "https://kms.eu.example:8443"),
        "trust": TrustConfig("simulated", PEM.encode()),
        "policy_document": {
            "allow_debug": False,
            "host_data": "ab" * 32,
            "measurements": [{"name": "kms-sim", "value": "cd" * 48}],
        },
        "verifier": RemoteVerifier("http://127.0.0.1:9000", {"keys": []}, "kms-verifier"),
        "directory": tmp_path,
    }
    arguments.update(overrides)
    return Profile(**arguments)  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    profile = _profile(tmp_path)
    path = tmp_path / "client.toml"
    profile.write(path)
    loaded = Profile.load(path)
    assert loaded.endpoints == profile.endpoints
    assert loaded.trust.simulated_roots_pem == PEM.encode()
    assert loaded.policy == profile.policy
    assert loaded.policy.allow_simulated is True
    assert loaded.verifier == profile.verifier
    assert "credentials" in tomllib.loads(path.read_text())
    assert "cd" * 48 in path.read_text()  # hex exactly as `kms attest` prints


def test_writer_escapes_and_nests() -> None:
    document = {
        "a": 'q"uote\\',
        "t": {"n": 1, "b": True, "l": [1, 2]},
        "arr": [{"x": "1"}, {"x": "2"}],
    }
    assert tomllib.loads(dumps_toml(document)) == document


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        ({"version": 2}, "version"),
        ({"endpoints": ["http://127.0.0.1:1"]}, "https"),
        ({"surprise": 1}, "unknown"),
        ({"trust": {"roots": "production", "pem": PEM}}, "production"),
        ({"trust": {"roots": "simulated"}}, "pem"),
        ({"policy": {"allow_simulated": True}, "trust": {"roots": "production"}}, "simulated"),
        ({"policy": {"measurements": [{"name": "x", "value": "zz"}]}}, "policy"),
        ({"client": {"max_attempts": 0}}, "max_attempts"),
    ],
)
def test_invalid_profiles_are_refused(
    tmp_path: Path, mutation: dict[str, object], message: str
) -> None:
    document = _profile(tmp_path).to_mapping() | mutation
    with pytest.raises(ProfileError, match=message):
        Profile.from_mapping(document, directory=tmp_path)


def test_pem_file_is_relative_to_the_profile(tmp_path: Path) -> None:
    (tmp_path / "roots.pem").write_text(PEM)
    document = _profile(tmp_path).to_mapping() | {
        "trust": {"roots": "simulated", "pem_file": "roots.pem"}
    }
    (tmp_path / "client.toml").write_text(dumps_toml(document))
    assert Profile.load(tmp_path / "client.toml").trust.simulated_roots_pem == PEM.encode()
