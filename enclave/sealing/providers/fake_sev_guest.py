"""A fake AMD-SP answering MSG_KEY_REQ, for tests and the simulator: fake hardware.

It checks the request bytes as the firmware would (size, must-be-zero fields, known bits,
VMPL not below the caller's, SVN and TCB not above the launch's) and answers a key that is
a deterministic function of the chip secret, the root key chosen, the VMPL, the selection
mask and the value of every selected launch field. So a test can prove that the
measurement is mixed in: same chip, other measurement, other key.

It records every request it was sent, so tests can check the exact bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field

from enclave.sealing.errors import SealKeyUnavailable
from enclave.sealing.providers.snp_derived import (
    DERIVED_KEY_OFFSET,
    DERIVED_KEY_REQUEST_BYTES,
    DERIVED_KEY_REQUEST_FORMAT,
    GUEST_FIELD_SELECT_MASK,
    MAX_VMPL,
    ROOT_KEY_SELECT_MASK,
    GuestField,
)

# SEV firmware status codes (SEV-SNP ABI, "Status Codes").
SEV_STATUS_INVALID_PARAM = 0x16


@dataclass(frozen=True)
class FakeSnpLaunch:
    """The launch fields the fake firmware knows about the running guest."""

    measurement: bytes
    policy: int = 0x30000
    image_id: bytes = b"\x00" * 16
    family_id: bytes = b"\x00" * 16
    guest_svn: int = 0
    committed_tcb: int = 0
    caller_vmpl: int = 0


@dataclass
class FakeSevGuestDevice:
    chip_secret: bytes = field(repr=False)
    launch: FakeSnpLaunch
    requests: list[bytes] = field(default_factory=list)

    def get_derived_key(self, request: bytes) -> bytes:
        self.requests.append(bytes(request))
        if len(request) != DERIVED_KEY_REQUEST_BYTES:
            raise SealKeyUnavailable("fake SNP firmware: request of the wrong size")
        root, reserved, fields, vmpl, svn, tcb = struct.unpack(DERIVED_KEY_REQUEST_FORMAT, request)
        launch = self.launch
        if (
            reserved != 0
            or root & ~ROOT_KEY_SELECT_MASK
            or fields & ~GUEST_FIELD_SELECT_MASK
            or vmpl > MAX_VMPL
            or vmpl < launch.caller_vmpl
            or svn > launch.guest_svn
            or tcb > launch.committed_tcb
        ):
            raise SealKeyUnavailable(
                f"fake SNP firmware refused MSG_KEY_REQ: status {SEV_STATUS_INVALID_PARAM:#x}"
            )
        mix = [b"fake-amd-sp/derived-key/v1", struct.pack("<IIQ", root & 1, vmpl, fields)]
        selected = GuestField(fields)
        if selected & GuestField.POLICY:
            mix.append(struct.pack("<Q", launch.policy))
        if selected & GuestField.IMAGE_ID:
            mix.append(launch.image_id)
        if selected & GuestField.FAMILY_ID:
            mix.append(launch.family_id)
        if selected & GuestField.MEASUREMENT:
            mix.append(launch.measurement)
        if selected & GuestField.GUEST_SVN:
            mix.append(struct.pack("<I", svn))
        if selected & GuestField.TCB_VERSION:
            mix.append(struct.pack("<Q", tcb))
        key = hmac.new(self.chip_secret, b"".join(mix), hashlib.sha256).digest()
        return b"\x00" * DERIVED_KEY_OFFSET + key
