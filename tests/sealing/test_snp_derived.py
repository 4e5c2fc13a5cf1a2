"""SNP derived-key provider against the fake AMD-SP, and the real device's failure modes."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from enclave.sealing import Binding, Sealer, SealKeyUnavailable, UnsealError
from enclave.sealing.providers.fake_sev_guest import FakeSevGuestDevice, FakeSnpLaunch
from enclave.sealing.providers.snp_derived import (
    SNP_GET_DERIVED_KEY,
    DerivedKeyRequest,
    GuestField,
    LinuxSevGuestDevice,
    SnpDerivedSealKeyProvider,
)

CHIP = b"\x42" * 32
MEASUREMENT_A = hashlib.sha384(b"launch A").digest()
MEASUREMENT_B = hashlib.sha384(b"launch B").digest()


def fake_device(measurement: bytes = MEASUREMENT_A, **launch: int) -> FakeSevGuestDevice:
    return FakeSevGuestDevice(CHIP, FakeSnpLaunch(measurement, **launch))  # type: ignore[arg-type]


def test_ioctl_number_matches_uapi_header() -> None:
    # _IOWR('S', 0x1, struct snp_guest_request_ioctl) with sizeof == 32
    assert SNP_GET_DERIVED_KEY == 0xC0205301


def test_request_struct_bytes(binding: Binding) -> None:
    device = fake_device(guest_svn=2, committed_tcb=0x1100000000000003)
    request = DerivedKeyRequest(
        root_key_select=0,
        guest_field_select=GuestField.MEASUREMENT | GuestField.POLICY | GuestField.TCB_VERSION,
        vmpl=1,
        guest_svn=2,
        tcb_version=0x1100000000000003,
    )
    SnpDerivedSealKeyProvider(device, request).derive_seal_key(binding)
    expected = (
        (0).to_bytes(4, "little")  # root_key_select: VCEK
        + bytes(4)  # reserved
        + (0b101001).to_bytes(8, "little")  # POLICY | MEASUREMENT | TCB_VERSION
        + (1).to_bytes(4, "little")  # vmpl
        + (2).to_bytes(4, "little")  # guest_svn
        + bytes.fromhex("0300000000000011")  # tcb_version, little-endian
    )
    assert device.requests == [expected]
    assert DerivedKeyRequest.from_bytes(expected) == request


def test_default_request_selects_measurement_and_policy(binding: Binding) -> None:
    device = fake_device()
    SnpDerivedSealKeyProvider(device).derive_seal_key(binding)
    root, reserved, fields, vmpl, svn, tcb = struct.unpack("<IIQIIQ", device.requests[0])
    assert (root, reserved, vmpl, svn, tcb) == (0, 0, 0, 0, 0)
    assert fields == GuestField.MEASUREMENT | GuestField.POLICY


def test_round_trip_and_deterministic(binding: Binding) -> None:
    provider = SnpDerivedSealKeyProvider(fake_device())
    blob = Sealer(provider, binding).seal(b"storage key")
    # A new process on the same chip and launch derives the same key.
    assert Sealer(SnpDerivedSealKeyProvider(fake_device()), binding).unseal(blob) == b"storage key"


def test_measurement_is_mixed_in_by_the_firmware(binding: Binding) -> None:
    key_a = SnpDerivedSealKeyProvider(fake_device(MEASUREMENT_A)).derive_seal_key(binding)
    key_b = SnpDerivedSealKeyProvider(fake_device(MEASUREMENT_B)).derive_seal_key(binding)
    assert key_a != key_b
    # Even with the same binding label, another launch cannot unseal.
    blob = Sealer(SnpDerivedSealKeyProvider(fake_device(MEASUREMENT_A)), binding).seal(b"k")
    with pytest.raises(UnsealError):
        Sealer(SnpDerivedSealKeyProvider(fake_device(MEASUREMENT_B)), binding).unseal(blob)


def test_policy_and_binding_are_mixed_in(binding: Binding) -> None:
    base = SnpDerivedSealKeyProvider(fake_device()).derive_seal_key(binding)
    other_policy = SnpDerivedSealKeyProvider(fake_device(policy=0x30001)).derive_seal_key(binding)
    other_binding = Binding("sev-snp", binding.measurement, hashlib.sha256(b"cfg2").digest())
    other_config = SnpDerivedSealKeyProvider(fake_device()).derive_seal_key(other_binding)
    assert len({base, other_policy, other_config}) == 3


def test_request_without_measurement_is_refused() -> None:
    with pytest.raises(ValueError, match="MEASUREMENT"):
        SnpDerivedSealKeyProvider(
            fake_device(), DerivedKeyRequest(guest_field_select=GuestField.POLICY)
        )


@pytest.mark.parametrize(
    "request_fields",
    [
        pytest.param({"vmpl": 0}, id="vmpl-below-caller"),
        pytest.param({"vmpl": 2, "guest_svn": 5}, id="svn-above-launch"),
        pytest.param({"vmpl": 2, "tcb_version": 1}, id="tcb-above-committed"),
    ],
)
def test_fake_firmware_refuses_what_firmware_refuses(
    binding: Binding, request_fields: dict[str, int]
) -> None:
    device = fake_device(caller_vmpl=1)
    provider = SnpDerivedSealKeyProvider(device, DerivedKeyRequest(**request_fields))  # type: ignore[arg-type]
    with pytest.raises(SealKeyUnavailable, match="status 0x16"):
        provider.derive_seal_key(binding)


def test_fake_firmware_checks_reserved_bytes() -> None:
    request = bytearray(DerivedKeyRequest().to_bytes())
    request[4] = 1
    with pytest.raises(SealKeyUnavailable):
        fake_device().get_derived_key(bytes(request))
    with pytest.raises(ValueError, match="reserved"):
        DerivedKeyRequest.from_bytes(bytes(request))


def test_firmware_status_error_is_reported(binding: Binding) -> None:
    class RefusingDevice:
        def get_derived_key(self, request: bytes) -> bytes:
            return (0x16).to_bytes(4, "little") + bytes(60)

    with pytest.raises(SealKeyUnavailable, match="status 0x16"):
        Sealer(SnpDerivedSealKeyProvider(RefusingDevice()), binding)


def test_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "sev-guest"
    with pytest.raises(SealKeyUnavailable, match="does not exist: this is not an SNP guest"):
        LinuxSevGuestDevice.open(path)


def test_real_ioctl_on_a_non_sev_device_fails_clearly(binding: Binding) -> None:
    # /dev/null accepts open() but not the SNP ioctl: the real code path, a clear error.
    expected = "SNP_GET_DERIVED_KEY on /dev/null failed"
    with (
        LinuxSevGuestDevice.open(Path("/dev/null")) as device,
        pytest.raises(SealKeyUnavailable, match=expected),
    ):
        SnpDerivedSealKeyProvider(device).derive_seal_key(binding)
