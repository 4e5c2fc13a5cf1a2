"""The HTTPS webhook sink against a local HTTPS server (self-signed certificate)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from enclave.monitoring.alerts import AlertLevel, AlertManager
from enclave.monitoring.webhook import WebhookConfig, WebhookConfigError, WebhookSink
from tests.support.tls import write_self_signed


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path, _ = write_self_signed(directory, "alerts.test")
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    def __init__(self, tls_files: tuple[Path, Path], port: int, status: int = 200) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = port
        self.status = status
        self._tls = tls_files
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.bodies.append(json.loads(raw))
        self.headers.append({**request.headers, "_raw": raw.decode()})
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*self._tls)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


async def test_delivers_json_over_verified_https(tls_files: tuple[Path, Path]) -> None:
    port = free_port()
    receiver = Receiver(tls_files, port)
    await receiver.start()
    sink = WebhookSink(
        WebhookConfig(
            f"https://127.0.0.1:{port}/hook",
            ca_bundle=tls_files[0],
            signing_key=b"s" * 32,
            source="kms-test",
        ),
    )
    manager = AlertManager([sink])
    await sink.start()
    try:
        manager.raise_alert(AlertLevel.INFO, "ignored", "below the webhook's minimum level")
        manager.raise_alert(
            AlertLevel.CRITICAL,
            "audit-write-failure",
            "Audit down",
            "disk full",
            subject="audit-log",
        )
        await sink.wait_idle()
        assert len(receiver.bodies) == 1
        body = receiver.bodies[0]
        assert body["type"] == "kms-alert/v1" and body["source"] == "kms-test"
        assert body["alert"]["level"] == "critical" and body["alert"]["title"] == "Audit down"
        headers = receiver.headers[0]
        assert headers["Content-Type"] == "application/json"
        expected = hmac.new(b"s" * 32, headers["_raw"].encode(), hashlib.sha256).hexdigest()
        assert headers["X-KMS-Signature"] == "sha256=" + expected
        assert sink.stats().delivered == 1
        assert "ssss" not in repr(sink.config)
    finally:
        await sink.close()
        await receiver.stop()


async def test_survives_the_server_being_down_then_delivers(
    tls_files: tuple[Path, Path],
) -> None:
    port = free_port()
    delays: list[float] = []

    async def record_sleep(seconds: float) -> None:
        delays.append(seconds)
        await asyncio.sleep(0)

    config = WebhookConfig(
        f"https://127.0.0.1:{port}/hook",
        ca_bundle=tls_files[0],
        timeout=2.0,
        max_attempts=3,
        backoff_initial=0.5,
    )
    sink = WebhookSink(config, sleep=record_sleep)
    manager = AlertManager([sink])
    await sink.start()
    receiver = Receiver(tls_files, port)
    try:
        manager.raise_alert(AlertLevel.ERROR, "first", "nobody listens")
        await sink.wait_idle()
        stats = sink.stats()
        assert stats.failed == 1 and stats.delivered == 0 and stats.retries == 2
        assert delays == [0.5, 1.0]  # exponential backoff
        await receiver.start()
        manager.raise_alert(AlertLevel.ERROR, "second", "now it listens")
        await sink.wait_idle()
        assert [b["alert"]["kind"] for b in receiver.bodies] == ["second"]
        assert sink.stats().delivered == 1
    finally:
        await sink.close()
        await receiver.stop()


async def test_untrusted_certificate_and_4xx_are_not_delivered(
    tls_files: tuple[Path, Path],
) -> None:
    port = free_port()
    receiver = Receiver(tls_files, port, status=400)
    await receiver.start()
    try:
        # No CA bundle: the self-signed certificate is not trusted, nothing reaches it.
        untrusting = WebhookSink(
            WebhookConfig(f"https://127.0.0.1:{port}/hook", max_attempts=2), sleep=no_sleep
        )
        await untrusting.start()
        untrusting.emit(AlertManager().raise_alert(AlertLevel.ERROR, "x", "y"))  # type: ignore[arg-type]
        await untrusting.wait_idle()
        await untrusting.close()
        assert untrusting.stats().failed == 1 and receiver.bodies == []
        # Trusted, but the receiver refuses with 400: permanent, no retry.
        trusting = WebhookSink(
            WebhookConfig(f"https://127.0.0.1:{port}/hook", ca_bundle=tls_files[0]), sleep=no_sleep
        )
        await trusting.start()
        trusting.emit(AlertManager().raise_alert(AlertLevel.ERROR, "x", "y"))  # type: ignore[arg-type]
        await trusting.wait_idle()
        await trusting.close()
        assert len(receiver.bodies) == 1 and trusting.stats().retries == 0
        assert trusting.stats().failed == 1
    finally:
        await receiver.stop()


async def test_emit_never_blocks_and_the_queue_is_bounded() -> None:
    sink = WebhookSink(WebhookConfig("https://127.0.0.1:9/hook", queue_size=3))
    manager = AlertManager([sink])
    # Not started: nothing is sent, emit only queues; the fourth Warning is dropped,
    # a Critical displaces a Warning.
    for i in range(4):
        manager.raise_alert(AlertLevel.WARNING, f"w{i}", "t")
    assert sink.stats().queued == 3 and sink.stats().dropped == 1
    manager.raise_alert(AlertLevel.CRITICAL, "c", "t")
    assert sink.stats().queued == 3 and sink.stats().dropped == 2


def test_config_refuses_plain_http_and_credentials() -> None:
    with pytest.raises(WebhookConfigError):
        WebhookConfig("http://alerts.example/hook")
    with pytest.raises(WebhookConfigError):
        WebhookConfig("https://user:pw@alerts.example/hook")
    assert "topsecret" not in repr(WebhookConfig("https://a.example/", signing_key=b"topsecret"))
