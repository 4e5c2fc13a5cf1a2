"""TDX quotes through /dev/tdx_guest (the fallback when configfs-tsm is absent).

linux/include/uapi/linux/tdx-guest.h: TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct
tdx_report_req {u8 reportdata[64]; u8 tdreport[1024]}) returns the TDREPORT. Turning it
into a quote needs the host's quoting enclave: older kernels expose TDX_CMD_GET_QUOTE =
_IOR('T', 4, struct tdx_quote_req {u64 buf; u64 len}) whose shared buffer carries the GHCI
GetQuote header {u64 version = 1; u64 status; u32 in_len; u32 out_len} then the data (TDREPORT
in, quote out). Newer kernels dropped that ioctl in favour of configfs-tsm.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

from enclave.attestation.evidence import Evidence, check_report_data
from enclave.attestation.hardware.ioctl import CharacterDevice, DeviceError, GuestDevice, iowr
from verifier.claims import Platform

TDX_GUEST_DEVICE = Path("/dev/tdx_guest")
TDREPORT_SIZE = 1024
REPORT_REQUEST_SIZE = 64 + TDREPORT_SIZE
TDX_CMD_GET_REPORT0 = iowr(ord("T"), 1, REPORT_REQUEST_SIZE)
QUOTE_REQUEST = struct.Struct("<QQ")
# _IOR: direction read only.
TDX_CMD_GET_QUOTE = (2 << 30) | (ord("T") << 8) | 4 | (QUOTE_REQUEST.size << 16)
QUOTE_HEADER = struct.Struct("<QQII")
QUOTE_BUFFER_SIZE = 16 * 4096
GET_QUOTE_SUCCESS = 0
GET_QUOTE_IN_FLIGHT = 0xFFFFFFFFFFFFFFFF


def td_report(device: GuestDevice, report_data: bytes) -> bytes:
    buffer = bytearray(check_report_data(report_data) + b"\x00" * TDREPORT_SIZE)
    device.ioctl(TDX_CMD_GET_REPORT0, buffer)
    return bytes(buffer[64:])


class TdxGuestProvider:
    def __init__(self, device: GuestDevice | None = None) -> None:
        self._device = device or CharacterDevice(TDX_GUEST_DEVICE)

    @property
    def platform(self) -> Platform:
        return "tdx"

    def evidence(self, report_data: bytes) -> Evidence:
        report = td_report(self._device, report_data)
        shared = ctypes.create_string_buffer(QUOTE_BUFFER_SIZE)
        header = QUOTE_HEADER.pack(1, 0, len(report), 0)
        ctypes.memmove(shared, header + report, len(header) + len(report))
        frame = bytearray(QUOTE_REQUEST.pack(ctypes.addressof(shared), QUOTE_BUFFER_SIZE))
        self._device.ioctl(TDX_CMD_GET_QUOTE, frame)
        _, status, _, out_len = QUOTE_HEADER.unpack_from(shared.raw)
        if status == GET_QUOTE_IN_FLIGHT:
            raise DeviceError("the quoting enclave did not finish the quote")
        if status != GET_QUOTE_SUCCESS or out_len == 0:
            raise DeviceError(f"GetQuote failed with status 0x{status:x}")
        if out_len > QUOTE_BUFFER_SIZE - QUOTE_HEADER.size:
            raise DeviceError("GetQuote answered more bytes than the buffer holds")
        start = QUOTE_HEADER.size
        return Evidence(platform="tdx", evidence=shared.raw[start : start + out_len])
