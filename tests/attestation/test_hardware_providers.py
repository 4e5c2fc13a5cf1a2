"""Hardware evidence providers against a fake configfs-tsm kernel and fake guest devices.

The real interfaces cannot be reached on this machine (LIMITATIONS.md); these fakes follow
the kernel ABI byte for byte, so the request framing and the checks are exercised.
"""

from __future__ import annotations

import ctypes
import struct
import uuid
from pathlib import Path

import cbor2
import pytest

from enclave.attestation.hardware import configfs_tsm, nsm, sev_guest, tdx_guest
from enclave.attestation.hardware.ioctl import DeviceError, iowr
from enclave.attestation.hardware.snp_certs import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    CertificateTableError,
    build_certificate_table,
    parse_certificate_table,
)

REPORT_DATA = bytes(range(64))


class FakeTsmKernel:
    """In-memory configfs-tsm: writes to inblob/privlevel bump generation and make a report."""

    def __init__(self, provider: str, *, race: int = 0, aux: bytes = b"") -> None:
        self.provider = provider
        self.entries: dict[Path, dict[str, bytes | int]] = {}
        self.race = race
        self.aux = aux
        self.privlevels: list[int] = []

    def mkdir(self, path: Path) -> None:
        if path in self.entries:
            raise FileExistsError(path)
        self.entries[path] = {"generation": 0}

    def rmdir(self, path: Path) -> None:
        del self.entries[path]

    def write(self, path: Path, data: bytes) -> None:
        entry = self.entries[path.parent]
        entry["generation"] = int(entry["generation"]) + 1
        if path.name == "privlevel":
            self.privlevels.append(int(data))
        elif path.name == "inblob":
            if len(data) > 64:
                raise OSError(22, "Invalid argument")
            entry["inblob"] = data
        else:
            raise PermissionError(path)

    def read(self, path: Path) -> bytes:
        entry = self.entries[path.parent]
        if path.name == "generation":
            if self.race:
                self.race -= 1
                entry["generation"] = int(entry["generation"]) + 1
            return f"{entry['generation']}\n".encode()
        if path.name == "provider":
            return self.provider.encode() + b"\n"
        if path.name == "outblob":
            return b"REPORT" + bytes(entry["inblob"])  # type: ignore[arg-type]
        if path.name == "auxblob":
            if not self.aux:
                raise OSError(61, "No data available")
            return self.aux
        raise FileNotFoundError(path)


def test_configfs_tsm_report_carries_report_data_and_cleans_up() -> None:
    kernel = FakeTsmKernel("tdx_guest")
    provider = configfs_tsm.TsmEvidenceProvider(
        "tdx", configfs_tsm.ConfigfsTsm(Path("/fake/tsm"), kernel)
    )
    evidence = provider.evidence(REPORT_DATA)
    assert evidence.platform == "tdx"
    assert evidence.evidence == b"REPORT" + REPORT_DATA
    assert kernel.entries == {}


def test_configfs_tsm_snp_sets_vmpl_and_reads_certificate_table() -> None:
    table = build_certificate_table({VCEK_GUID: b"vcek", ASK_GUID: b"ask", ARK_GUID: b"ark"})
    kernel = FakeTsmKernel("sev_guest", aux=table)
    provider = configfs_tsm.TsmEvidenceProvider(
        "sev-snp", configfs_tsm.ConfigfsTsm(Path("/fake/tsm"), kernel), vmpl=2
    )
    evidence = provider.evidence(REPORT_DATA)
    assert kernel.privlevels == [2]
    assert evidence.certs == (b"vcek", b"ask", b"ark")


def test_configfs_tsm_retries_when_another_writer_races() -> None:
    kernel = FakeTsmKernel("tdx_guest", race=1)
    tsm = configfs_tsm.ConfigfsTsm(Path("/fake/tsm"), kernel)
    assert tsm.report(REPORT_DATA).outblob == b"REPORT" + REPORT_DATA


