"""SEV-SNP reports through the /dev/sev-guest ioctl (the fallback when configfs-tsm is absent).

linux/include/uapi/linux/sev-guest.h: ``struct snp_guest_request_ioctl`` {u8 msg_version;
u64 req_data; u64 resp_data; u64 exitinfo2} (32 bytes), SNP_GET_REPORT =
_IOWR('S', 0x0, ...). The request is ``struct snp_report_req`` {u8 user_data[64]; u32 vmpl;
u8 rsvd[28]}; the response buffer (4000 bytes) holds MSG_REPORT_RSP from the SEV firmware
ABI (Table "MSG_REPORT_RSP"): status u32, report_size u32, 24 reserved bytes, the report.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

from enclave.attestation.evidence import Evidence, check_report_data
from enclave.attestation.hardware.ioctl import CharacterDevice, DeviceError, GuestDevice, iowr
from verifier.claims import Platform

SEV_GUEST_DEVICE = Path("/dev/sev-guest")
GUEST_REQUEST = struct.Struct("<B7xQQQ")
SNP_GET_REPORT = iowr(ord("S"), 0x0, GUEST_REQUEST.size)
SNP_GET_DERIVED_KEY = iowr(ord("S"), 0x1, GUEST_REQUEST.size)
REPORT_REQUEST = struct.Struct("<64sI28x")
RESPONSE_SIZE = 4000
REPORT_RESPONSE_HEADER = struct.Struct("<II24x")
REPORT_SIZE = 1184
MSG_VERSION = 1


def guest_request(
    device: GuestDevice, request_code: int, request: bytes, response_size: int
) -> bytes:
    """Issue one SNP guest request; return the response buffer. Raises DeviceError."""
    req_buf = ctypes.create_string_buffer(request, len(request))
    resp_buf = ctypes.create_string_buffer(response_size)
    frame = bytearray(
        GUEST_REQUEST.pack(MSG_VERSION, ctypes.addressof(req_buf), ctypes.addressof(resp_buf), 0)
    )
    device.ioctl(request_code, frame)
    _, _, _, exitinfo2 = GUEST_REQUEST.unpack(bytes(frame))
    if exitinfo2:
        raise DeviceError(f"SEV firmware refused the request (exitinfo2=0x{exitinfo2:x})")
    return bytes(resp_buf.raw)


class SevGuestProvider:
    def __init__(self, device: GuestDevice | None = None, *, vmpl: int = 0) -> None:
        self._device = device or CharacterDevice(SEV_GUEST_DEVICE)
        self._vmpl = vmpl

    @property
    def platform(self) -> Platform:
        return "sev-snp"

    def evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        response = guest_request(
            self._device,
            SNP_GET_REPORT,
            REPORT_REQUEST.pack(report_data, self._vmpl),
            RESPONSE_SIZE,
        )
        status, size = REPORT_RESPONSE_HEADER.unpack_from(response)
        if status != 0:
            raise DeviceError(f"MSG_REPORT_RSP status 0x{status:x}")
        if size != REPORT_SIZE:
            raise DeviceError(f"MSG_REPORT_RSP report_size {size}, expected {REPORT_SIZE}")
        start = REPORT_RESPONSE_HEADER.size
        return Evidence(platform="sev-snp", evidence=response[start : start + size])
