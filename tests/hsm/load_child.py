"""Concurrent load against one HsmBackend, run in a child process so a crash fails the test.

Usage: python -m tests.hsm.load_child SECONDS CONCURRENCY. Prints one JSON line with the
operation counts and the ids of the threads that ran PKCS#11 calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from enclave.hsm.backend import HsmBackend, KekRef, TokenSession
from enclave.hsm.counter import HsmMonotonicCounter
from enclave.hsm.token import SoftHsmToken
from enclave.keys.hierarchy import KeyHierarchy
from enclave.keys.metadata import Algorithm, Purpose
from enclave.storage.counter import CounterConflict


async def main(seconds: float, concurrency: int) -> dict[str, object]:
    state = Path(tempfile.mkdtemp(prefix="kms-load-"))
    prov = SoftHsmToken.provision(state, "load")
    assert prov.user_pin is not None
    backend = await HsmBackend.open(prov.token.config(), prov.user_pin)
    idents: set[int] = set()

    def record(_st: TokenSession) -> None:
        idents.add(threading.get_ident())

    try:
        hierarchy = KeyHierarchy(backend)
        await hierarchy.bootstrap()
        kek_meta = await hierarchy.create_kek("load")
        kek_version = kek_meta.versions[0]
        kek = KekRef(kek_version.cache_id, kek_version.wrapped)
        _, dek = await hierarchy.create_key(
            Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=kek_version, owner="load"
        )
        _, ed = await hierarchy.create_key(
            Purpose.SIGN, Algorithm.ED25519, kek=kek_version, owner="load"
        )
        rsa = await backend.generate_rsa_signing_key(kek, bits=2048)
        counter = HsmMonotonicCounter(backend, label="load-counter")
        counts: dict[str, int] = {}
        deadline = time.monotonic() + seconds

        async def worker(index: int) -> None:
            n = index
            while time.monotonic() < deadline:
                n += 1
                kind = n % 8
                if kind == 0:
                    generated = await backend.generate_data_key(kek, with_plaintext=True)
                    assert await backend.unwrap_data_key(kek, generated.wrapped) == (
                        generated.plaintext
                    )
                    name = "dek-wrap-unwrap"
                elif kind == 1:
                    await backend.unwrap_kek_uncached(kek)
                    name = "kek-unwrap"
                elif kind == 2:
                    blob = await hierarchy.encrypt(dek, kek_version, b"payload", b"ctx")
                    name = "encrypt"
                    assert blob
                elif kind == 3:
                    sig = await backend.sign_rsa_pss(kek, "rsa", rsa.wrapped_private, b"m")
                    assert len(sig) == 256
                    name = "rsa-sign"
                elif kind == 4:
                    sig = await hierarchy.sign(ed, kek_version, b"m")
                    hierarchy.verify(ed, b"m", sig)
                    name = "ed25519-sign"
                elif kind == 5:
                    secret = os.urandom(32)
                    wrapped = await backend.wrap_bytes(kek, secret)
                    assert await backend.unwrap_bytes(kek, wrapped) == secret
                    name = "bytes-wrap-unwrap"
                elif kind == 6:
                    blob = await backend.gcm_encrypt_in_hsm(kek, "gcm", dek.wrapped, b"x", b"")
                    assert await backend.gcm_decrypt_in_hsm(kek, "gcm", dek.wrapped, blob, b"")
                    name = "hsm-gcm"
                else:
                    # blocking callers from other threads, as the storage layer will be
                    try:
                        value = await asyncio.to_thread(counter.read)
                        await asyncio.to_thread(counter.advance, value)
                    except CounterConflict:
                        pass
                    await backend.run_on_token("ident", record)
                    name = "counter+ident"
                counts[name] = counts.get(name, 0) + 1

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return {
            "ops": sum(counts.values()),
            "counts": counts,
            "worker_threads": len(backend.worker.thread_ids_seen()),
            "ident_threads": len(idents),
            "worker_is_main": backend.worker.thread_id == threading.get_ident(),
            "hsm_calls": backend.stats.total_operations(),
        }
    finally:
        await backend.close()


if __name__ == "__main__":
    result = asyncio.run(main(float(sys.argv[1]), int(sys.argv[2])))
    print(json.dumps(result), flush=True)
