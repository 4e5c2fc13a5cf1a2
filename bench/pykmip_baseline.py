"""PyKMIP baseline: PyKMIP's KMIP server doing our benchmark's operations on this machine.

The KMS target is ">= 10x PyKMIP's throughput" for the same operations on the same machine.
``measure_pykmip()`` measures that baseline end to end, over real mutual-TLS connections:

1. PyKMIP lives in its own venv, ``.bench/pykmip-venv`` (created on first use with
   ``python -m venv`` + ``pip install -r bench/pykmip/requirements.txt``, pinned versions),
   so installing it never moves the service's pins in ``.venv``. ``PYKMIP_PYTHON=/path/to/python``
   uses an interpreter that already has PyKMIP instead.
2. Throwaway CA, server and client certificates (ECDSA P-256) go into a temp dir, with a
   server config (loopback, a free port, SQLite database in the temp dir, TLS 1.2, empty policy
   dir, the built-in "default" policy) and a client config, from ``bench/pykmip/*.conf.in``.
3. The server runs as a subprocess (``bench/pykmip/run_server.py``: PyKMIP's KmipServer as its
   ``pykmip-server`` CLI runs it, minus live policy reloading) until it accepts connections.
4. ``concurrency`` ProxyKmipClient connections, one thread each, spread over min(concurrency,
   CPU count) client processes (``bench/pykmip/client_worker.py``). The first creates and
   activates one AES-256 key; then all run, in the same wall-clock windows of ``duration``
   seconds each:
     encrypt  Encrypt of ``payload_size`` bytes, AES-256-CBC + PKCS#5 padding, IV made by the
              server (PyKMIP's client cannot carry a GCM tag or AAD, so GCM is out of reach)
     decrypt  Decrypt of one such ciphertext with its IV
     datakey  Create of a new AES-256 symmetric key + Get of it: KMIP has no GenerateDataKey,
              this is the closest analogue (two round trips, counted as one operation)
   An operation counts when it completes inside its window; rates are the sums over all
   connections divided by ``duration``.
5. The server is stopped with SIGINT (leftovers in its process group are killed) and the temp
   dir removed.

Run it: ``.venv/bin/python -m bench.pykmip_baseline [--duration 5] [--concurrency 8]``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent / "pykmip"
REPO = HERE.parents[1]
VENV = REPO / ".bench" / "pykmip-venv"
REQUIREMENTS = HERE / "requirements.txt"
PHASES = ("encrypt", "decrypt", "datakey")
CLIENT_IDENTITY = "enclave-kms-bench-client"


@dataclass
class BaselineRun:
    """Everything one measurement saw; ``rates`` is what ``measure_pykmip`` returns."""

    rates: dict[str, float]
    counts: dict[str, int]
    server_cpu: dict[str, float] = field(default_factory=dict)  # cores busy, server + children
    # rate / server_cpu: ops per second of server CPU. Far steadier than ``rates`` on a shared
    # machine (the server is single-threaded under a lock, so this is its one-core ceiling).
    per_server_core: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0
    concurrency: int = 0
    payload_size: int = 0
    pykmip_version: str = ""
    wall_seconds: float = 0.0


def measure_pykmip(duration: float = 5.0, concurrency: int = 8) -> dict[str, float]:
    """PyKMIP server operations per second: ``{"encrypt": .., "decrypt": .., "datakey": ..}``."""
    return run_baseline(duration=duration, concurrency=concurrency).rates


def run_baseline(
    duration: float = 5.0,
    concurrency: int = 8,
    *,
    payload_size: int = 1024,
    gap: float = 0.25,
    logging_level: str = "WARNING",
) -> BaselineRun:
    """Start a PyKMIP server, drive it with ``concurrency`` clients, stop it; see module doc.

    ``logging_level`` is the server's; WARNING spares it a log line per request (INFO, its
    default, costs it a few percent), so the baseline is PyKMIP at its best.
    """
    if duration <= 0 or concurrency < 1 or payload_size < 1:
        raise ValueError("duration > 0, concurrency >= 1 and payload_size >= 1 are required")
    started = time.monotonic()
    python = ensure_pykmip_python()
    with tempfile.TemporaryDirectory(prefix="pykmip-baseline-") as tmp:
        work = Path(tmp)
        port = _free_port()
        files = write_configs(work, port, logging_level=logging_level)
        processes: list[subprocess.Popen[bytes]] = []
        budget = 45.0 + 3 * (duration + gap)
        watchdog = threading.Timer(budget, _kill_all, args=(processes,))
        watchdog.daemon = True
        watchdog.start()
        server = _start_server(python, work, files, port, processes)
        try:
            counts, cpu = _drive(
                python,
                work,
                files["client_conf"],
                processes,
                server.pid,
                concurrency=concurrency,
                duration=duration,
                gap=gap,
                payload_size=payload_size,
            )
        finally:
            watchdog.cancel()
            _stop_server(server)
            _kill_all(processes)
        version = _pykmip_version(python)
    return BaselineRun(
        rates={name: round(counts[name] / duration, 1) for name in PHASES},
        counts=counts,
        server_cpu=cpu,
        per_server_core={
            name: round(counts[name] / duration / cpu[name], 1) if cpu.get(name) else 0.0
            for name in PHASES
        },
        duration=duration,
        concurrency=concurrency,
        payload_size=payload_size,
        pykmip_version=version,
        wall_seconds=round(time.monotonic() - started, 1),
    )


# --- the PyKMIP interpreter -------------------------------------------------------------------


def ensure_pykmip_python() -> Path:
    """A Python with PyKMIP: $PYKMIP_PYTHON, else .bench/pykmip-venv (created or refreshed
    when bench/pykmip/requirements.txt changed; needs PyPI the first time, ~20 s)."""
    override = os.environ.get("PYKMIP_PYTHON")
    if override:
        return Path(override)
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements.txt"
    wanted = REQUIREMENTS.read_text()
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "pykmip-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator at a time (bench and test may race)
        if python.exists() and stamp.exists() and stamp.read_text() == wanted:
            return python
        if VENV.exists():
            shutil.rmtree(VENV)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
        for command in (
            [*pip, "install", "-r", str(REQUIREMENTS)],
            [str(python), "-W", "ignore", "-c", "import kmip.pie.client, kmip.services.server"],
        ):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{command} failed:\n{done.stdout}{done.stderr}")
        stamp.write_text(wanted)
    return python


def _pykmip_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('pykmip'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


# --- certificates and configs -----------------------------------------------------------------


def make_certs(directory: Path) -> dict[str, Path]:
    """CA, server (SAN 127.0.0.1/localhost) and client (CN = the client identity) certs."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "PyKMIP baseline CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca_cert": directory / "ca.pem"}
    paths["ca_cert"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(name: str, common_name: str, usage: x509.ObjectIdentifier) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[f"{name}_cert"] = directory / f"{name}.pem"
        paths[f"{name}_key"] = directory / f"{name}-key.pem"
        paths[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{name}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        paths[f"{name}_key"].chmod(0o600)

    leaf("server", "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH)
    leaf("client", CLIENT_IDENTITY, ExtendedKeyUsageOID.CLIENT_AUTH)
    return paths


def write_configs(directory: Path, port: int, *, logging_level: str = "WARNING") -> dict[str, Path]:
    """Certificates, server.conf and client.conf in ``directory``: their paths by name
    (``ca_cert``, ``server_cert``/``_key``, ``client_cert``/``_key``, ``server_conf``,
    ``client_conf``)."""
    files = make_certs(directory)
    values = {k: str(v) for k, v in files.items()}
    policy_dir = directory / "policies"
    policy_dir.mkdir()
    values.update(
        port=str(port),
        policy_dir=str(policy_dir),
        database=str(directory / "pykmip.sqlite"),
        logging_level=logging_level,
    )
    for name in ("server", "client"):
        template = string.Template((HERE / f"{name}.conf.in").read_text())
        path = files[f"{name}_conf"] = directory / f"{name}.conf"
        path.write_text(template.substitute(values))
    return files


# --- processes --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(
    python: Path,
    work: Path,
    files: dict[str, Path],
    port: int,
    processes: list[subprocess.Popen[bytes]],
) -> subprocess.Popen[bytes]:
    log = work / "server.log"
    server = subprocess.Popen(
        [str(python), str(HERE / "run_server.py"), str(files["server_conf"]), str(log)],
        cwd=work,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "server.stderr", "wb"),  # noqa: SIM115 (closed with the temp dir)
        start_new_session=True,  # its Manager process shares the group; see _stop_server
    )
    processes.append(server)
    # Ready = a full mutual-TLS handshake with the client certificate succeeds (a bare TCP
    # probe would leave a handshake-failure traceback in the server log).
    context = ssl.create_default_context(cafile=str(files["ca_cert"]))
    context.load_cert_chain(files["client_cert"], files["client_key"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("PyKMIP server exited at start:\n" + _tail(work, "server"))
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return server
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        "PyKMIP server did not accept connections in 30 s:\n" + _tail(work, "server")
    )


def _drive(
    python: Path,
    work: Path,
    client_conf: Path,
    processes: list[subprocess.Popen[bytes]],
    server_pid: int,
    *,
    concurrency: int,
    duration: float,
    gap: float,
    payload_size: int,
) -> tuple[dict[str, int], dict[str, float]]:
    # The server handles one request at a time (a global engine lock), so a few client
    # processes with threads keep it saturated; one process per connection would spend
    # seconds importing PyKMIP on a 2-core machine. Connections are dealt out evenly.
    process_count = min(concurrency, os.cpu_count() or 1)
    shares = [
        concurrency // process_count + (i < concurrency % process_count)
        for i in range(process_count)
    ]
    workers = []
    for index, share in enumerate(shares):
        worker = subprocess.Popen(
            [
                str(python),
                str(HERE / "client_worker.py"),
                str(client_conf),
                str(index),
                str(share),
                str(payload_size),
            ],
            cwd=work,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(work / f"worker{index}.stderr", "wb"),  # noqa: SIM115
        )
        processes.append(worker)
        workers.append(worker)
    uid = ""
    for index, worker in enumerate(workers):
        assert worker.stdout is not None
        line = worker.stdout.readline().decode().split()  # the watchdog bounds this wait
        if not line or line[0] != "ready":
            raise RuntimeError(f"PyKMIP client {index} failed:\n" + _tail(work, f"worker{index}"))
        if index == 0:
            uid = line[1]
    t0 = time.time() + 0.5 + 0.05 * concurrency  # room for each worker's warm-up round trips
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write(f"go {uid} {t0!r} {duration!r} {gap!r}\n".encode())
        worker.stdin.close()

    cpu: dict[str, float] = {}
    for number, name in enumerate(PHASES):
        start = t0 + number * (duration + gap)
        _sleep_until(start)
        before = _group_cpu_seconds(server_pid)
        _sleep_until(start + duration)
        cpu[name] = round((_group_cpu_seconds(server_pid) - before) / duration, 2)

    counts = dict.fromkeys(PHASES, 0)
    for index, worker in enumerate(workers):
        assert worker.stdout is not None
        out = worker.stdout.read().decode().strip().splitlines()
        if worker.wait() != 0 or not out:
            raise RuntimeError(f"PyKMIP client {index} failed:\n" + _tail(work, f"worker{index}"))
        for name, value in json.loads(out[-1]).items():
            counts[name] += int(value)
    return counts, cpu


def _sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        time.sleep(delay)


def _group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid``."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # fields[0] is state; pgrp is the 5th field of stat
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    # The multiprocessing Manager and policy monitor live in the server's own session.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, signal.SIGKILL)


def _kill_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def _tail(work: Path, name: str, lines: int = 30) -> str:
    text = ""
    for suffix in (".stderr", ".log"):
        path = work / f"{name}{suffix}"
        if path.exists():
            text += "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pykmip_baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per operation")
    parser.add_argument("--concurrency", type=int, default=8, help="client connections")
    parser.add_argument("--payload-size", type=int, default=1024, help="plaintext bytes")
    parser.add_argument("--setup-only", action="store_true", help="only create the PyKMIP venv")
    args = parser.parse_args(argv)
    if args.setup_only:
        print(ensure_pykmip_python())
        return 0
    run = run_baseline(args.duration, args.concurrency, payload_size=args.payload_size)
    print(
        json.dumps(
            {**run.rates, "details": {k: v for k, v in vars(run).items() if k != "rates"}}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
