"""Host proxy overhead: small HTTPS requests, bare aiohttp server vs. through ``kms-host``.

Three processes, as deployed: the HTTPS server (one aiohttp app listening on loopback TCP
and on a unix socket, TLS on both), the proxy (``python -m host``, TCP -> that unix
socket), and the load. Throughput is keep-alive requests/s over ``CONNECTIONS`` concurrent
connections, in short windows alternating direct and proxied; each figure is the median
of its windows, and the ratio is the median of the paired windows' ratios.

The load generator is wrk (``bench.wrk``): a few microseconds of CPU per request, so the
two cores go to the server and the proxy, as they would with clients on other machines.
The same windows driven by a Python aiohttp client are reported too (informational): that
client spends about as much CPU per request as the server, so with three busy processes on
two cores it measures the client's share of the machine as much as the proxy.

Latency is measured apart, one request at a time with no queueing, so the proxy's added
p99 is not hidden by load: one minimal blocking TLS client (no event loop of its own, so
its jitter is small and the same on both paths) holds a keep-alive connection to each
path and alternates requests between them (A B B A ...), ``LATENCY_SAMPLES`` per path,
garbage collector paused. Reported: p50 and p99 of each path and their differences.

What the proxied path adds: two more loopback hops (TCP in, unix socket out) and the proxy
process waking up twice per request. With three processes on two shared cores, most of it
is scheduling, not Python: a bare ``epoll`` relay in Python adds about 0.09 ms at p50 here,
the proxy on uvloop about 0.11 ms, on asyncio's selector loop about 0.14 ms. At p99 the
machine's own noise dominates: a proxied request crosses three processes' wake-ups instead
of two, so it is exposed to more preemption by whatever else runs; the load average at the
start and end of the latency run is reported with the numbers.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import ipaddress
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import BenchResult, result
from bench.wrk import WrkLoad, run_wrk

CONNECTIONS = 8
THROUGHPUT_WINDOWS = 10  # alternating direct / proxied windows of:
THROUGHPUT_WINDOW_SECONDS = 1
PYTHON_CLIENT_WINDOWS = 6  # the same with the aiohttp client (informational), 1 s each
LATENCY_SAMPLES = 4000  # per path, alternating
LATENCY_WARMUP = 200
WARMUP_SECONDS = 0.5
READY_TIMEOUT = 20.0


def _write_identity(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bench.crt", directory / "bench.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def _serve(cert: str, key: str, unix_path: str) -> None:
    """The bare HTTPS server (subprocess): prints ``ready PORT`` and runs until killed."""
    from aiohttp import web

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tcp = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await tcp.start()
    await web.UnixSite(runner, unix_path, ssl_context=context).start()
    port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


def _spawn(args: list[str], prefix: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return process, line[len(prefix) :].strip()
        if not line and process.poll() is not None:
            break
    process.kill()
    raise RuntimeError(f"{args} did not print {prefix!r}")


async def _throughput(session: aiohttp.ClientSession, url: str, seconds: float) -> float:
    """Requests/s over ``CONNECTIONS`` concurrent keep-alive connections for ``seconds``."""

    async def worker(deadline: float) -> int:
        count = 0
        while time.perf_counter() < deadline:
            async with session.get(url) as response:
                await response.read()
            count += 1
        return count

    start = time.perf_counter()
    counts = await asyncio.gather(*(worker(start + seconds) for _ in range(CONNECTIONS)))
    return sum(counts) / (time.perf_counter() - start)


_REQUEST = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class _BlockingClient:
    """One keep-alive TLS connection, one request at a time: the same client for both paths."""

    def __init__(self, url: str, context: ssl.SSLContext) -> None:
        host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = context.wrap_socket(sock, server_hostname=host)

    def get(self) -> None:
        """Send ``GET /ping``, read the whole response (``Content-Length`` framed)."""
        self.sock.sendall(_REQUEST)
        data = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and len(body) >= int(value):
                        return

    def close(self) -> None:
        self.sock.close()


def _latencies(
    direct: str, proxied: str, context: ssl.SSLContext, samples: int
) -> tuple[list[float], list[float]]:
    """Per-request latency in seconds, direct and proxied, alternating A B B A ..."""
    clients = (_BlockingClient(direct, context), _BlockingClient(proxied, context))
    out: tuple[list[float], list[float]] = ([], [])
    try:
        for _ in range(LATENCY_WARMUP):
            for client in clients:
                client.get()
        gc.collect()
        gc.disable()
        try:
            for i in range(samples):
                for k in (0, 1) if i % 2 == 0 else (1, 0):
                    start = time.perf_counter()
                    clients[k].get()
                    out[k].append(time.perf_counter() - start)
        finally:
            gc.enable()
    finally:
        for client in clients:
            client.close()
    return out


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), or 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure_wrk(direct: str, proxied: str, server_pid: int, proxy_pid: int) -> dict[str, float]:
    """Throughput with wrk as the load, alternating windows; CPU per request of both."""
    rates: dict[str, list[float]] = {"direct": [], "proxy": []}
    server_cpu = {"direct": 0.0, "proxy": 0.0}
    served = {"direct": 0, "proxy": 0}
    proxy_cpu = 0.0
    modes = (("direct", direct), ("proxy", proxied))
    for _, url in modes:  # warm both paths
        run_wrk(WrkLoad(url=url, connections=CONNECTIONS, seconds=1))
    for window in range(THROUGHPUT_WINDOWS):
        for name, url in modes if window % 2 == 0 else modes[::-1]:
            before = (_cpu_seconds(server_pid), _cpu_seconds(proxy_pid))
            run = run_wrk(
                WrkLoad(url=url, connections=CONNECTIONS, seconds=THROUGHPUT_WINDOW_SECONDS)
            )
            rates[name].append(run.rate)
            served[name] += run.requests
            server_cpu[name] += _cpu_seconds(server_pid) - before[0]
            if name == "proxy":
                proxy_cpu += _cpu_seconds(proxy_pid) - before[1]
    out = {f"{name}_rps": statistics.median(rates[name]) for name in ("direct", "proxy")}
    ratios = [p / d for p, d in zip(rates["proxy"], rates["direct"], strict=True)]
    out["paired_ratio"] = statistics.median(ratios)
    out["ratio_min"], out["ratio_max"] = min(ratios), max(ratios)
    out["proxy_cpu_us"] = proxy_cpu / max(1, served["proxy"]) * 1e6
    for name in ("direct", "proxy"):  # the server's own cost, over TCP and over the unix socket
        out[f"server_{name}_cpu_us"] = server_cpu[name] / max(1, served[name]) * 1e6
    return out


async def _measure_python_client(
    direct: str, proxied: str, context: ssl.SSLContext
) -> dict[str, float]:
    """Throughput with an aiohttp client as the load (informational, see the module doc)."""
    rates: dict[str, list[float]] = {"direct": [], "proxy": []}
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS, ssl=context)
        ) as direct_session,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS, ssl=context)
        ) as proxy_session,
    ):
        modes = (("direct", direct_session, direct), ("proxy", proxy_session, proxied))
        for _, session, url in modes:  # open and warm every connection of both
            await _throughput(session, url, WARMUP_SECONDS)
        for _ in range(PYTHON_CLIENT_WINDOWS):
            for name, session, url in modes:
                rates[name].append(await _throughput(session, url, 1.0))
    ratios = [p / d for p, d in zip(rates["proxy"], rates["direct"], strict=True)]
    return {
        "py_direct_rps": statistics.median(rates["direct"]),
        "py_proxy_rps": statistics.median(rates["proxy"]),
        "py_ratio": statistics.median(ratios),
    }


def _latency_numbers(direct: str, proxied: str, context: ssl.SSLContext) -> dict[str, float]:
    out = {"load_start": os.getloadavg()[0]}
    both = _latencies(direct, proxied, context, LATENCY_SAMPLES)
    out["load_end"] = os.getloadavg()[0]
    for name, samples in zip(("direct", "proxy"), both, strict=True):
        out[f"{name}_p50_ms"] = _percentile(samples, 0.50) * 1000
        out[f"{name}_p99_ms"] = _percentile(samples, 0.99) * 1000
    return out


def _proxy_loop() -> str:
    """The proxy's event loop: ``BENCH_PROXY_LOOP`` (auto, uvloop, asyncio), as resolved."""
    chosen = os.environ.get("BENCH_PROXY_LOOP", "auto")
    if chosen != "auto":
        return chosen
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run() -> list[BenchResult]:
    with tempfile.TemporaryDirectory(prefix="kb-", dir="/tmp") as tmp:
        directory = Path(tmp)
        cert, key = _write_identity(directory)
        unix_path = directory / "server.sock"
        processes: list[subprocess.Popen[str]] = []
        try:
            server, port = _spawn(
                ["-m", "bench.bench_proxy", "serve", str(cert), str(key), str(unix_path)],
                "ready ",
            )
            processes.append(server)
            proxy, proxy_url = _spawn(
                [
                    *("-m", "host", "--listen", "127.0.0.1:0"),
                    *("--enclave", f"unix:{unix_path}", "--loop", _proxy_loop()),
                ],
                "ready tcp://",
            )
            processes.append(proxy)
            context = ssl.create_default_context(cafile=str(cert))
            direct, proxied = f"https://127.0.0.1:{port}/ping", f"https://{proxy_url}/ping"
            numbers = _measure_wrk(direct, proxied, server.pid, proxy.pid)
            numbers.update(asyncio.run(_measure_python_client(direct, proxied, context)))
            numbers.update(_latency_numbers(direct, proxied, context))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
    loop = _proxy_loop()
    load = (
        f"load avg {numbers['load_start']:.1f}->{numbers['load_end']:.1f} on {os.cpu_count()} cores"
    )
    print(
        "  throughput ({conns} conns, wrk): direct {direct_rps:.0f} req/s,"
        " proxy {proxy_rps:.0f} req/s, median paired ratio {paired_ratio:.3f}"
        " ({ratio_min:.2f}-{ratio_max:.2f} over {windows} window pairs)\n"
        "  throughput ({conns} conns, Python aiohttp client): direct {py_direct_rps:.0f} req/s,"
        " proxy {py_proxy_rps:.0f} req/s, median paired ratio {py_ratio:.3f}\n"
        "  latency ({samples} alternating requests per path, blocking TLS client, {load}):"
        " direct p50 {direct_p50_ms:.3f} ms p99 {direct_p99_ms:.3f} ms;"
        " proxy p50 {proxy_p50_ms:.3f} ms p99 {proxy_p99_ms:.3f} ms;"
        " added p50 {added_p50:.3f} ms p99 {added_p99:.3f} ms\n"
        "  CPU per request: proxy ({loop}) {proxy_cpu_us:.0f} us,"
        " server {server_direct_cpu_us:.0f} us direct (TCP),"
        " {server_proxy_cpu_us:.0f} us proxied (unix socket)".format(
            conns=CONNECTIONS,
            windows=THROUGHPUT_WINDOWS,
            samples=LATENCY_SAMPLES,
            load=load,
            loop=loop,
            added_p50=numbers["proxy_p50_ms"] - numbers["direct_p50_ms"],
            added_p99=numbers["proxy_p99_ms"] - numbers["direct_p99_ms"],
            **numbers,
        ),
        flush=True,
    )
    latency_baseline = f"direct, same client, {LATENCY_SAMPLES} alternating requests/path"
    return [
        result(
            "proxy keep-alive throughput",
            numbers["proxy_rps"],
            "req/s",
            f"bare aiohttp HTTPS server ({CONNECTIONS} conns, wrk; median of"
            f" {THROUGHPUT_WINDOWS} paired windows: ratio {numbers['paired_ratio']:.2f},"
            f" {numbers['ratio_min']:.2f}-{numbers['ratio_max']:.2f})",
            numbers["direct_rps"],
            ">= 0.85",
        ),
        result(
            "proxy keep-alive throughput, Python client",
            numbers["py_proxy_rps"],
            "req/s",
            f"bare aiohttp HTTPS server ({CONNECTIONS} conns, aiohttp client on the same"
            f" 2 cores; paired ratio {numbers['py_ratio']:.2f})",
            numbers["py_direct_rps"],
            "informational",
        ),
        result(
            "proxy added p99 latency",
            numbers["proxy_p99_ms"] - numbers["direct_p99_ms"],
            "ms",
            f"{latency_baseline}: p99",
            numbers["direct_p99_ms"],
            f"< 1 ms ({load})",
        ),
        result(
            "proxy added p50 latency",
            numbers["proxy_p50_ms"] - numbers["direct_p50_ms"],
            "ms",
            f"{latency_baseline}: p50",
            numbers["direct_p50_ms"],
            f"< 0.5 ms ({load})",
        ),
        result(
            f"proxy CPU per request ({loop})",
            numbers["proxy_cpu_us"],
            "us",
            "bare server CPU per request",
            numbers["server_direct_cpu_us"],
            "informational",
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        asyncio.run(_serve(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        for row in run():
            print(row)
