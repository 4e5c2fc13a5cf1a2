"""HSM backend throughput: the async facade (one PKCS#11 worker thread) against raw
python-pkcs11 calls doing the same work on the same SoftHSM2 token in the same run.

The raw baseline runs its loop directly on the backend's worker thread (PKCS#11 must not be
called from two threads), so the ratio is the cost of the facade: the hop from the event
loop to the worker and back, stats, error mapping. A last row measures where AES-256-GCM
should run: in enclave memory (KeyHierarchy.encrypt, cached unwrapped DEK) against
CKM_AES_GCM in the HSM on a cached session key.

The measurement runs in a child process with its own token in a temp dir, because a
process holds one SoftHSM2 configuration and one open backend.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import BenchResult, rate, result

SECONDS = 0.5
REPEATS = 3
PAYLOAD = b"\x5a" * 1024


def run() -> list[BenchResult]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_hsm", "--child"],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench_hsm child failed: {done.stderr.decode()[-2000:]}")
    rows: list[BenchResult] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return rows


def _child() -> list[BenchResult]:
    from pkcs11 import Attribute, KeyType, ObjectClass

    from enclave.hsm.backend import (
        _AES_NO_USE,
        _AES_WRAP_ONLY,
        WRAP_MECHANISM,
        HsmBackend,
        KekRef,
        TokenSession,
    )
    from enclave.hsm.token import SoftHsmToken
    from enclave.keys.hierarchy import KeyHierarchy
    from enclave.keys.metadata import Algorithm, Purpose

    state = Path(tempfile.mkdtemp(prefix="kms-bench-hsm-"))
    prov = SoftHsmToken.provision(state, "bench")
    assert prov.user_pin is not None
    loop = asyncio.new_event_loop()
    backend = loop.run_until_complete(HsmBackend.open(prov.token.config(), prov.user_pin))
    try:
        hierarchy = KeyHierarchy(backend)
        loop.run_until_complete(hierarchy.bootstrap())
        kek_meta = loop.run_until_complete(hierarchy.create_kek("bench"))
        kek_v = kek_meta.versions[0]
        kek = KekRef(kek_v.cache_id, kek_v.wrapped)
        _, dek = loop.run_until_complete(
            hierarchy.create_key(Purpose.ENCRYPT, Algorithm.AES_256_GCM, kek=kek_v, owner="b")
        )

        def facade(coro_fn: Any) -> float:
            return rate(
                lambda: loop.run_until_complete(coro_fn()), seconds=SECONDS, repeats=REPEATS
            )

        kek_template = {**_AES_WRAP_ONLY, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True}
        dek_template = {**_AES_NO_USE, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True}
        unwrap_template = {
            **_AES_WRAP_ONLY,
            Attribute.TOKEN: False,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
        }

        def gen_wrap(st: TokenSession, wrapping: Any, template: dict[Any, Any]) -> None:
            key = st.session.generate_key(KeyType.AES, 256, store=False, template=template)
            wrapping.wrap_key(key, mechanism=WRAP_MECHANISM)
            key.destroy()

        def unwrap(master: Any) -> None:
            master.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                kek.wrapped,
                mechanism=WRAP_MECHANISM,
                template=unwrap_template,
            ).destroy()

        def raw(make_op: Any) -> float:
            # The whole timed loop runs on the worker thread: raw calls, no hop per call;
            # PKCS#11 objects are looked up there and dropped before returning.
            rated: float = backend.run_on_token_blocking(
                "bench.raw", lambda st: rate(make_op(st), seconds=SECONDS, repeats=REPEATS)
            )
            return rated

        # Facade and raw measured back to back per operation: the machine is shared.
        facade_kek_wrap = facade(backend.generate_kek)
        raw_kek_wrap = raw(lambda st: lambda: gen_wrap(st, st.master_key(), kek_template))
        facade_kek_unwrap = facade(lambda: backend.unwrap_kek_uncached(kek))
        raw_kek_unwrap = raw(lambda st: lambda: unwrap(st.master_key()))
        facade_dek = facade(lambda: backend.generate_data_key(kek, with_plaintext=False))

        async def eight_deks() -> None:
            await asyncio.gather(
                *(backend.generate_data_key(kek, with_plaintext=False) for _ in range(8))
            )

        facade_dek_8 = 8 * facade(eight_deks)
        raw_dek = raw(lambda st: lambda: gen_wrap(st, st.kek(kek), dek_template))
        in_memory_gcm = facade(lambda: hierarchy.encrypt(dek, kek_v, PAYLOAD, b"ctx"))
        hsm_gcm = facade(lambda: backend.gcm_encrypt_in_hsm(kek, "g", dek.wrapped, PAYLOAD, b"ctx"))
        raw_rates = {"kek_wrap": raw_kek_wrap, "kek_unwrap": raw_kek_unwrap, "dek": raw_dek}
        target = ">= 0.5 (facade overhead vs raw python-pkcs11)"
        return [
            result("hsm KEK generate+wrap (facade)", facade_kek_wrap, "ops/s",
                   "raw python-pkcs11", raw_rates["kek_wrap"], target),
            result("hsm KEK unwrap (facade)", facade_kek_unwrap, "ops/s",
                   "raw python-pkcs11", raw_rates["kek_unwrap"], target),
            result("hsm data-key generate+wrap (facade)", facade_dek, "ops/s",
                   "raw python-pkcs11", raw_rates["dek"], target),
            result("hsm data-key generate+wrap (facade, 8 in flight)", facade_dek_8, "ops/s",
                   "raw python-pkcs11", raw_rates["dek"], target),
            result("AES-256-GCM 1KiB in enclave memory", in_memory_gcm, "ops/s",
                   "CKM_AES_GCM in HSM via facade", hsm_gcm, ">= 1 (placement choice)"),
        ]  # fmt: skip
    finally:
        loop.run_until_complete(backend.close())
        loop.close()


if __name__ == "__main__" and sys.argv[1:] == ["--child"]:
    print(json.dumps(_child()), flush=True)
