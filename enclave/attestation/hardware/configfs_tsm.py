"""SEV-SNP and TDX evidence through Linux configfs-tsm (/sys/kernel/config/tsm/report).

Protocol (Documentation/ABI/testing/configfs-tsm): make a report entry directory, write
64 bytes to ``inblob`` (and, for SNP, the VMPL to ``privlevel``), read ``outblob`` (SNP:
the ATTESTATION_REPORT; TDX: the quote) and ``auxblob`` (SNP: the GUID-keyed certificate
table the host provided), and read ``generation`` before and after: a changed generation
means another writer raced us, so the result is discarded and the request retried.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from enclave.attestation.evidence import Evidence, check_report_data
from enclave.attestation.hardware.snp_certs import parse_certificate_table
from verifier.claims import Platform

DEFAULT_TSM_ROOT = Path("/sys/kernel/config/tsm/report")
_PROVIDERS: dict[str, Platform] = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}
MAX_ATTEMPTS = 3


class TsmError(Exception):
    """configfs-tsm is missing, refused the request, or kept racing with another writer."""


class TsmFilesystem(Protocol):
    """The few file operations configfs-tsm needs (a fake kernel implements them in tests)."""

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def write(self, path: Path, data: bytes) -> None: ...

    def read(self, path: Path) -> bytes: ...


class OsFilesystem:
    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()


@dataclass(frozen=True)
class TsmReport:
    provider: str
    outblob: bytes
    auxblob: bytes


class ConfigfsTsm:
    def __init__(self, root: Path = DEFAULT_TSM_ROOT, fs: TsmFilesystem | None = None) -> None:
        self.root = root
        self.fs = fs or OsFilesystem()

    def available(self) -> bool:
        return self.root.is_dir() if isinstance(self.fs, OsFilesystem) else True

    def report(self, report_data: bytes, *, privlevel: int | None = None) -> TsmReport:
        check_report_data(report_data)
        for _ in range(MAX_ATTEMPTS):
            entry = self.root / f"kms-{secrets.token_hex(8)}"
            try:
                self.fs.mkdir(entry)
            except OSError as exc:
                raise TsmError(f"cannot create a configfs-tsm report entry: {exc}") from None
            try:
                result = self._request(entry, report_data, privlevel)
            finally:
                with contextlib.suppress(OSError):
                    self.fs.rmdir(entry)
            if result is not None:
                return result
        raise TsmError("configfs-tsm report kept changing under another writer")

    def _request(self, entry: Path, report_data: bytes, privlevel: int | None) -> TsmReport | None:
        try:
            writes = 0
            if privlevel is not None:
                self.fs.write(entry / "privlevel", str(privlevel).encode())
                writes += 1
            self.fs.write(entry / "inblob", report_data)
            writes += 1
            before = int(self.fs.read(entry / "generation").strip())
            provider = self.fs.read(entry / "provider").decode().strip()
            outblob = self.fs.read(entry / "outblob")
            try:
                auxblob = self.fs.read(entry / "auxblob")
            except OSError:
                auxblob = b""
            after = int(self.fs.read(entry / "generation").strip())
        except (OSError, ValueError) as exc:
            raise TsmError(f"configfs-tsm request failed: {exc}") from None
        if before != after or before != writes:
            return None
        if not outblob:
            raise TsmError("configfs-tsm returned an empty report")
        return TsmReport(provider=provider, outblob=outblob, auxblob=auxblob)


class TsmEvidenceProvider:
    """SNP or TDX evidence through configfs-tsm; the kernel's provider must match."""

    def __init__(self, platform: Platform, tsm: ConfigfsTsm, *, vmpl: int | None = None) -> None:
        if platform not in ("sev-snp", "tdx"):
            raise ValueError("configfs-tsm serves SEV-SNP and TDX only")
        self._platform: Platform = platform
        self._tsm = tsm
        self._vmpl = vmpl

    @property
    def platform(self) -> Platform:
        return self._platform

    def evidence(self, report_data: bytes) -> Evidence:
        report = self._tsm.report(
            report_data, privlevel=self._vmpl if self._platform == "sev-snp" else None
        )
        if _PROVIDERS.get(report.provider) != self._platform:
            raise TsmError(f"configfs-tsm provider is {report.provider!r}, not {self._platform}")
        certs: tuple[bytes, ...] = ()
        if self._platform == "sev-snp" and report.auxblob:
            table = parse_certificate_table(report.auxblob)
            certs = tuple(c for c in (table.vcek or table.vlek, table.ask, table.ark) if c)
        return Evidence(platform=self._platform, evidence=report.outblob, certs=certs)
