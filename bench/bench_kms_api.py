"""KMS API throughput and latency end to end, beside a bare aiohttp HTTPS server and PyKMIP.

The path measured is the whole product: load generator -> host proxy (``kms-sim up``) ->
TLS terminated in the enclave process -> token authentication (cached verification) ->
strict body parsing -> the guarded service (grant check, HSM-backed KEK, cached DEK) ->
durable audit record (group commit) -> answer. The baseline is a bare aiohttp HTTPS server
on the same machine answering the same request with a body of the same size, driven by the
same load generator in the same run. Processes: ``kms-sim up`` (verifier, enclave, proxy),
the bare server, and the load generator: wrk (``bench.wrk``), which spends microseconds of
CPU per request where a Python client spends as much as the servers it drives. This
process attests the enclave and mints the token once with the ``kms`` client library; the
token is bound to the attested TLS key, so a request that reached anything but the
attested enclave would be refused, and any non-2xx answer fails the run.

Each operation is measured in ``ROUNDS`` rounds (``KMS_BENCH_ROUNDS``, default 5) of
``WINDOW_SECONDS`` (``KMS_BENCH_WINDOW``), ours and the bare server alternating; values are
medians over rounds and each row's baseline text states the spread (min-max of both sides).
The server side's CPU time per request (enclave + proxy processes, against the bare server
process) is reported too: unlike a rate, it hardly moves with other load on the machine.

Rows: requests/s for encrypt, decrypt and data key at ``CONNECTIONS`` concurrent keep-alive
connections, each sending its next request as soon as the last is answered (ratio to the
bare server's; target >= 0.60); p50/p99 latency at that load (target p99 <= 10 ms: with
every connection always waiting, Little's law gives mean latency = connections / rate, so
64 connections need 6,400 req/s for a 10 ms mean; the bare server's own p99 there is
printed beside ours); p99 at ``CONNECTIONS`` connections paced to the throughput target
(each connection waits before its next request so that together they offer 0.60 of the
bare server's rate: the latency at the target load, ours and the bare server's, median of
``PACED_ROUNDS`` alternating rounds); the highest encrypt load, of 0.2-0.6 of the bare
server's rate, at which the median p99 stays <= 10 ms, ours and the bare server's; p99 one
request at a time; our rate against PyKMIP's for the same operations
(``bench.pykmip_baseline.measure_pykmip``; target >= 10x), and the latency of a lifecycle
write (key creation: one store commit with fsync + HSM counter, on the store's thread).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BenchResult, result
from bench.wrk import WrkLoad, WrkRun, run_wrk

CONNECTIONS = 64
Run = dict[str, float]  # one wrk run's figures
# Short rounds, ours and the bare server alternating (which one goes first alternates too),
# reported as medians with the spread over rounds: the machine is shared and noisy, and a
# burst of someone else's load then hits both sides alike instead of one run.
ROUNDS = int(os.environ.get("KMS_BENCH_ROUNDS", "5"))
WINDOW_SECONDS = int(os.environ.get("KMS_BENCH_WINDOW", "3"))  # wrk takes whole seconds
PACED_SECONDS = 3
PACED_ROUNDS = 3
# Latency against load: encrypt at these shares of the bare server's rate, both sides.
SWEEP_OPERATION = "encrypt"
SWEEP_SHARES = (0.2, 0.3, 0.4, 0.5)
SWEEP_ROUNDS = 2
SWEEP_P99_MS = 10.0
SINGLE_SECONDS = 1
TARGET_RATIO = 0.60
PAYLOAD_BYTES = 1024
READY_TIMEOUT = 120.0
ROOT = Path(__file__).resolve().parent.parent


# -- the load (wrk) ---------------------------------------------------------------------------
def _load(url: str, body: str, headers: dict[str, str], *, connections: int, seconds: int,
          delay_ms: float | None = None) -> WrkRun:  # fmt: skip
    return run_wrk(WrkLoad(
        url=url, connections=connections, seconds=seconds, method="POST", body=body,
        headers={"Content-Type": "application/json", **headers}, delay_ms=delay_ms,
    ))  # fmt: skip


# -- the bare server (a separate process) ---------------------------------------------------------
async def _bare_server(cert: str, key: str, answer_bytes: int) -> None:
    from aiohttp import web

    payload = json.dumps({"key_id": "k", "ciphertext": "A" * max(0, answer_bytes - 40)})

    async def handle(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(text=payload, content_type="application/json")

    app = web.Application(client_max_size=2 * 1024 * 1024)
    app.router.add_post("/v1/{op}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())  # as the enclave's TLS key
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA384())
    )  # fmt: skip
    cert_path, key_path = directory / "bare.crt", directory / "bare.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


def _spawn(args: list[str], prefix: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return process, line[len(prefix) :].strip()
        if not line and process.poll() is not None:
            break
    _stop(process)
    raise RuntimeError(f"{args} did not print {prefix!r}")


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- the run ---------------------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants (Linux /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(c) for c in children)
        except (OSError, ValueError, IndexError):
            continue
    return total


def _kms_requests(profile_path: Path) -> tuple[dict[str, str], dict[str, dict[str, Any]], float]:
    """Attest, mint one token for the attested key, make a key and a ciphertext; the
    request headers and bodies, and the lifecycle write latency (ms, median of key
    creations)."""
    from kms.credentials import Credentials, SyncAuthorizedClient
    from kms.profile import Profile

    profile = Profile.load(profile_path)
    credentials = Credentials.from_profile(profile)
    with SyncAuthorizedClient(profile, credentials) as client:
        creations = []
        for _ in range(5):
            start = time.perf_counter()
            key = client.post("/v1/keys", {"purpose": "encrypt"})
            creations.append(1000 * (time.perf_counter() - start))
        key_id = key["id"]
        plaintext = base64.b64encode(os.urandom(PAYLOAD_BYTES)).decode()
        context = {"tenant": "bench"}
        sealed = client.post("/v1/encrypt", {"key_id": key_id, "plaintext": plaintext,
                                             "context": context})  # fmt: skip
        info = client.get("/v1/auth/info")
        inner = client._client.client  # the attested AsyncKmsClient
        attested = inner.attested()
        assert attested is not None
    from enclave.tls import spki_der_of_certificate

    spki = spki_der_of_certificate(attested.certificate_der)
    token = credentials.token(audience=info["audience"], lifetime=300, tls_spki_der=spki)
    headers = {"Authorization": f"Bearer {token}"}
    bodies = {
        "encrypt": {"key_id": key_id, "plaintext": plaintext, "context": context},
        "decrypt": {"ciphertext": sealed["ciphertext"], "context": context},
        "datakey": {"key_id": key_id, "context": context},
    }
    return headers, bodies, statistics.median(creations)


def _measured(server_pid: int, url: str, body: str, headers: dict[str, str]) -> dict[str, float]:
    """One closed-loop run at ``CONNECTIONS`` and one request at a time, with the server
    side's CPU seconds per request over both."""
    before = _cpu_seconds(server_pid)
    loaded = _load(url, body, headers, connections=CONNECTIONS, seconds=WINDOW_SECONDS)
    single = _load(url, body, headers, connections=1, seconds=SINGLE_SECONDS)
    spent = _cpu_seconds(server_pid) - before
    return {
        "rate": loaded.rate, "p50_ms": loaded.p50_ms, "p99_ms": loaded.p99_ms,
        "single_p50_ms": single.p50_ms, "single_p99_ms": single.p99_ms,
        "cpu_ms_per_request": 1000 * spent / max(1, loaded.requests + single.requests),
    }  # fmt: skip


