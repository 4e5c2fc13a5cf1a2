"""The SEV-SNP seal key: the firmware's derived key (MSG_KEY_REQ) through /dev/sev-guest.

The AMD-SP derives a 32-byte key from a root key (VCEK or VMRK) and the guest fields the
request selects (SEV-SNP ABI spec, MSG_KEY_REQ, table "Key Request Message Structure").
This provider always selects the measurement (and by default the guest policy), so a
different launch gets a different key; it then HKDFs that key with the canonical binding,
so the configuration hash is mixed in too.

``SevGuestDevice`` is the seam: ``LinuxSevGuestDevice`` issues the SNP_GET_DERIVED_KEY
ioctl (include/uapi/linux/sev-guest.h), ``FakeSevGuestDevice``
(``enclave.sealing.providers.fake_sev_guest``) answers like firmware for tests.

Limitation (as go-sev-guest notes): the derived key is only as good as the fields
selected; a request without MEASUREMENT is not a sealing key, so it is refused here.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.sealing.errors import SealKeyUnavailable
from enclave.sealing.format import Binding

SEV_GUEST_DEVICE_PATH = Path("/dev/sev-guest")

# struct snp_derived_key_req (uapi/linux/sev-guest.h) == MSG_KEY_REQ (SNP ABI):
#   0x00 u32 root_key_select, 0x04 u32 reserved (MBZ), 0x08 u64 guest_field_select,
#   0x10 u32 vmpl, 0x14 u32 guest_svn, 0x18 u64 tcb_version
DERIVED_KEY_REQUEST_FORMAT = "<IIQIIQ"
DERIVED_KEY_REQUEST_BYTES = struct.calcsize(DERIVED_KEY_REQUEST_FORMAT)  # 32
# struct snp_derived_key_resp.data == MSG_KEY_RSP: 0x00 u32 status, 0x04..0x1f reserved,
# 0x20..0x3f derived key.
DERIVED_KEY_RESPONSE_BYTES = 64
DERIVED_KEY_OFFSET = 0x20
DERIVED_KEY_BYTES = 32

# ROOT_KEY_SELECT: bit 0 chooses the root key (0 VCEK, 1 VMRK); bits 2:1 are KEY_SEL
# (0: VLEK if installed else VCEK, 1: VCEK, 2: VLEK) in ABI 1.54+.
ROOT_KEY_VCEK = 0
ROOT_KEY_VMRK = 1
ROOT_KEY_SELECT_MASK = 0b111
MAX_VMPL = 3

_IOC_WRITE = 1
_IOC_READ = 2
SNP_GUEST_REQ_IOC_TYPE = ord("S")
SNP_GUEST_REQUEST_IOCTL_BYTES = 32  # struct snp_guest_request_ioctl
# _IOWR('S', 0x1, struct snp_guest_request_ioctl)
SNP_GET_DERIVED_KEY = (
    ((_IOC_READ | _IOC_WRITE) << 30)
    | (SNP_GUEST_REQUEST_IOCTL_BYTES << 16)
    | (SNP_GUEST_REQ_IOC_TYPE << 8)
    | 0x1
)

_HKDF_SALT = b"enclave-kms/snp-derived-seal-key/v1"


class GuestField(enum.IntFlag):
    """GUEST_FIELD_SELECT bits: which launch fields the firmware mixes into the key."""

    POLICY = 1 << 0
    IMAGE_ID = 1 << 1
    FAMILY_ID = 1 << 2
    MEASUREMENT = 1 << 3
    GUEST_SVN = 1 << 4
    TCB_VERSION = 1 << 5


GUEST_FIELD_SELECT_MASK = 0b111111


@dataclass(frozen=True)
class DerivedKeyRequest:
    """One MSG_KEY_REQ. The defaults bind the key to the measurement and the policy."""

    root_key_select: int = ROOT_KEY_VCEK
    guest_field_select: GuestField = GuestField.MEASUREMENT | GuestField.POLICY
    vmpl: int = 0
    guest_svn: int = 0
    tcb_version: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.root_key_select <= ROOT_KEY_SELECT_MASK:
            raise ValueError("root_key_select has only bits 0..2")
        if not 0 <= int(self.guest_field_select) <= GUEST_FIELD_SELECT_MASK:
            raise ValueError("guest_field_select has only bits 0..5")
        if not 0 <= self.vmpl <= MAX_VMPL:
            raise ValueError("vmpl is 0..3")
        if not 0 <= self.guest_svn < 2**32 or not 0 <= self.tcb_version < 2**64:
            raise ValueError("guest_svn is a u32 and tcb_version a u64")

    def to_bytes(self) -> bytes:
        return struct.pack(
            DERIVED_KEY_REQUEST_FORMAT,
            self.root_key_select,
            0,
            int(self.guest_field_select),
            self.vmpl,
            self.guest_svn,
            self.tcb_version,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DerivedKeyRequest:
        if len(data) != DERIVED_KEY_REQUEST_BYTES:
            raise ValueError(f"a derived-key request is {DERIVED_KEY_REQUEST_BYTES} bytes")
        root, reserved, fields, vmpl, svn, tcb = struct.unpack(DERIVED_KEY_REQUEST_FORMAT, data)
        if reserved != 0:
            raise ValueError("reserved bytes 0x04..0x07 must be zero")
        return cls(root, GuestField(fields), vmpl, svn, tcb)


class SevGuestDevice(Protocol):
    """The SNP guest-request device: a 32-byte MSG_KEY_REQ in, the 64-byte MSG_KEY_RSP out.

    Raises ``SealKeyUnavailable`` when the device is absent or the firmware refuses.
    """

    def get_derived_key(self, request: bytes) -> bytes: ...


class _SnpGuestRequestIoctl(ctypes.Structure):
    # struct snp_guest_request_ioctl: u8 msg_version; u64 req_data; u64 resp_data;
    # union { u64 exitinfo2; struct { u32 fw_error; u32 vmm_error; }; }
    _fields_ = [
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    ]


class LinuxSevGuestDevice:
    """/dev/sev-guest through ``fcntl.ioctl`` (SNP_GET_DERIVED_KEY)."""

    __slots__ = ("_fd", "_path")

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self._path = path

    @classmethod
    def open(cls, path: Path = SEV_GUEST_DEVICE_PATH) -> LinuxSevGuestDevice:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SealKeyUnavailable(
                f"the SEV-SNP guest device {path} does not exist: this is not an SNP guest, "
                "or the sev-guest driver is not loaded"
            ) from None
        except OSError as exc:
            raise SealKeyUnavailable(
                f"cannot open the SEV-SNP guest device {path}: {os.strerror(exc.errno or 0)}"
            ) from None
        return cls(fd, Path(path))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LinuxSevGuestDevice:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def get_derived_key(self, request: bytes) -> bytes:
        if len(request) != DERIVED_KEY_REQUEST_BYTES:
            raise ValueError(f"a derived-key request is {DERIVED_KEY_REQUEST_BYTES} bytes")
        if self._fd < 0:
            raise SealKeyUnavailable(f"the SEV-SNP guest device {self._path} is closed")
        req = ctypes.create_string_buffer(request, DERIVED_KEY_REQUEST_BYTES)
        resp = ctypes.create_string_buffer(DERIVED_KEY_RESPONSE_BYTES)
        guest_request = _SnpGuestRequestIoctl(
            msg_version=1,
            req_data=ctypes.addressof(req),
            resp_data=ctypes.addressof(resp),
            exitinfo2=0,
        )
        try:
            fcntl.ioctl(self._fd, SNP_GET_DERIVED_KEY, guest_request, True)
        except OSError as exc:
            fw_error = guest_request.exitinfo2 & 0xFFFFFFFF
            vmm_error = guest_request.exitinfo2 >> 32
            raise SealKeyUnavailable(
                f"SNP_GET_DERIVED_KEY on {self._path} failed: "
                f"{errno.errorcode.get(exc.errno or 0, exc.errno)} "
                f"(firmware error {fw_error:#x}, VMM error {vmm_error:#x})"
            ) from None
        answer = resp.raw
        ctypes.memset(resp, 0, DERIVED_KEY_RESPONSE_BYTES)  # best effort; Python copies anyway
        return answer


@dataclass(frozen=True)
class SnpDerivedSealKeyProvider:
    """Seal key = HKDF-SHA256(firmware derived key, info = canonical binding)."""

    device: SevGuestDevice
    request: DerivedKeyRequest = DerivedKeyRequest()

    def __post_init__(self) -> None:
        if not self.request.guest_field_select & GuestField.MEASUREMENT:
            raise ValueError(
                "a derived key that does not select MEASUREMENT is no sealing key: "
                "any other launch on this chip could derive it"
            )

    def derive_seal_key(self, binding: Binding) -> bytes:
        response = self.device.get_derived_key(self.request.to_bytes())
        if len(response) != DERIVED_KEY_RESPONSE_BYTES:
            raise SealKeyUnavailable(
                f"MSG_KEY_RSP is {len(response)} bytes, expected {DERIVED_KEY_RESPONSE_BYTES}"
            )
        (status,) = struct.unpack_from("<I", response, 0)
        if status != 0:
            raise SealKeyUnavailable(f"the firmware refused MSG_KEY_REQ: status {status:#x}")
        firmware_key = response[DERIVED_KEY_OFFSET : DERIVED_KEY_OFFSET + DERIVED_KEY_BYTES]
        hkdf = HKDF(hashes.SHA256(), length=32, salt=_HKDF_SALT, info=binding.encode())
        return hkdf.derive(firmware_key)
