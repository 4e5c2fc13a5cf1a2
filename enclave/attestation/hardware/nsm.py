"""AWS Nitro Enclaves evidence and entropy through the Nitro Secure Module (/dev/nsm).

The NSM driver takes NSM_REQUEST = _IOWR(0x0A, 0, struct nsm_message {struct iovec
request; struct iovec response}); request and response are CBOR (aws-nitro-enclaves-nsm-api):
``{"Attestation": {"user_data", "nonce", "public_key"}}`` -> ``{"Attestation": {"document"}}``,
and ``"GetRandom"`` -> ``{"GetRandom": {"random"}}``; failures come back as ``{"Error": name}``.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path
from typing import Any

import cbor2

from enclave.attestation.evidence import Evidence, check_report_data
from enclave.attestation.hardware.ioctl import CharacterDevice, DeviceError, GuestDevice, iowr
from verifier.claims import Platform

NSM_DEVICE = Path("/dev/nsm")
NSM_MESSAGE = struct.Struct("<QQQQ")
NSM_REQUEST = iowr(0x0A, 0, NSM_MESSAGE.size)
NSM_RESPONSE_MAX = 0x3000


class NsmClient:
    def __init__(self, device: GuestDevice | None = None) -> None:
        self._device = device or CharacterDevice(NSM_DEVICE)

    def call(self, request: object) -> dict[str, Any]:
        encoded = cbor2.dumps(request)
        req_buf = ctypes.create_string_buffer(encoded, len(encoded))
        resp_buf = ctypes.create_string_buffer(NSM_RESPONSE_MAX)
        frame = bytearray(
            NSM_MESSAGE.pack(
                ctypes.addressof(req_buf),
                len(encoded),
                ctypes.addressof(resp_buf),
                NSM_RESPONSE_MAX,
            )
        )
        self._device.ioctl(NSM_REQUEST, frame)
        _, _, _, response_len = NSM_MESSAGE.unpack(bytes(frame))
        if response_len > NSM_RESPONSE_MAX:
            raise DeviceError("NSM answered more bytes than the buffer holds")
        try:
            response = cbor2.loads(resp_buf.raw[:response_len])
        except (cbor2.CBORDecodeError, ValueError) as exc:
            raise DeviceError(f"NSM answer is not CBOR: {exc}") from None
        if not isinstance(response, dict):
            raise DeviceError("NSM answer is not a map")
        if "Error" in response:
            raise DeviceError(f"NSM refused the request: {response['Error']}")
        return response

    def attestation(
        self, user_data: bytes, *, nonce: bytes | None = None, public_key: bytes | None = None
    ) -> bytes:
        response = self.call(
            {"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}}
        )
        document = response.get("Attestation", {}).get("document")
        if not isinstance(document, bytes):
            raise DeviceError("NSM attestation answer has no document")
        return document

    def get_random(self) -> bytes:
        random = self.call("GetRandom").get("GetRandom", {}).get("random")
        if not isinstance(random, bytes) or not random:
            raise DeviceError("NSM GetRandom answer has no bytes")
        return random


class NsmProvider:
    """Nitro evidence: the 64 report_data bytes go in ``user_data`` (ARCHITECTURE.md)."""

    def __init__(self, client: NsmClient | None = None) -> None:
        self._client = client or NsmClient()

    @property
    def platform(self) -> Platform:
        return "nitro"

    def evidence(self, report_data: bytes) -> Evidence:
        check_report_data(report_data)
        return Evidence(platform="nitro", evidence=self._client.attestation(report_data))