def test_configfs_tsm_gives_up_when_races_never_stop() -> None:
    kernel = FakeTsmKernel("tdx_guest", race=100)
    tsm = configfs_tsm.ConfigfsTsm(Path("/fake/tsm"), kernel)
    with pytest.raises(configfs_tsm.TsmError, match="another writer"):
        tsm.report(REPORT_DATA)
    assert kernel.entries == {}


def test_configfs_tsm_refuses_a_provider_of_another_platform() -> None:
    kernel = FakeTsmKernel("sev_guest")
    provider = configfs_tsm.TsmEvidenceProvider(
        "tdx", configfs_tsm.ConfigfsTsm(Path("/fake/tsm"), kernel)
    )
    with pytest.raises(configfs_tsm.TsmError, match="sev_guest"):
        provider.evidence(REPORT_DATA)


def test_report_data_must_be_64_bytes() -> None:
    tsm = configfs_tsm.ConfigfsTsm(Path("/fake/tsm"), FakeTsmKernel("tdx_guest"))
    with pytest.raises(ValueError, match="64 bytes"):
        tsm.report(b"short")


def test_certificate_table_rejects_entries_outside_the_table() -> None:
    bad = struct.pack("<16sII", VCEK_GUID.bytes_le, 1000, 10) + b"\x00" * 24
    with pytest.raises(CertificateTableError):
        parse_certificate_table(bad)
    with pytest.raises(CertificateTableError):
        parse_certificate_table(struct.pack("<16sII", uuid.uuid4().bytes_le, 24, 1))


def test_ioctl_numbers_match_the_kernel_headers() -> None:
    # Values from the kernel's uapi headers, computed by _IOWR on x86_64.
    assert sev_guest.SNP_GET_REPORT == 0xC0205300
    assert sev_guest.SNP_GET_DERIVED_KEY == 0xC0205301
    assert tdx_guest.TDX_CMD_GET_REPORT0 == 0xC4405401
    assert nsm.NSM_REQUEST == 0xC0200A00
    assert iowr(ord("S"), 2, 32) == 0xC0205302


class FakeSevGuest:
    """Reads snp_report_req through the pointer and writes MSG_REPORT_RSP back."""

    def __init__(self, *, status: int = 0, exitinfo2: int = 0) -> None:
        self.status, self.exitinfo2 = status, exitinfo2
        self.requests: list[tuple[bytes, int]] = []

    def ioctl(self, request: int, buffer: bytearray) -> None:
        assert request == sev_guest.SNP_GET_REPORT
        version, req_ptr, resp_ptr, _ = sev_guest.GUEST_REQUEST.unpack(bytes(buffer))
        assert version == 1
        user_data, vmpl = sev_guest.REPORT_REQUEST.unpack(
            ctypes.string_at(req_ptr, sev_guest.REPORT_REQUEST.size)
        )
        self.requests.append((user_data, vmpl))
        report = b"\x03" + b"\x00" * 0x4F + user_data + b"\x00" * (1184 - 0x90)
        response = sev_guest.REPORT_RESPONSE_HEADER.pack(self.status, 1184) + report
        ctypes.memmove(resp_ptr, response, len(response))
        buffer[:] = sev_guest.GUEST_REQUEST.pack(version, req_ptr, resp_ptr, self.exitinfo2)


def test_sev_guest_ioctl_frames_the_request_and_reads_the_report() -> None:
    device = FakeSevGuest()
    evidence = sev_guest.SevGuestProvider(device, vmpl=1).evidence(REPORT_DATA)
    assert device.requests == [(REPORT_DATA, 1)]
    assert len(evidence.evidence) == 1184
    assert evidence.evidence[0x50:0x90] == REPORT_DATA