def _paced(
    url: str, body: str, headers: dict[str, str], rate: float, latency_ms: float
) -> dict[str, float]:
    """``CONNECTIONS`` connections together offering about ``rate`` req/s: each waits a
    random time (exponential, mean ``CONNECTIONS / rate`` less the unloaded latency) before
    its next request (wrk's ``delay``; the rate achieved is reported beside the latency)."""
    delay_ms = max(0.0, 1000 * CONNECTIONS / rate - latency_ms)
    run = _load(url, body, headers, connections=CONNECTIONS, seconds=PACED_SECONDS,
                delay_ms=delay_ms)  # fmt: skip
    return {"paced_rate": run.rate, "paced_p50_ms": run.p50_ms, "paced_p99_ms": run.p99_ms}


SYNC_SAMPLES = 200


def _sync_append_latency_ms(directory: Path) -> tuple[float, float]:
    """p50 and p99 of appending a record-sized line as the audit sink does (``O_APPEND |
    O_DSYNC``: the write returns once the line is on stable storage), on the filesystem of
    the audit log: every answered request waits for at least one such write (group commit
    shares it), so its p99 is a floor under the request p99."""
    path = directory / "sync-probe.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_DSYNC, 0o600)
    samples = []
    try:
        for _ in range(SYNC_SAMPLES):
            start = time.perf_counter()
            os.write(fd, b"x" * 400 + b"\n")
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


