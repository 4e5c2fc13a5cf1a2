"""One PyKMIP client connection for bench/pykmip_baseline.py. Runs in the PyKMIP venv.

Usage: client_worker.py CLIENT_CONFIG INDEX CONNECTIONS PAYLOAD_SIZE

CONNECTIONS ProxyKmipClient connections, one thread each (a few processes with threads rather
than one process per connection: importing PyKMIP's client costs ~1.3 s of CPU per process).

Protocol on stdin/stdout, one line each:
  worker -> parent  ``ready`` (connected; worker 0 sends ``ready <uid>`` after creating and
                    activating the shared AES-256 key)
  parent -> worker  ``go <uid> <t0> <duration> <gap>`` (wall-clock start of the first window)
  worker -> parent  one JSON object: operations completed inside each window, by phase,
                    summed over its connections.

Phases, each ``duration`` seconds, ``gap`` seconds apart, in this order:
  encrypt  Encrypt(uid, payload) with AES-256-CBC, PKCS#5 padding, server-generated IV
  decrypt  Decrypt(uid, ciphertext, IV) of one ciphertext made (and checked) before the windows
  datakey  Create(AES, 256) then Get of the new key: KMIP has no GenerateDataKey, so the
           closest analogue is a fresh symmetric key plus fetching its bytes (2 round trips,
           counted as one data-key operation)

AES-GCM is not used: PyKMIP's server engine can do GCM, but its ProxyKmipClient has no way
to send additional data or to return/pass the authentication tag, so CBC + PKCS5 is the
authenticated-encryption-free mode the stock client can drive end to end.
"""

import json
import os
import sys
import threading
import time

from kmip import enums
from kmip.pie.client import ProxyKmipClient

PARAMETERS = {
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
    "block_cipher_mode": enums.BlockCipherMode.CBC,
    "padding_method": enums.PaddingMethod.PKCS5,
}


def _window(operation, start: float, end: float) -> int:
    now = time.time()
    if now < start:
        time.sleep(start - now)
    count = 0
    while True:
        operation()
        if time.time() >= end:
            return count
        count += 1


class Connection:
    """One ProxyKmipClient connection and the operations it times."""

    def __init__(self, config_file: str, payload: bytes) -> None:
        self.client = ProxyKmipClient(config="client", config_file=config_file)
        self.client.open()
        self.payload = payload
        self.uid = ""
        self.ciphertext = b""
        self.iv = b""

    def create_shared_key(self) -> str:
        uid = self.client.create(
            enums.CryptographicAlgorithm.AES,
            256,
            cryptographic_usage_mask=[
                enums.CryptographicUsageMask.ENCRYPT,
                enums.CryptographicUsageMask.DECRYPT,
            ],
        )
        self.client.activate(uid)
        return uid

    def prepare(self, uid: str) -> None:
        """Warm up and make the ciphertext that the decrypt phase keeps decrypting."""
        self.uid = uid
        self.ciphertext, self.iv = self.client.encrypt(
            self.payload, uid=uid, cryptographic_parameters=PARAMETERS
        )
        self.decrypt_check()

    def encrypt(self) -> None:
        self.client.encrypt(self.payload, uid=self.uid, cryptographic_parameters=PARAMETERS)

    def decrypt(self) -> None:
        self.client.decrypt(
            self.ciphertext,
            uid=self.uid,
            cryptographic_parameters=PARAMETERS,
            iv_counter_nonce=self.iv,
        )

    def decrypt_check(self) -> None:
        plaintext = self.client.decrypt(
            self.ciphertext,
            uid=self.uid,
            cryptographic_parameters=PARAMETERS,
            iv_counter_nonce=self.iv,
        )
        if plaintext != self.payload:
            raise RuntimeError("PyKMIP decrypt did not return the plaintext")

    def datakey(self) -> None:
        key_uid = self.client.create(enums.CryptographicAlgorithm.AES, 256)
        if len(self.client.get(key_uid).value) != 32:
            raise RuntimeError("PyKMIP returned a key of the wrong size")

    def run(self, t0: float, duration: float, gap: float, counts: dict[str, int]) -> None:
        start = t0
        for name in ("encrypt", "decrypt", "datakey"):
            done = _window(getattr(self, name), start, start + duration)
            with LOCK:
                counts[name] = counts.get(name, 0) + done
            start += duration + gap


LOCK = threading.Lock()


def main() -> None:
    config_file, index = sys.argv[1], int(sys.argv[2])
    connections_wanted, payload_size = int(sys.argv[3]), int(sys.argv[4])
    payload = os.urandom(payload_size)
    connections = [Connection(config_file, payload) for _ in range(connections_wanted)]
    try:
        if index == 0:
            print(f"ready {connections[0].create_shared_key()}", flush=True)
        else:
            print("ready", flush=True)

        command = sys.stdin.readline().split()
        if not command or command[0] != "go":
            return
        uid = command[1]
        t0, duration, gap = float(command[2]), float(command[3]), float(command[4])
        for connection in connections:
            connection.prepare(uid)

        counts: dict[str, int] = {}
        errors: list[BaseException] = []

        def run(connection: Connection) -> None:
            try:
                connection.run(t0, duration, gap, counts)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(c,)) for c in connections]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        print(json.dumps(counts), flush=True)
    finally:
        for connection in connections:
            connection.client.close()


if __name__ == "__main__":
    main()
