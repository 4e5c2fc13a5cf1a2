"""Run in a child process: open the token under STATE, do one counter action, print JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from enclave.hsm.backend import HsmBackend
from enclave.hsm.counter import HsmMonotonicCounter
from enclave.hsm.token import SoftHsmToken
from enclave.storage.counter import CounterConflict


def main() -> int:
    state, pin, action = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    prov = SoftHsmToken.provision(state, "counter-test", user_pin=pin)
    backend = HsmBackend.open_blocking(prov.token.config(), pin)
    try:
        counter = HsmMonotonicCounter(backend)
        out: dict[str, object] = {"before": counter.read()}
        if action == "advance3":
            for _ in range(3):
                out["after"] = counter.advance(counter.read())
        elif action == "stale-advance":
            try:
                counter.advance(0)
                out["conflict"] = False
            except CounterConflict:
                out["conflict"] = True
            out["after"] = counter.advance(counter.read())
    finally:
        backend.close_blocking()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
