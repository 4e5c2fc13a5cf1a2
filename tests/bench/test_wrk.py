"""The wrk driver: the Lua it writes, and a real run against a local HTTP server."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.wrk import WrkFailed, WrkLoad, _lua_string, run_wrk


@pytest.mark.parametrize(
    "text", ["plain", 'with "quotes" and \\ backslashes', "]]", "a]=]b]]", "\nleading newline"]
)
def test_lua_long_string_round_trips_without_escapes(text: str) -> None:
    literal = _lua_string(text)
    opening = literal[: literal.index("[", 1) + 1]
    closing = opening.replace("[", "]")
    assert literal.startswith(opening) and literal.endswith(closing)
    inner = literal[len(opening) : -len(closing)]
    # Lua drops one newline right after the opening bracket.
    assert (inner[1:] if inner.startswith("\n") else inner) == text
    assert closing not in inner


def test_script_sets_method_body_headers_and_pacing() -> None:
    script = WrkLoad(
        url="https://h/x", connections=4, seconds=1, method="POST",
        body='{"a": 1}', headers={"Authorization": "Bearer t"}, delay_ms=2.5,
    ).script()  # fmt: skip
    assert "wrk.method = [[POST]]" in script
    assert 'wrk.body = [[{"a": 1}]]' in script
    assert "wrk.headers[ [[Authorization]] ] = [[Bearer t]]" in script
    assert "function delay() return -math.log(1 - math.random()) * 2.500 end" in script
    assert "function done(summary, latency, requests)" in script


def test_whole_seconds_only() -> None:
    with pytest.raises(ValueError):
        WrkLoad(url="http://h/", connections=1, seconds=0)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ok = self.headers.get("X-Token") == "t" and body == b"ping"
        answer = b"pong" if ok else b"no"
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")


@needs_wrk
def test_run_counts_requests_and_latency(server: str) -> None:
    load = WrkLoad(url=server, connections=2, seconds=1, method="POST", body="ping",
                   headers={"X-Token": "t"})  # fmt: skip
    run = run_wrk(load)
    assert run.requests > 0 and run.errors == 0
    assert 0 < run.p50_ms <= run.p99_ms <= run.max_ms
    assert run.rate == pytest.approx(run.requests / run.seconds)


@needs_wrk
def test_paced_run_waits_between_requests(server: str) -> None:
    load = WrkLoad(url=server, connections=2, seconds=1, method="POST", body="ping",
                   headers={"X-Token": "t"}, delay_ms=50)  # fmt: skip
    run = run_wrk(load)
    # 2 connections waiting 50 ms on average: about 40 requests, far below an unpaced run
    assert 5 < run.requests < 120 and run.errors == 0


@needs_wrk
def test_error_answers_fail_the_run(server: str) -> None:
    load = WrkLoad(url=server, connections=1, seconds=1, method="POST", body="ping",
                   headers={"X-Token": "wrong"})  # fmt: skip
    with pytest.raises(WrkFailed, match="failed requests"):
        run_wrk(load)
    assert run_wrk(load, allow_errors=True).errors > 0
