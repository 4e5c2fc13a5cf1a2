"""Sealed-blob format and Sealer: round trip, binding, and one opaque error for every failure."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cbor2
import pytest

from enclave.sealing import Binding, SealedBlob, Sealer, UnsealError
from enclave.sealing.errors import UNSEAL_ERROR_MESSAGE, SealKeyUnavailable
from enclave.sealing.providers.simulated import SimulatedSealKeyProvider
from tests.sealing.conftest import make_binding


def assert_opaque_unseal_failure(sealer: Sealer, blob: bytes) -> None:
    with pytest.raises(UnsealError) as info:
        sealer.unseal(blob)
    assert str(info.value) == UNSEAL_ERROR_MESSAGE
    assert info.value.args == (UNSEAL_ERROR_MESSAGE,)
    # No chained cause or context that could tell one failure from another.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_round_trip(sim_provider: SimulatedSealKeyProvider, binding: Binding) -> None:
    sealer = Sealer(sim_provider, binding)
    for plaintext in (b"", b"k", os.urandom(1000)):
        assert sealer.unseal(sealer.seal(plaintext)) == plaintext


def test_counter_is_authenticated_and_returned(
    sim_provider: SimulatedSealKeyProvider, binding: Binding
) -> None:
    sealer = Sealer(sim_provider, binding)
    unsealed = sealer.unseal_with_header(sealer.seal(b"state", counter=41))
    assert (unsealed.plaintext, unsealed.counter, unsealed.binding) == (b"state", 41, binding)


def test_blob_layout(sim_provider: SimulatedSealKeyProvider, binding: Binding) -> None:
    blob = Sealer(sim_provider, binding).seal(b"secret", counter=7)
    value = cbor2.loads(blob)
    assert set(value) == {"version", "algorithm", "binding", "counter", "nonce", "ciphertext"}
    assert value["version"] == 1 and value["algorithm"] == "AES-256-GCM"
    assert value["binding"] == {
        "platform": "sev-snp",
        "measurement": binding.measurement,
        "config_hash": binding.config_hash,
    }
    assert value["counter"] == 7 and len(value["nonce"]) == 12
    assert b"secret" not in blob
    parsed = SealedBlob.from_bytes(blob)
    header = dict(value)
    del header["ciphertext"]
    assert parsed.header_bytes() == cbor2.dumps(header, canonical=True)


def test_same_plaintext_seals_differently(
    sim_provider: SimulatedSealKeyProvider, binding: Binding
) -> None:
    sealer = Sealer(sim_provider, binding)
    assert sealer.seal(b"x") != sealer.seal(b"x")


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(make_binding(code=b"enclave code v2"), id="other-measurement"),
        pytest.param(make_binding(config=b"config v2"), id="other-config"),
        pytest.param(
            Binding("tdx", make_binding().measurement, make_binding().config_hash),
            id="other-platform",
        ),
    ],
)
def test_other_binding_cannot_unseal(
    sim_provider: SimulatedSealKeyProvider, binding: Binding, other: Binding
) -> None:
    blob = Sealer(sim_provider, binding).seal(b"master key share")
    assert_opaque_unseal_failure(Sealer(sim_provider, other), blob)


def test_forged_header_does_not_help_another_measurement(
    sim_provider: SimulatedSealKeyProvider, binding: Binding
) -> None:
    # New code (other measurement) rewrites the header to name itself: the key differs.
    other = make_binding(code=b"evil code")
    parsed = SealedBlob.from_bytes(Sealer(sim_provider, binding).seal(b"k"))
    forged = SealedBlob(other, parsed.counter, parsed.nonce, parsed.ciphertext).to_bytes()
    assert_opaque_unseal_failure(Sealer(sim_provider, other), forged)


def test_other_chip_cannot_unseal(tmp_path: Path, binding: Binding) -> None:
    chip_a = SimulatedSealKeyProvider.load_or_create(tmp_path / "a")
    chip_b = SimulatedSealKeyProvider.load_or_create(tmp_path / "b")
    assert_opaque_unseal_failure(Sealer(chip_b, binding), Sealer(chip_a, binding).seal(b"k"))


def _reencode(blob: bytes, **changes: object) -> bytes:
    value = cbor2.loads(blob)
    value.update(changes)
    return cbor2.dumps(value, canonical=True)


def _tampered_blobs(blob: bytes, other_blob: bytes) -> dict[str, bytes]:
    value = cbor2.loads(blob)
    ct = value["ciphertext"]
    cases = {
        "empty": b"",
        "one-zero-byte": b"\x00",
        "random-garbage": os.urandom(200),
        "cbor-list": cbor2.dumps([1, 2, 3]),
        "cbor-text": cbor2.dumps("hello"),
        "version-2": _reencode(blob, version=2),
        "version-0": _reencode(blob, version=0),
        "algorithm-chacha": _reencode(blob, algorithm="ChaCha20-Poly1305"),
        "counter-changed": _reencode(blob, counter=value["counter"] + 1),
        "nonce-changed": _reencode(blob, nonce=bytes(12)),
        "nonce-short": _reencode(blob, nonce=value["nonce"][:11]),
        "ciphertext-bit-flip": _reencode(blob, ciphertext=bytes([ct[0] ^ 1]) + ct[1:]),
        "tag-bit-flip": _reencode(blob, ciphertext=ct[:-1] + bytes([ct[-1] ^ 0x80])),
        "ciphertext-truncated": _reencode(blob, ciphertext=ct[:-1]),
        "ciphertext-from-other-blob": _reencode(
            blob, ciphertext=cbor2.loads(other_blob)["ciphertext"]
        ),
        "extra-field": _reencode(blob, extra=1),
        "binding-extra-field": _reencode(blob, binding={**value["binding"], "x": 1}),
        "counter-negative": _reencode(blob, counter=-1),
        "counter-as-text": _reencode(blob, counter="0"),
        "version-as-float": _reencode(blob, version=1.0),
        "not-canonical": cbor2.dumps(dict(reversed(list(value.items())))),
        "tagged": cbor2.dumps(cbor2.CBORTag(55799, value)),
        "trailing-byte": blob + b"\x00",
        "too-large": b"\xa0" + b"\x00" * (16 * 1024 * 1024 + 1),
    }
    for cut in range(len(blob)):
        cases[f"truncated-to-{cut}"] = blob[:cut]
    for position in range(len(blob)):
        flipped = bytearray(blob)
        flipped[position] ^= 0x01
        cases[f"bit-flip-at-{position}"] = bytes(flipped)
    return cases


def test_every_tamper_is_the_same_unseal_error(
    sim_provider: SimulatedSealKeyProvider, binding: Binding
) -> None:
    sealer = Sealer(sim_provider, binding)
    blob = sealer.seal(b"the storage key", counter=3)
    other_blob = sealer.seal(b"the storage kez", counter=3)
    cases = _tampered_blobs(blob, other_blob)
    assert len(cases) > 2 * len(blob)
    for name, tampered in cases.items():
        assert tampered != blob, name
        try:
            assert_opaque_unseal_failure(sealer, tampered)
        except AssertionError as exc:  # pragma: no cover - names the failing case
            raise AssertionError(f"tamper case {name!r}: {exc}") from exc
    assert sealer.unseal(blob) == b"the storage key"


def test_non_bytes_input_is_the_same_unseal_error(
    sim_provider: SimulatedSealKeyProvider, binding: Binding
) -> None:
    sealer = Sealer(sim_provider, binding)
    blob = sealer.seal(b"x")
    for value in (bytearray(blob), memoryview(blob), blob.hex(), None, 3):
        assert_opaque_unseal_failure(sealer, value)  # type: ignore[arg-type]


def test_seal_rejects_bad_arguments(
    sim_provider: SimulatedSealKeyProvider, binding: Binding
) -> None:
    sealer = Sealer(sim_provider, binding)
    with pytest.raises(ValueError):
        sealer.seal(b"x", counter=-1)
    with pytest.raises(ValueError):
        sealer.seal(b"x", counter=2**64)
    with pytest.raises(ValueError):
        sealer.seal("text")  # type: ignore[arg-type]


def test_secrets_stay_out_of_reprs(tmp_path: Path, binding: Binding) -> None:
    provider = SimulatedSealKeyProvider.load_or_create(tmp_path)
    secret = (tmp_path / "sim-hw" / "seal-secret").read_bytes()
    sealer = Sealer(provider, binding)
    unsealed = sealer.unseal_with_header(sealer.seal(b"PLAINTEXT-MARKER"))
    for text in (repr(provider), repr(sealer), repr(unsealed), str(unsealed)):
        assert secret.hex() not in text and repr(secret) not in text
        assert "PLAINTEXT-MARKER" not in text


def test_simulated_chip_secret_file(tmp_path: Path, binding: Binding) -> None:
    first = SimulatedSealKeyProvider.load_or_create(tmp_path)
    path = tmp_path / "sim-hw" / "seal-secret"
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_size == 32
    secret = path.read_bytes()
    second = SimulatedSealKeyProvider.load_or_create(tmp_path)
    assert path.read_bytes() == secret  # created once, never replaced
    assert Sealer(second, binding).unseal(Sealer(first, binding).seal(b"k")) == b"k"
    assert first.derive_seal_key(binding) != first.derive_seal_key(make_binding(code=b"v2"))


def test_simulated_chip_secret_refused_when_exposed(tmp_path: Path) -> None:
    SimulatedSealKeyProvider.load_or_create(tmp_path)
    path = tmp_path / "sim-hw" / "seal-secret"
    path.chmod(0o644)
    with pytest.raises(SealKeyUnavailable, match="readable by others"):
        SimulatedSealKeyProvider.load_or_create(tmp_path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(SealKeyUnavailable, match="5 bytes"):
        SimulatedSealKeyProvider.load_or_create(tmp_path)


def test_binding_validation() -> None:
    good = make_binding()
    with pytest.raises(ValueError):
        Binding("SEV SNP", good.measurement, good.config_hash)
    with pytest.raises(ValueError):
        Binding("sev-snp", good.measurement[:32], good.config_hash)
    with pytest.raises(ValueError):
        Binding("sev-snp", good.measurement, good.config_hash + b"\x00")
