from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pkcs11 import Attribute, ObjectClass

from enclave.hsm.backend import HsmBackend, TokenSession
from enclave.hsm.config import APPLICATION
from enclave.hsm.counter import HsmMonotonicCounter
from enclave.storage.counter import CounterConflict, MonotonicCounter
from tests.hsm.support import require_softhsm

ROOT = Path(__file__).resolve().parents[2]


def fresh_counter(backend: HsmBackend) -> HsmMonotonicCounter:
    return HsmMonotonicCounter(backend, label=f"test-counter-{os.urandom(4).hex()}")


async def test_counter_starts_at_zero_and_advances_by_one(backend: HsmBackend) -> None:
    counter = fresh_counter(backend)
    assert await counter.read_async() == 0
    assert await counter.advance_async(0) == 1
    assert await counter.advance_async(1) == 2
    assert await asyncio.to_thread(counter.read) == 2
    assert await asyncio.to_thread(counter.advance, 2) == 3


async def test_counter_conflict_on_stale_or_future_expected_value(backend: HsmBackend) -> None:
    counter = fresh_counter(backend)
    await counter.advance_async(0)
    for wrong in (0, 2, 100):
        with pytest.raises(CounterConflict):
            await counter.advance_async(wrong)
    assert await counter.read_async() == 1


async def test_concurrent_advances_from_one_value_let_exactly_one_win(backend: HsmBackend) -> None:
    counter = fresh_counter(backend)
    results = await asyncio.gather(
        *(asyncio.to_thread(counter.advance, 0) for _ in range(6)), return_exceptions=True
    )
    assert results.count(1) == 1
    assert sum(isinstance(r, CounterConflict) for r in results) == 5


async def test_stale_counter_object_after_a_crash_is_harmless(backend: HsmBackend) -> None:
    """A crash between 'create n+1' and 'destroy n' leaves two objects; the max wins."""
    counter = fresh_counter(backend)
    await counter.advance_async(0)
    await counter.advance_async(1)

    def plant_stale(st: TokenSession) -> None:
        st.session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.LABEL: counter._label,
                Attribute.APPLICATION: APPLICATION,
                Attribute.VALUE: (1).to_bytes(8, "big"),
            }
        )

    await backend.run_on_token("test.plant", plant_stale)
    assert await counter.read_async() == 2
    assert await counter.advance_async(2) == 3

    def count(st: TokenSession) -> int:
        return len(counter._objects(st))

    assert await backend.run_on_token("test.count", count) == 1


def test_counter_satisfies_the_storage_protocol(backend: HsmBackend) -> None:
    counter: MonotonicCounter = fresh_counter(backend)
    assert counter.read() == 0


def test_counter_persists_across_processes(tmp_path: Path) -> None:
    require_softhsm()
    pin = "counter-pin-1"

    def child(action: str) -> dict[str, object]:
        done = subprocess.run(
            [sys.executable, "-m", "tests.hsm.counter_child", str(tmp_path), pin, action],
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return json.loads(done.stdout.decode().strip().splitlines()[-1])

    assert child("advance3") == {"before": 0, "after": 3}
    assert child("stale-advance") == {"before": 3, "conflict": True, "after": 4}
    assert child("read") == {"before": 4}
