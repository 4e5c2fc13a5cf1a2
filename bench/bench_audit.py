"""Audited operations per second: the KMS service layer's encrypt at high concurrency with
the real audit log (hash chain, group commit, one fsync per batch on a file) beside the
same operations with the audit writer's storage replaced by ``NullAuditSink`` (chaining
and the writer thread still run; nothing is written or fsync'd), in the same run.

Both logs feed the alert rules from every durable record, as the monitoring feature does.
Both sides share one SoftHSM2 token, one store, one key and one principal; only the audit
sink differs. Runs are alternated (null, file, null, file, ...) and the medians compared,
so drift on the shared machine hits both. Target: audited >= 0.80 x unaudited-storage.

Runs in a child process (one PKCS#11 library per process).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BenchResult, result

CONCURRENCY = 64
SECONDS = 1.5
ROUNDS = 3


def run() -> list[BenchResult]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_audit", "--child"],
        capture_output=True,
        timeout=300,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench_audit child failed: {done.stderr.decode()[-2000:]}")
    rows: list[BenchResult] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return rows


async def _measure(kms: Any, caller: Any, key_id: str, seconds: float) -> float:
    stop = time.perf_counter() + seconds
    counts = [0] * CONCURRENCY

    async def worker(index: int) -> None:
        plaintext = os.urandom(64)
        while time.perf_counter() < stop:
            await kms.crypto.encrypt(caller, key_id, plaintext, {"tenant": "bench"})
            counts[index] += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    return sum(counts) / (time.perf_counter() - start)


async def _child_async(state: Path) -> list[BenchResult]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from enclave.audit.log import AuditListener, AuditLog
    from enclave.audit.sink import FileAuditSink, NullAuditSink
    from enclave.hsm.backend import HsmBackend
    from enclave.hsm.token import SoftHsmToken
    from enclave.keys.hierarchy import KeyHierarchy
    from enclave.kms.service import KmsService
    from enclave.monitoring.alerts import AlertManager
    from enclave.monitoring.rules import AlertRules, default_alert_config
    from enclave.storage.sqlite import SqliteStore
    from tests.storage.file_counter import FileCounter
    from verifier.roots import TrustRoots
    from verifier.verify import Verifier

    prov = SoftHsmToken.provision(state, "bench-audit")
    assert prov.user_pin is not None
    backend = await HsmBackend.open(prov.token.config(), prov.user_pin)
    audit_key = Ed25519PrivateKey.generate()
    public = audit_key.public_key().public_bytes_raw()

    def audit_log(sink: Any) -> AuditLog:
        log = AuditLog(sink, sign=audit_key.sign, public_key=public, hmac_key=os.urandom(32),
                       kms_id="bench")  # fmt: skip
        # As in the enclave: the alert rules hear of every durable record.
        rules = AlertRules(AlertManager(config=default_alert_config()))
        log.add_listener(AuditListener(on_record=rules.observe_audit_record))
        log.start()
        return log

    file_log = audit_log(FileAuditSink(state / "audit" / "audit.log"))
    null_log = audit_log(NullAuditSink())
    try:
        store = SqliteStore.open(state / "kms.db", os.urandom(32), FileCounter(state / "ctr"),
                                 create=True)  # fmt: skip
        hierarchy = KeyHierarchy(backend)
        verifier = Verifier(TrustRoots.production())
        services = {}
        for name, log in (("file", file_log), ("null", null_log)):
            services[name] = KmsService(hierarchy=hierarchy, store=store, audit=log,
                                        verifier=verifier, clock=_now)  # fmt: skip
        kms = services["file"]
        await kms.start()
        admin = await kms.bootstrap_admin("bench-admin", os.urandom(32))
        from enclave.keys.metadata import Algorithm, Purpose

        info = await kms.keys.create(admin, Purpose.ENCRYPT, Algorithm.AES_256_GCM)
        key_id = info.key_id
        rates: dict[str, list[float]] = {"file": [], "null": []}
        for name in ("null", "file"):  # warm-up
            await _measure(services[name], admin, key_id, 0.3)
        for _ in range(ROUNDS):
            for name in ("null", "file"):
                rates[name].append(await _measure(services[name], admin, key_id, SECONDS))
        audited = statistics.median(rates["file"])
        baseline = statistics.median(rates["null"])
        batches = file_log.stats().batches
        written = file_log.stats().written
        store.close()
    finally:
        file_log.stop()
        null_log.stop()
        await backend.close()
    sys.stderr.write(
        f"audited {audited:.0f}/s, null sink {baseline:.0f}/s, "
        f"{written} records in {batches} fsync'd batches\n"
    )
    return [
        result(
            f"audited encrypt, group commit (service layer, {CONCURRENCY} concurrent)",
            audited,
            "ops/s",
            "same, audit storage replaced by NullAuditSink",
            baseline,
            ">= 0.80",
        )
    ]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _child() -> list[BenchResult]:
    state = Path(tempfile.mkdtemp(prefix="kms-bench-audit-"))
    return asyncio.run(_child_async(state))


if __name__ == "__main__" and "--child" in sys.argv:
    print(json.dumps(_child()))
