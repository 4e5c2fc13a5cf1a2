"""Child process for the kill -9 test: put records in a loop, print 'ack N' after each
put returns (that is, once the store acknowledged it)."""

from __future__ import annotations

import sys
from pathlib import Path

from enclave.storage.sqlite import SqliteStore
from tests.storage.file_counter import FileCounter


def main() -> None:
    db, counter_path, key_hex = sys.argv[1], sys.argv[2], sys.argv[3]
    store = SqliteStore.open(
        Path(db), bytes.fromhex(key_hex), FileCounter(Path(counter_path)), create=True
    )
    print("ready", flush=True)
    i = 0
    while True:
        with store.transaction() as tx:
            tx.put("audit", f"rec-{i:06d}", f"value {i}".encode() * 20)
            tx.put("keys", "latest", str(i).encode())
        print(f"ack {i}", flush=True)
        i += 1


if __name__ == "__main__":
    main()
