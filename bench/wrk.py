"""wrk, the C HTTP load generator, as the benchmarks' load: cheap enough not to be measured.

On a 2-core machine the load generator shares the cores with what it measures. A Python
client (aiohttp) spends 0.3-0.5 ms of CPU per request here, as much as the servers it
drives, so its figures say as much about the client's share of the cores as about the
server. wrk (Debian package ``wrk``; ``make bench`` installs it) spends a few
microseconds per request on one thread.

A run is described by a ``WrkLoad`` and turned into a Lua script (method, body, headers,
an optional random delay before each request on a connection, and a ``done`` hook that
prints the summary as one JSON line); ``run_wrk`` returns a ``WrkRun``. wrk does not check
the server's certificate: the KMS benchmark's requests carry a token bound to the attested
TLS key, so a request that reached anything else would be refused (HTTP 401), and every
non-2xx answer is counted and makes the run fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

_MARK = "WRKJSON "
_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "%s{\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %d, \\"p90_us\\": %d, "
    .. "\\"p99_us\\": %d, \\"max_us\\": %d, \\"connect\\": %d, \\"read\\": %d, "
    .. "\\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d}\\n",
    "WRKJSON ", summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, e.connect, e.read,
    e.write, e.status, e.timeout))
end
"""


class WrkUnavailable(RuntimeError):
    """wrk is not installed (``make bench`` installs the Debian package)."""


class WrkFailed(RuntimeError):
    """wrk did not run, or some answers were errors (the message says which)."""


@dataclass(frozen=True)
class WrkLoad:
    url: str
    connections: int
    seconds: int  # wrk takes whole seconds
    method: str = "GET"
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Paced load: each connection waits before its next request, a random time with this
    # mean (exponential, so connections do not fall into step and arrive as one burst).
    delay_ms: float | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        if self.seconds < 1 or self.connections < 1:
            raise ValueError("wrk runs whole seconds (>= 1) over >= 1 connection")

    def script(self) -> str:
        lines = [f"wrk.method = {_lua_string(self.method)}"]
        if self.body is not None:
            lines.append(f"wrk.body = {_lua_string(self.body)}")
        for name, value in self.headers.items():
            lines.append(f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}")
        if self.delay_ms is not None:
            lines.append("math.randomseed(os.time())")  # one Lua state per wrk thread
            lines.append(
                f"function delay() return -math.log(1 - math.random()) * {self.delay_ms:.3f} end"
            )
        return "\n".join(lines) + "\n" + _DONE


@dataclass(frozen=True)
class WrkRun:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # connect, read, write, timeouts and non-2xx/3xx answers

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkUnavailable("wrk is not installed: `make bench` installs it (apt package wrk)")
    return path


def run_wrk(load: WrkLoad, *, allow_errors: bool = False) -> WrkRun:
    """Run ``load`` and return its summary; raise ``WrkFailed`` on any error answer."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="bench-wrk-") as script:
        script.write(load.script())
        script.flush()
        args = [
            wrk_path(), f"-t{load.threads}", f"-c{load.connections}",
            f"-d{load.seconds}s", "--timeout", "10s", "-s", script.name, load.url,
        ]  # fmt: skip
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=load.seconds + 60, check=False
        )
    line = next((x for x in done.stdout.splitlines() if x.startswith(_MARK)), None)
    if done.returncode != 0 or line is None:
        raise WrkFailed(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    summary = json.loads(line[len(_MARK) :])
    errors = sum(summary[k] for k in ("connect", "read", "write", "status", "timeout"))
    if errors and not allow_errors:
        raise WrkFailed(f"{errors} failed requests against {load.url}: {summary}")
    return WrkRun(
        requests=int(summary["requests"]),
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        max_ms=summary["max_us"] / 1000,
        errors=errors,
    )


def _lua_string(text: str) -> str:
    """``text`` as a Lua long-bracket literal (no escapes to get wrong)."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    # A long bracket drops a first newline: keep it by adding one.
    prefix = "\n" if text.startswith("\n") else ""
    return f"[{eq}[{prefix}{text}]{eq}]"
