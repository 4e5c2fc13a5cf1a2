"""The dashboard and the report in headless Chromium: served on loopback, screenshotted, and
their rendered DOM checked (titles, a key id, an alert text, SVG charts)."""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from enclave.problems import problem_middleware
from enclave.reports.dashboard import DashboardSources
from enclave.reports.routes import ReportSources, setup_monitoring
from tests.reports.support import ALERT_PRINCIPAL, World, build_world

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is not installed (make system-deps)"
)
REPORT_PATH = "/v1/reports/compliance?format=html&start=2025-02-24T00:00:00Z"


async def chromium(*args: str, timeout: float = 60.0) -> bytes:
    with tempfile.TemporaryDirectory(prefix="kms-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
        return stdout


def png_facts(data: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decompressed image data)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


@pytest.fixture
async def base_url(world: World) -> AsyncIterator[str]:
    app = web.Application(middlewares=[problem_middleware])
    setup_monitoring(
        app,
        metrics=world.metrics,
        dashboard=DashboardSources(
            keys=lambda: world.keys,
            alerts=world.alerts.recent,
            alert_counts=world.alerts.counts,
            metrics=world.metrics,
            hsm=world.hsm.snapshot,
            clock=world.clock,
            kms_id=lambda: "kms-browser-test",
        ),
        reports=ReportSources(
            records=world.records_between,
            keys=lambda: world.keys,
            alerts=world.alerts.recent,
            metrics=world.metrics,
            clock=world.clock,
            kms_id=lambda: "kms-browser-test",
        ),
        require_admin=lambda request: None,  # the browser test is the admin
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["/v1/dashboard", REPORT_PATH], ids=["dashboard", "report"])
async def test_page_screenshot_is_a_real_picture(base_url: str, path: str) -> None:
    with tempfile.TemporaryDirectory(prefix="kms-shot-") as out:
        shot = Path(out) / "page.png"
        await chromium(f"--screenshot={shot}", "--window-size=1280,1800", base_url + path)
        data = shot.read_bytes()
    width, height, distinct = png_facts(data)
    assert (width, height) == (1280, 1800)
    assert len(data) > 20_000 and distinct > 50  # text, charts and colours, not a blank page


async def test_dashboard_dom(base_url: str, world: World) -> None:
    dom = (await chromium("--dump-dom", base_url + "/v1/dashboard")).decode()
    assert "<title>Enclave KMS dashboard</title>" in dom
    for heading in ("Key inventory", "Rotation compliance", "Recent alerts", "Request rates"):
        assert f"<h2>{heading}</h2>" in dom
    assert world.keys[0].key_id in dom
    assert f"Burst of failed access from {ALERT_PRINCIPAL}" in dom
    assert "Audit log write failure" in dom
    assert dom.count("<svg") >= 4 and "<polyline" in dom
    assert "<script" not in dom


async def test_report_dom(base_url: str, world: World) -> None:
    dom = (await chromium("--dump-dom", base_url + REPORT_PATH)).decode()
    assert "<title>Enclave KMS compliance report</title>" in dom
    for heading in (
        "Key lifecycle events",
        "Access patterns",
        "Policy changes",
        "Security incidents",
        "Rotation compliance",
        "Performance",
    ):
        assert f"<h2>{heading}</h2>" in dom
    assert world.keys[1].key_id in dom and "keys.rotate" in dom
    assert f"Burst of failed access from {ALERT_PRINCIPAL}" in dom
    assert dom.count("<svg") >= 5