def _sweep_row(sweep: dict[float, dict[str, list[Run]]]) -> BenchResult:
    """The highest load (of those tried) at which the median p99 stays <= 10 ms, ours and
    the bare server's, as achieved req/s; every step's p99s are in the baseline text."""

    def highest(side: str) -> float:
        rates = [_median(runs[side], "paced_rate") for runs in sweep.values()
                 if _median(runs[side], "paced_p99_ms") <= SWEEP_P99_MS]  # fmt: skip
        return max(rates, default=0.0)

    steps = "; ".join(
        f"{share:.2f}: ours {_median(runs['ours'], 'paced_p99_ms'):.1f} ms at "
        f"{_median(runs['ours'], 'paced_rate'):.0f}/s, bare "
        f"{_median(runs['bare'], 'paced_p99_ms'):.1f} ms at "
        f"{_median(runs['bare'], 'paced_rate'):.0f}/s"
        for share, runs in sorted(sweep.items())
    )
    return result(
        f"kms_api_{SWEEP_OPERATION}_rps_at_p99_{SWEEP_P99_MS:.0f}ms_{CONNECTIONS}conn",
        highest("ours"), "req/s",
        f"bare aiohttp HTTPS, same sweep: {CONNECTIONS} conns offering a share of the bare "
        f"rate, median p99 of {SWEEP_ROUNDS} rounds per step ({steps})",
        highest("bare"), "informational")  # fmt: skip


def _median(runs: list[dict[str, float]], name: str) -> float:
    return float(statistics.median(r[name] for r in runs))


def _paired_ratio(ours: list[dict[str, float]], bare: list[dict[str, float]]) -> str:
    """The median of each round's ours/bare (the two ran back to back), and their range:
    steadier than the ratio of the medians when the machine's speed drifts."""
    ratios = sorted(o["rate"] / b["rate"] for o, b in zip(ours, bare, strict=True))
    return f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def _spread(runs: list[dict[str, float]], name: str, digits: int = 0) -> str:
    values = [r[name] for r in runs]
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"


@dataclass(frozen=True)
class Side:
    """One server under load: its closed-loop runs per operation, its base URL, the headers
    its requests carry, and the process whose CPU time is counted."""

    runs: dict[str, list[Run]]
    url: str
    headers: dict[str, str]
    pid: int


def _order(round_number: int) -> tuple[str, str]:
    """Which side goes first alternates between rounds."""
    return ("ours", "bare") if round_number % 2 == 0 else ("bare", "ours")


def _paced_rounds(
    sides: dict[str, Side], op: str, body: str, share: float, rounds: int
) -> dict[str, list[Run]]:
    """Both sides offered ``share`` of the bare server's closed-loop rate, in ``rounds``
    alternating rounds."""
    offered = share * _median(sides["bare"].runs[op], "rate")
    runs: dict[str, list[Run]] = {name: [] for name in sides}
    for round_number in range(rounds):
        for name in _order(round_number):
            side = sides[name]
            unloaded_ms = _median(side.runs[op], "single_p50_ms")
            runs[name].append(_paced(f"{side.url}/v1/{op}", body, side.headers, offered,
                                     unloaded_ms))  # fmt: skip
    return runs


