"""The audit file sink: one descriptor kept open, a moved, replaced or removed file refused
before anything is written to it, and a write that fails part-way leaving nothing behind."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.audit import sink as sink_module
from enclave.audit.log import AuditConfig, AuditLog, AuditUnavailable
from enclave.audit.sink import AuditFileReplaced, FileAuditSink


def open_descriptors_on(path: Path) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            count += 1
    return count


def test_batches_go_through_one_descriptor_and_close_releases_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path)
    sink.append([b"a\n", b"b\n"])
    sink.append([b"c\n"])
    assert path.read_bytes() == b"a\nb\nc\n"
    assert list(sink.read_lines()) == [b"a\n", b"b\n", b"c\n"]
    assert open_descriptors_on(path) == 1
    sink.close()
    assert open_descriptors_on(path) == 0
    sink.append([b"d\n"])  # opens again
    sink.close()
    assert path.read_bytes() == b"a\nb\nc\nd\n"


def replace_with_an_empty_file(path: Path) -> None:
    impostor = path.with_name("impostor")
    impostor.write_bytes(b"")
    os.replace(impostor, path)


@pytest.mark.parametrize("change", [replace_with_an_empty_file, Path.unlink])
def test_a_replaced_or_removed_file_is_refused_once_then_the_path_is_used(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path)
    sink.append([b"1\n"])
    change(path)
    with pytest.raises(AuditFileReplaced, match="moved, replaced or removed"):
        sink.append([b"2\n"])
    assert not path.exists() or path.read_bytes() == b""  # the refused batch went nowhere
    sink.append([b"2\n"])
    sink.close()
    assert path.read_bytes() == b"2\n"


def test_a_moved_file_is_refused_at_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path)
    sink.append([b"1\n"])
    moved = tmp_path / "moved.log"
    path.rename(moved)
    with pytest.raises(AuditFileReplaced):
        sink.append([b"2\n"])
    assert moved.read_bytes() == b"1\n"  # nothing acknowledged went to the moved file
    moved.rename(path)
    sink.append([b"2\n"])
    sink.close()
    assert path.read_bytes() == b"1\n2\n"


def test_a_write_failing_part_way_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path)
    sink.append([b'{"seq":0}\n'])
    real_write = os.write
    calls: list[int] = []

    def disk_fills(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:7])  # part of the batch reaches the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink_module.os, "write", disk_fills)
    with pytest.raises(OSError, match="No space left"):
        sink.append([b'{"seq":1}\n', b'{"seq":2}\n'])
    assert path.read_bytes() == b'{"seq":0}\n'
    monkeypatch.setattr(sink_module.os, "write", real_write)
    sink.append([b'{"seq":1}\n', b'{"seq":2}\n'])  # the retry
    sink.close()
    assert path.read_bytes() == b'{"seq":0}\n{"seq":1}\n{"seq":2}\n'


def test_the_audit_log_refuses_alerts_and_recovers_when_its_file_is_replaced(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    alerts: list[str] = []
    log = AuditLog(
        FileAuditSink(path),
        sign=key.sign,
        public_key=public,
        hmac_key=b"k" * 32,
        kms_id="kms-test",
        config=AuditConfig(retry_interval=0.05),
        on_failure=alerts.append,
    )
    log.start()
    try:
        log.record_sync(principal="p", operation="keys.encrypt", outcome="allowed")
        path.rename(tmp_path / "moved.log")
        with pytest.raises(AuditUnavailable):
            log.record_sync(principal="p", operation="keys.decrypt", outcome="allowed")
        assert alerts and "moved, replaced or removed" in alerts[0]
        log.record_sync(principal="p", operation="keys.sign", outcome="allowed")
        assert log.healthy
    finally:
        log.stop()
    assert open_descriptors_on(path) == 0
    operations = [json.loads(line)["operation"] for line in path.read_bytes().splitlines()]
    # The refused record is kept and written (nothing chained is dropped), then the next.
    assert operations == ["keys.decrypt", "keys.sign"]


def test_a_failed_write_never_extends_a_file_that_was_cut_shorter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path)
    sink.append([b"0123456789\n"])
    with path.open("r+b") as handle:  # someone truncates the file in place
        handle.truncate(3)

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink_module.os, "write", disk_full)
    with pytest.raises(OSError):
        sink.append([b"x\n"])
    assert path.read_bytes() == b"012"
