"""The SEV-SNP extended-report certificate table (GHCB spec, "SNP Extended Guest Request").

A sequence of entries {GUID (16 bytes, little-endian fields), offset u32, length u32},
ended by an all-zero entry; offsets are from the start of the table.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
_ENTRY = struct.Struct("<16sII")
MAX_ENTRIES = 64


class CertificateTableError(ValueError):
    pass


@dataclass(frozen=True)
class CertificateTable:
    vcek: bytes | None = None
    vlek: bytes | None = None
    ask: bytes | None = None
    ark: bytes | None = None


def parse_certificate_table(data: bytes) -> CertificateTable:
    found: dict[uuid.UUID, bytes] = {}
    for index in range(MAX_ENTRIES):
        start = index * _ENTRY.size
        if start + _ENTRY.size > len(data):
            raise CertificateTableError("certificate table is not terminated")
        guid_bytes, offset, length = _ENTRY.unpack_from(data, start)
        if guid_bytes == b"\x00" * 16 and offset == 0 and length == 0:
            break
        if offset + length > len(data) or length == 0:
            raise CertificateTableError("certificate table entry points outside the table")
        found[uuid.UUID(bytes_le=guid_bytes)] = data[offset : offset + length]
    else:
        raise CertificateTableError("certificate table has too many entries")
    return CertificateTable(
        vcek=found.get(VCEK_GUID),
        vlek=found.get(VLEK_GUID),
        ask=found.get(ASK_GUID),
        ark=found.get(ARK_GUID),
    )


def build_certificate_table(entries: dict[uuid.UUID, bytes]) -> bytes:
    """The inverse, for fake hosts in tests and for the simulator."""
    header_size = _ENTRY.size * (len(entries) + 1)
    header, body = b"", b""
    for guid, blob in entries.items():
        header += _ENTRY.pack(guid.bytes_le, header_size + len(body), len(blob))
        body += blob
    return header + _ENTRY.pack(b"\x00" * 16, 0, 0) + body