def run() -> list[BenchResult]:
    rows: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-kms-api-") as tmp:
        work = Path(tmp)
        sim, url = _spawn(["-m", "simulator.cli", "up", "--state", str(work / "sim"),
                           "--listen", "127.0.0.1:0"], "ready ")  # fmt: skip
        cert, key = _self_signed(work)
        bare = None
        try:
            headers, bodies, write_ms = _kms_requests(work / "sim" / "client.toml")
            bare, port = _spawn(["-m", "bench.bench_kms_api", "bare", str(cert), str(key),
                                 str(PAYLOAD_BYTES * 2)], "ready ")  # fmt: skip
            ours: dict[str, list[Run]] = {op: [] for op in bodies}
            base: dict[str, list[Run]] = {op: [] for op in bodies}
            sides = {"ours": Side(ours, url, headers, sim.pid),
                     "bare": Side(base, f"https://127.0.0.1:{port}", {}, bare.pid)}  # fmt: skip
            for round_number in range(ROUNDS):
                for op, body in bodies.items():
                    for side in (sides[name] for name in _order(round_number)):
                        side.runs[op].append(_measured(side.pid, f"{side.url}/v1/{op}",
                                                       json.dumps(body), side.headers))  # fmt: skip
            paced = {op: _paced_rounds(sides, op, json.dumps(body), TARGET_RATIO, PACED_ROUNDS)
                     for op, body in bodies.items()}  # fmt: skip
            sweep = {share: _paced_rounds(sides, SWEEP_OPERATION,
                                          json.dumps(bodies[SWEEP_OPERATION]), share,
                                          SWEEP_ROUNDS)
                     for share in SWEEP_SHARES}  # fmt: skip
            sweep[TARGET_RATIO] = paced[SWEEP_OPERATION]
            sync_p50, sync_p99 = _sync_append_latency_ms(work)
        finally:
            if bare is not None:
                _stop(bare)
            _stop(sim)
    from bench.pykmip_baseline import measure_pykmip

    try:
        pykmip = measure_pykmip(duration=5, concurrency=8)
    except Exception as exc:  # no PyKMIP here: report the rest
        print(f"PyKMIP baseline unavailable: {exc}", file=sys.stderr)
        pykmip = {}
    n = f"median of {ROUNDS} rounds"
    for op in bodies:
        mine, bare_runs = ours[op], base[op]
        rate = _median(mine, "rate")
        rows.append(result(
            f"kms_api_{op}_rps_{CONNECTIONS}conn", rate, "req/s",
            f"bare aiohttp HTTPS, same body size, wrk {CONNECTIONS} conns; {n}, rounds: ours "
            f"{_spread(mine, 'rate')}, bare {_spread(bare_runs, 'rate')}; paired ratio "
            f"{_paired_ratio(mine, bare_runs)}",
            _median(bare_runs, "rate"), f">= {TARGET_RATIO:.2f}"))  # fmt: skip
        rows.append(result(
            f"kms_api_{op}_p50_ms_{CONNECTIONS}conn", _median(mine, "p50_ms"), "ms",
            f"bare aiohttp HTTPS p50 at the same load; {n}, rounds: ours "
            f"{_spread(mine, 'p50_ms', 1)}, bare {_spread(bare_runs, 'p50_ms', 1)}",
            _median(bare_runs, "p50_ms"), "informational"))  # fmt: skip
        rows.append(result(
            f"kms_api_{op}_p99_ms_{CONNECTIONS}conn", _median(mine, "p99_ms"), "ms",
            f"bare aiohttp HTTPS p99 at the same load (closed loop: mean latency = "
            f"{CONNECTIONS} / rate); {n}, rounds: ours "
            f"{_spread(mine, 'p99_ms', 1)}, bare {_spread(bare_runs, 'p99_ms', 1)}",
            _median(bare_runs, "p99_ms"), "<= 10 ms"))  # fmt: skip
        at = paced[op]
        rows.append(result(
            f"kms_api_{op}_p99_ms_{CONNECTIONS}conn_paced", _median(at["ours"], "paced_p99_ms"),
            "ms", f"bare aiohttp HTTPS p99 at the same pacing: {CONNECTIONS} conns offering "
            f"{TARGET_RATIO:.2f} of the bare rate; median of {PACED_ROUNDS} rounds: ours "
            f"{_spread(at['ours'], 'paced_p99_ms', 1)}, bare "
            f"{_spread(at['bare'], 'paced_p99_ms', 1)} (achieved req/s: ours "
            f"{_median(at['ours'], 'paced_rate'):.0f}, bare "
            f"{_median(at['bare'], 'paced_rate'):.0f})",
            _median(at["bare"], "paced_p99_ms"), "<= 10 ms"))  # fmt: skip
        rows.append(result(
            f"kms_api_{op}_p99_ms_unloaded", _median(mine, "single_p99_ms"), "ms",
            f"bare aiohttp HTTPS p99, one request at a time; {n}, rounds: ours "
            f"{_spread(mine, 'single_p99_ms', 1)}, bare {_spread(bare_runs, 'single_p99_ms', 1)}",
            _median(bare_runs, "single_p99_ms"), "<= 10 ms"))  # fmt: skip
        rows.append(result(
            f"kms_api_{op}_server_cpu_ms_per_req", _median(mine, "cpu_ms_per_request"), "ms",
            "bare aiohttp HTTPS server's CPU per request; ours = enclave + proxy processes; "
            f"{n}, rounds: ours {_spread(mine, 'cpu_ms_per_request', 2)}, "
            f"bare {_spread(bare_runs, 'cpu_ms_per_request', 2)}",
            _median(bare_runs, "cpu_ms_per_request"), "informational"))  # fmt: skip
        if op in pykmip:
            rows.append(result(f"kms_api_{op}_vs_pykmip", rate, "req/s",
                               "PyKMIP 0.11 server, same operation (8 mTLS clients)",
                               pykmip[op], ">= 10x"))  # fmt: skip
    rows.append(_sweep_row(sweep))
    rows.append(result(
        "kms_api_audit_disk_sync_append_p99_ms", sync_p99, "ms",
        f"p50 of the same {SYNC_SAMPLES} O_DSYNC appends on the audit log's filesystem "
        "(each answer waits for one: a floor under the request p99)",
        sync_p50, "informational"))  # fmt: skip
    rows.append(result("kms_api_key_create_ms", write_ms, "ms",
                       "informational: a key creation's latency, one request at a time "
                       "(store commit with fsync and the HSM counter, on the store's thread)",
                       write_ms, "informational"))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.bench_kms_api")
    sub = parser.add_subparsers(dest="mode")
    bare = sub.add_parser("bare", help="(internal) the bare HTTPS server")
    bare.add_argument("cert")
    bare.add_argument("key")
    bare.add_argument("answer_bytes", type=int)
    args = parser.parse_args(argv)
    if args.mode == "bare":
        asyncio.run(_bare_server(args.cert, args.key, args.answer_bytes))
        return 0
    for row in run():
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