@pytest.mark.parametrize(
    ("status", "exitinfo2", "message"), [(0x16, 0, "status"), (0, 0x1_0000_0000, "exitinfo2")]
)
def test_sev_guest_firmware_errors_are_reported(status: int, exitinfo2: int, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        sev_guest.SevGuestProvider(FakeSevGuest(status=status, exitinfo2=exitinfo2)).evidence(
            REPORT_DATA
        )


def test_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    from enclave.attestation.hardware.ioctl import CharacterDevice

    provider = sev_guest.SevGuestProvider(CharacterDevice(tmp_path / "sev-guest"))
    with pytest.raises(DeviceError, match="cannot open"):
        provider.evidence(REPORT_DATA)


class FakeTdxGuest:
    def __init__(self, *, status: int = 0) -> None:
        self.status = status

    def ioctl(self, request: int, buffer: bytearray) -> None:
        if request == tdx_guest.TDX_CMD_GET_REPORT0:
            buffer[64:] = b"TDREPORT" + bytes(buffer[:64]) + b"\x00" * (1024 - 72)
            return
        assert request == tdx_guest.TDX_CMD_GET_QUOTE
        ptr, length = tdx_guest.QUOTE_REQUEST.unpack(bytes(buffer))
        version, _, in_len, _ = tdx_guest.QUOTE_HEADER.unpack(
            ctypes.string_at(ptr, tdx_guest.QUOTE_HEADER.size)
        )
        assert version == 1 and in_len == 1024 and length == tdx_guest.QUOTE_BUFFER_SIZE
        report = ctypes.string_at(ptr + tdx_guest.QUOTE_HEADER.size, in_len)
        quote = b"QUOTE:" + report[8:72]
        out = tdx_guest.QUOTE_HEADER.pack(1, self.status, 0, len(quote)) + quote
        ctypes.memmove(ptr, out, len(out))


def test_tdx_guest_gets_a_report_then_a_quote() -> None:
    evidence = tdx_guest.TdxGuestProvider(FakeTdxGuest()).evidence(REPORT_DATA)
    assert evidence.evidence == b"QUOTE:" + REPORT_DATA


def test_tdx_guest_quote_failure_is_reported() -> None:
    with pytest.raises(DeviceError, match="GetQuote failed"):
        tdx_guest.TdxGuestProvider(FakeTdxGuest(status=0x8000000000000001)).evidence(REPORT_DATA)


class FakeNsm:
    def __init__(self, answer: object) -> None:
        self.answer = answer
        self.requests: list[object] = []

    def ioctl(self, request: int, buffer: bytearray) -> None:
        assert request == nsm.NSM_REQUEST
        req_ptr, req_len, resp_ptr, resp_cap = nsm.NSM_MESSAGE.unpack(bytes(buffer))
        self.requests.append(cbor2.loads(ctypes.string_at(req_ptr, req_len)))
        encoded = cbor2.dumps(self.answer)
        assert len(encoded) <= resp_cap
        ctypes.memmove(resp_ptr, encoded, len(encoded))
        buffer[:] = nsm.NSM_MESSAGE.pack(req_ptr, req_len, resp_ptr, len(encoded))


def test_nsm_attestation_puts_report_data_in_user_data() -> None:
    device = FakeNsm({"Attestation": {"document": b"COSE"}})
    evidence = nsm.NsmProvider(nsm.NsmClient(device)).evidence(REPORT_DATA)
    assert evidence.evidence == b"COSE"
    assert device.requests == [
        {"Attestation": {"user_data": REPORT_DATA, "nonce": None, "public_key": None}}
    ]


def test_nsm_errors_and_random() -> None:
    with pytest.raises(DeviceError, match="InvalidArgument"):
        nsm.NsmClient(FakeNsm({"Error": "InvalidArgument"})).attestation(REPORT_DATA)
    device = FakeNsm({"GetRandom": {"random": b"\x01" * 32}})
    assert nsm.NsmClient(device).get_random() == b"\x01" * 32
    assert device.requests == ["GetRandom"]
