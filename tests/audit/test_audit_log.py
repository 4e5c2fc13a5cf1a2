"""The audit log: chaining, group commit, fail-closed behaviour, offline verification."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.audit.log import AuditConfig, AuditLog, AuditUnavailable
from enclave.audit.sink import FileAuditSink
from enclave.audit.verify import verify_export


class FlakySink(FileAuditSink):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.broken = False

    def append(self, lines: list[bytes]) -> None:
        if self.broken:
            raise OSError(28, "No space left on device")
        super().append(lines)


def make_log(sink: FileAuditSink, **config: object) -> tuple[AuditLog, bytes, list[str]]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    alerts: list[str] = []
    log = AuditLog(
        sink,
        sign=key.sign,
        public_key=public,
        hmac_key=b"k" * 32,
        kms_id="kms-test",
        config=AuditConfig(**config),  # type: ignore[arg-type]
        on_failure=alerts.append,
    )
    log.start()
    return log, public, alerts


def lifecycle(log: AuditLog, count: int) -> None:
    for i in range(count):
        log.record_sync(
            principal="prn_a",
            operation="keys.encrypt",
            outcome="allowed",
            key_id="key_1",
            key_version=1,
            request=f"req-{i}".encode(),
            status=200,
            sensitive={"context": b"tenant=acme"},
        )


def test_records_chain_and_export_verifies(tmp_path: Path) -> None:
    log, public, _ = make_log(FileAuditSink(tmp_path / "audit.log"), checkpoint_every=5)
    lifecycle(log, 12)
    lines = log.export_lines()
    log.stop()
    report = verify_export(lines, pinned_public_key=public)
    assert report.intact, report.problems
    assert report.records == 12 + report.checkpoints
    assert report.checkpoints >= 3
    text = b"".join(lines)
    assert b"tenant=acme" not in text and b"req-1" not in text


def test_export_pinned_to_another_key_is_refused(tmp_path: Path) -> None:
    log, _, _ = make_log(FileAuditSink(tmp_path / "audit.log"))
    lifecycle(log, 2)
    lines = log.export_lines()
    log.stop()
    assert not verify_export(lines, pinned_public_key=b"\x01" * 32).intact


@pytest.fixture
def exported(tmp_path: Path) -> list[bytes]:
    log, _, _ = make_log(FileAuditSink(tmp_path / "audit.log"), checkpoint_every=4)
    lifecycle(log, 10)
    lines = log.export_lines()
    log.stop()
    assert verify_export(lines).intact
    return lines


def seq_of(line: bytes) -> int:
    return int(json.loads(line)["seq"])


def test_single_byte_edit_is_named(exported: list[bytes]) -> None:
    target = 5  # line index 5 holds record seq 4
    line = bytearray(exported[target])
    position = line.index(b'"principal":"') + len(b'"principal":"')
    line[position] ^= 0x01
    tampered = [*exported[:target], bytes(line), *exported[target + 1 :]]
    problems = verify_export(tampered).problems
    assert {p.seq for p in problems} == {seq_of(exported[target])}


def test_any_single_byte_edit_is_caught(exported: list[bytes]) -> None:
    target = 3
    for position in range(0, len(exported[target]) - 1, 7):
        line = bytearray(exported[target])
        line[position] ^= 0x20
        tampered = [*exported[:target], bytes(line), *exported[target + 1 :]]
        report = verify_export(tampered)
        assert not report.intact
        assert seq_of(exported[target]) in {p.seq for p in report.problems}


def test_removed_record_is_named(exported: list[bytes]) -> None:
    removed = exported[4]
    tampered = exported[:4] + exported[5:]
    assert seq_of(removed) in {p.seq for p in verify_export(tampered).problems}


def test_reordered_records_are_named(exported: list[bytes]) -> None:
    tampered = [*exported[:3], exported[4], exported[3], *exported[5:]]
    named = {p.seq for p in verify_export(tampered).problems}
    assert seq_of(exported[3]) in named or seq_of(exported[4]) in named


def test_inserted_record_is_named(exported: list[bytes]) -> None:
    forged = json.loads(exported[3])
    forged["operation"] = "keys.delete"
    tampered = [*exported[:4], json.dumps(forged).encode() + b"\n", *exported[4:]]
    named = {p.seq for p in verify_export(tampered).problems}
    assert forged["seq"] in named


def test_truncated_tail_is_detected(exported: list[bytes]) -> None:
    assert not verify_export(exported[:-1]).intact


async def test_group_commit_batches_concurrent_records(tmp_path: Path) -> None:
    log, _, _ = make_log(FileAuditSink(tmp_path / "audit.log"))
    records = await asyncio.gather(
        *(log.record(principal="p", operation="op", outcome="allowed") for _ in range(200))
    )
    stats = log.stats()
    log.stop()
    assert sorted(r.seq for r in records) == list(range(200))
    assert stats.batches < 200


def test_failed_storage_refuses_then_loses_nothing(tmp_path: Path) -> None:
    sink = FlakySink(tmp_path / "audit.log")
    log, public, alerts = make_log(sink, retry_interval=0.05)
    lifecycle(log, 3)
    sink.broken = True
    with pytest.raises(AuditUnavailable):
        log.record_sync(principal="p", operation="keys.decrypt", outcome="denied", status=503)
    assert not log.healthy
    assert len(alerts) == 1
    with pytest.raises(AuditUnavailable):
        log.record_sync(principal="p", operation="keys.decrypt", outcome="denied", status=503)
    assert len(alerts) == 1
    sink.broken = False
    lifecycle(log, 2)
    assert log.healthy
    lines = log.export_lines()
    log.stop()
    report = verify_export(lines, pinned_public_key=public)
    assert report.intact, report.problems
    operations = [json.loads(line)["operation"] for line in lines[1:]]
    assert operations.count("keys.decrypt") == 2
    assert operations.count("keys.encrypt") == 5


@pytest.mark.parametrize(
    ("broken", "details"),
    [(False, {"principal_id": "\ud800"}), (False, {"at": object()}), (True, {"x": "\udfff"})],
    ids=["lone-surrogate", "not-json", "lone-surrogate-while-storage-fails"],
)
def test_a_record_that_cannot_be_encoded_is_refused_alone(
    tmp_path: Path, broken: bool, details: dict[str, object]
) -> None:
    # It once stopped the writer thread: every later record waited forever.
    sink = FlakySink(tmp_path / "audit.log")
    log, public, _ = make_log(sink, retry_interval=0.05)
    lifecycle(log, 2)
    sink.broken = broken
    futures = [
        log.submit(principal="p", operation="keys.decrypt", outcome="denied", details=details),
        log.submit(principal="p", operation="keys.sign", outcome="denied"),
    ]
    with pytest.raises(AuditUnavailable):
        futures[0].result(5)
    if broken:
        with pytest.raises(AuditUnavailable):
            futures[1].result(5)
        sink.broken = False
    else:
        assert futures[1].result(5).operation == "keys.sign"
    lifecycle(log, 2)
    lines = log.export_lines()
    log.stop()
    report = verify_export(lines, pinned_public_key=public)
    assert report.intact, report.problems
    operations = [json.loads(line)["operation"] for line in lines[1:]]
    assert "keys.decrypt" not in operations and operations.count("keys.sign") == 1


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log, _, _ = make_log(FileAuditSink(path))
    lifecycle(log, 3)
    log.stop()
    log2, _public2, _ = make_log(FileAuditSink(path))
    lifecycle(log2, 3)
    lines = log2.export_lines()
    log2.stop()
    # The second instance signs with a new key here; the chain itself must still hold.
    report = verify_export(lines)
    assert not [p for p in report.problems if "chain" in p.reason or "missing" in p.reason]
    assert report.last_seq is not None and report.last_seq >= 6


def test_a_torn_last_line_from_a_crash_is_dropped_at_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log, _, _ = make_log(FileAuditSink(path))
    lifecycle(log, 3)
    log.stop()
    intact = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(b'{"seq":3,"time":"2026-')  # a crash in the middle of a write
    log2, _, _ = make_log(FileAuditSink(path))
    lifecycle(log2, 1)
    lines = log2.export_lines()
    log2.stop()
    assert path.read_bytes().startswith(intact)
    report = verify_export(lines)
    assert not [p for p in report.problems if "chain" in p.reason or "missing" in p.reason]
