"""Monitoring on the real enclave app (bootstrap, KMS API, monitoring feature) on the
simulated platform: every request audited once, the export verified offline (and every
kind of tampering named), fail-closed audit with a Critical alert and nothing lost, alert
rules on real traffic, the scheduler's jobs, /metrics, and the dashboard and report in
headless Chromium.

One app for the module (bootstrap is the slow part); tests run in file order and each
looks only at what it caused.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.app import RUNTIME, create_app
from enclave.audit.log import AuditConfig
from enclave.audit.records import AuditRecord
from enclave.audit.verify import verify_export
from enclave.bootstrap import BootstrapOptions
from enclave.config import EnclaveConfig
from enclave.features.kms_api import KMS_SERVICE
from enclave.features.monitoring import MONITORING
from enclave.monitoring.alerts import Alert, AlertLevel
from kms.cli import main as kms_main
from simulator.testing import SimulatedLaunch
from tests.api.conftest import PROBLEM, Api, Caller, b64, write_launch_config
from tests.hsm import support

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("KMS_SCREENSHOT_DIR", tempfile.gettempdir())) / "kms-monitoring"


@pytest.fixture(scope="module")
def shared_hsm() -> Iterator[support.SharedHsm]:
    shared = support.acquire()
    yield shared
    support.release()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kms(
    shared_hsm: support.SharedHsm, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    launch = SimulatedLaunch.prepare(tmp_path_factory.mktemp("monitoring-state"))
    state = launch.state
    admin_key = Ed25519PrivateKey.generate()
    write_launch_config(state, admin_key)
    config = EnclaveConfig.create(platform="sev-snp", state_dir=state, listen="tcp:127.0.0.1:0")
    options = BootstrapOptions(
        hsm=shared_hsm.backend,
        counter_label="kms-mon-test/" + hashlib.sha256(str(state).encode()).hexdigest()[:20],
        audit_config=AuditConfig(retry_interval=0.1),
    )
    client = TestClient(TestServer(create_app(config, bootstrap_options=options)))
    await client.start_server()
    try:
        admins = [p for p in client.app[KMS_SERVICE].principal_directory.all()]  # type: ignore[index]
        yield Api(client, state, Caller(admins[0].id, admin_key, "root-admin"))
    finally:
        await client.close()


def alerts_since(kms: Api, mark: set[str]) -> list[Alert]:
    return [a for a in kms.app[MONITORING].alerts.recent() if a.id not in mark]


def alert_ids(kms: Api) -> set[str]:
    return {a.id for a in kms.app[MONITORING].alerts.recent()}


def all_records(kms: Api) -> list[AuditRecord]:
    return [
        AuditRecord.from_json(json.loads(line))
        for line in kms.app[RUNTIME].audit.read_lines()
        if line.strip()
    ]


async def export(kms: Api, tmp_path: Path) -> Path:
    async with kms.client.get(
        "/v1/audit/export", headers={"Authorization": f"Bearer {kms.token(kms.admin)}"}
    ) as response:
        assert response.status == 200, await response.text()
        data = await response.read()
    path = tmp_path / "audit.log"
    path.write_bytes(data)
    return path


def run_kms(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    code = kms_main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue() + err.getvalue()


# -- every request audited once ------------------------------------------------------------


async def test_every_request_is_audited_exactly_once(kms: Api) -> None:
    audit = kms.app[RUNTIME].audit
    user = await kms.new_principal("svc-orders")
    key_id = await kms.new_key()
    before = audit.stats().last_seq
    cases: list[tuple[str, str, object, dict[str, str], int]] = [
        # method, path, body, headers, expected status
        ("POST", "/v1/encrypt", {"key_id": key_id, "plaintext": b64(b"x")}, {}, 200),
        (
            "POST",
            "/v1/encrypt",
            {"key_id": key_id, "plaintext": b64(b"x")},
            {"Authorization": f"Bearer {kms.token(user)}"},
            403,
        ),  # no grant: the service denies
        ("GET", "/v1/keys", None, {"Authorization": "Bearer not-a-token"}, 401),
        ("POST", "/v1/encrypt", {"key_id": key_id, "bogus": 1}, {}, 400),  # API model refuses
        ("GET", "/v1/dashboard.json", None, {"Authorization": f"Bearer {kms.token(user)}"}, 403),
        ("GET", "/v1/dashboard.json", None, {"Authorization": "Bearer nope"}, 401),
        ("GET", "/no/such/thing", None, {}, 404),
        ("GET", "/v1/dashboard.json", None, {}, 200),
    ]
    for method, path, body, headers, expected in cases:
        seq_before = audit.stats().last_seq
        status, document, _ = await kms.call(method, path, body, headers=headers)
        assert status == expected, (path, status, document)
        await asyncio.sleep(0)
        made = [r for r in all_records(kms) if r.seq > seq_before and not r.is_checkpoint]
        assert len(made) == 1, (method, path, [(r.operation, r.status) for r in made])
        assert made[0].status == expected or (expected == 200 and made[0].status in (200, None))
    # Public documents and probes are not audited.
    seq_before = audit.stats().last_seq
    for path in ("/healthz", "/readyz", "/metrics", "/v1/audit/public-key"):
        async with kms.client.get(path) as response:
            assert response.status == 200
    assert [r for r in all_records(kms) if r.seq > seq_before and not r.is_checkpoint] == []
    assert audit.stats().last_seq > before


# -- lifecycle export, offline verification, tampering ---------------------------------------


async def test_lifecycle_export_verifies_offline_and_tampering_is_named(
    kms: Api, tmp_path: Path
) -> None:
    user = await kms.new_principal("svc-billing")
    key_id = await kms.new_key()
    await kms.grant(user, key_id, 1)
    sealed = await kms.ok(
        "POST", "/v1/encrypt", {"key_id": key_id, "plaintext": b64(b"invoice")}, caller=user
    )
    await kms.ok("POST", "/v1/decrypt", {"ciphertext": sealed["ciphertext"]}, caller=user)
    await kms.ok("POST", f"/v1/keys/{key_id}/rotate", {})
    await kms.ok("POST", f"/v1/keys/{key_id}/disable", {})
    status, _, _ = await kms.call(
        "POST", "/v1/encrypt", {"key_id": key_id, "plaintext": b64(b"x")}, caller=user
    )
    assert status >= 400
    await kms.ok("POST", f"/v1/keys/{key_id}/enable", {})
    await kms.ok("POST", f"/v1/keys/{key_id}/schedule-deletion", {"days": 7})

    path = await export(kms, tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    public_key = kms.app[RUNTIME].audit.public_key
    report = verify_export(lines, pinned_public_key=public_key)
    assert report.intact, report.problems
    operations = {json.loads(line).get("operation") for line in lines[1:]}
    assert {"keys.create", "keys.encrypt", "keys.decrypt", "keys.rotate", "keys.disable",
            "keys.schedule_deletion", "audit.export"} <= operations  # fmt: skip

    # `kms audit verify` offline: pinned in a profile, or with the export's own key.
    profile = tmp_path / "client.toml"
    launch_profile = SimulatedLaunch.prepare(tmp_path / "sim").profile(["https://127.0.0.1:1"])
    import dataclasses

    pinned = dataclasses.replace(launch_profile, audit={"public_key": b64(public_key)})
    pinned.write(profile)
    code, text = run_kms("audit", "verify", str(path), "--profile", str(profile))
    assert code == 0, text
    assert "intact" in text
    code, text = run_kms("audit", "verify", str(path))
    assert code == 0 and "no pinned audit key" in text

    records = [(i, json.loads(line)) for i, line in enumerate(lines) if i > 0]
    target_index, target = records[len(records) // 2]
    seq = target["seq"]

    def check(name: str, tampered: list[bytes], *expected: int) -> None:
        bad = tmp_path / f"{name}.log"
        bad.write_bytes(b"".join(tampered))
        code, text = run_kms("audit", "verify", str(bad), "--profile", str(profile))
        assert code == 1, (name, text)
        for s in expected:
            assert f"record {s}:" in text, (name, s, text)

    # a single-byte edit anywhere in one record names that record
    line = lines[target_index]
    for offset in (5, len(line) // 2, len(line) - 3):
        edited = bytearray(line)
        edited[offset] = ord("A") if edited[offset] != ord("A") else ord("B")
        check("edit", [*lines[:target_index], bytes(edited), *lines[target_index + 1 :]], seq)
    # deletion
    check("delete", [*lines[:target_index], *lines[target_index + 1 :]], seq)
    # reordering: two neighbours swapped
    swapped = list(lines)
    swapped[target_index], swapped[target_index + 1] = (
        swapped[target_index + 1],
        swapped[target_index],
    )
    check("reorder", swapped, seq + 1)
    # insertion: a copy of a record placed elsewhere
    check(
        "insert", [*lines[: target_index + 2], lines[target_index], *lines[target_index + 2 :]], seq
    )
    # a different key than the pinned one
    other = dataclasses.replace(launch_profile, audit={"public_key": b64(b"\x01" * 32)})
    other.write(profile)
    code, text = run_kms("audit", "verify", str(path), "--profile", str(profile))
    assert code == 1 and "pinned" in text


# -- fail closed ------------------------------------------------------------------------------


async def test_unwritable_audit_storage_refuses_with_503_then_loses_nothing(
    kms: Api, tmp_path: Path
) -> None:
    runtime = kms.app[RUNTIME]
    audit = runtime.audit
    log_path = kms.state / "audit" / "audit.log"
    assert log_path.is_file()
    key_id = await kms.new_key()
    mark = alert_ids(kms)
    acknowledged: list[int] = []
    sealed = await kms.ok("POST", "/v1/encrypt", {"key_id": key_id, "plaintext": b64(b"a")})
    acknowledged.append(all_records(kms)[-1].seq)

    # The storage fails: the log file's path becomes a directory (EISDIR on every append).
    moved = tmp_path / "audit.log.away"
    os.rename(log_path, moved)
    os.mkdir(log_path)
    try:
        status, problem, ctype = await kms.call(
            "POST", "/v1/encrypt", {"key_id": key_id, "plaintext": b64(b"b")}
        )
        assert status == 503 and ctype == PROBLEM, (status, problem)
        assert problem["type"].endswith("/audit-unavailable")
        assert not audit.healthy
        critical = [a for a in alerts_since(kms, mark) if a.level is AlertLevel.CRITICAL]
        assert [a.kind for a in critical] == ["audit-write-failure"]
        # While it is down, everything but health, attestation and metrics is refused.
        for method, path, body in (
            ("POST", "/v1/decrypt", {"ciphertext": sealed["ciphertext"]}),
            ("GET", "/v1/keys", None),
            ("GET", "/v1/dashboard.json", None),
        ):
            status, problem, ctype = await kms.call(method, path, body)
            assert (
                status == 503
                and ctype == PROBLEM
                and problem["type"].endswith("/audit-unavailable")
            )
        async with kms.client.get("/healthz") as response:
            assert response.status == 200
        async with kms.client.get("/metrics") as response:
            assert "kms_audit_healthy 0.0" in await response.text()
    finally:
        os.rmdir(log_path)
        os.rename(moved, log_path)
    for _ in range(100):
        if audit.healthy:
            break
        await asyncio.sleep(0.05)
    assert audit.healthy
    assert any(a.kind == "audit-recovered" for a in alerts_since(kms, mark))
    await kms.ok("POST", "/v1/encrypt", {"key_id": key_id, "plaintext": b64(b"c")})
    acknowledged.append(all_records(kms)[-1].seq)

    records = all_records(kms)
    seqs = [r.seq for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap in the written chain"
    for seq in acknowledged:
        assert seq in seqs
    # The record of the encrypt that was refused (its storage failed mid-request) was kept
    # and written once the storage was back, and the refusals while down were counted.
    encrypts = [r for r in records if r.operation == "keys.encrypt" and r.key_id == key_id]
    assert len(encrypts) == 3
    await asyncio.sleep(0.1)
    recovered = [r for r in all_records(kms) if r.operation == "audit.recovered"]
    assert recovered and recovered[-1].details["requests_refused_while_unavailable"] >= 3
    path = await export(kms, tmp_path)
    report = verify_export(path.read_bytes().splitlines(), pinned_public_key=audit.public_key)
    assert report.intact, report.problems


# -- alert rules on real traffic ------------------------------------------------------------


async def test_normal_load_raises_no_alert(kms: Api) -> None:
    mark = alert_ids(kms)
    callers = [await kms.new_principal(f"svc-load-{i}") for i in range(3)]
    key_id = await kms.new_key()
    for caller in callers:
        await kms.grant(caller, key_id, 1)
    for round_ in range(15):
        for caller in callers:
            await kms.ok(
                "POST", "/v1/encrypt",
                {"key_id": key_id, "plaintext": b64(f"m{round_}".encode())}, caller=caller,
            )  # fmt: skip
    # an occasional mistake is normal too
    await kms.call("POST", "/v1/encrypt", {"key_id": key_id, "bogus": 1}, caller=callers[0])
    await asyncio.sleep(0.1)
    assert [a for a in alerts_since(kms, mark) if a.level >= AlertLevel.WARNING] == []


async def test_failed_authentication_burst_from_one_principal_warns(kms: Api) -> None:
    mark = alert_ids(kms)
    victim = await kms.new_principal("svc-victim")
    forged = Caller(victim.principal_id, Ed25519PrivateKey.generate(), "forger")
    for _ in range(12):
        status, _, _ = await kms.call("GET", "/v1/keys", token=kms.token(forged, key=forged.key))
        assert status == 401
    warnings = [a for a in alerts_since(kms, mark) if a.level is AlertLevel.WARNING]
    assert [a.kind for a in warnings] == ["failed-access-burst"]
    assert warnings[0].subject == f"unauthenticated:{victim.principal_id}"
    assert "eyJ" not in json.dumps(warnings[0].to_dict())  # no token in the alert


# -- scheduler, metrics ---------------------------------------------------------------------


async def test_routine_jobs_leave_results_in_audit_log_and_dashboard(kms: Api) -> None:
    monitoring = kms.app[MONITORING]
    results = await monitoring.scheduler.run_due(datetime.now(UTC) + timedelta(days=32))
    names = {r.job for r in results}
    assert {"daily-health-check", "daily-access-review", "weekly-policy-compliance",
            "monthly-compliance-report"} <= names, results  # fmt: skip
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    operations = {r.operation for r in all_records(kms)}
    expected = {"monitoring.health_check", "monitoring.access_review",
                "monitoring.policy_compliance", "monitoring.compliance_report"}  # fmt: skip
    assert expected <= operations
    dashboard = await kms.ok("GET", "/v1/dashboard.json")
    jobs = {j["name"]: j for j in dashboard["jobs"]}
    assert jobs["daily-health-check"]["last_ok"] is True
    assert jobs["monthly-compliance-report"]["runs"] == 1
    assert len(monitoring.reports) == 1


async def test_metrics_expose_every_family(kms: Api) -> None:
    async with kms.client.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    for family in (
        'kms_requests_total{method="POST",route="/v1/encrypt",status="200"}',
        'kms_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/encrypt"}',
        'kms_request_errors_total{class="client"',
        'kms_keys{state="active"}',
        "kms_rotation_compliance_ratio",
        "kms_hsm_operation_duration_seconds_bucket",
        "kms_audit_queue_depth",
        'kms_alerts_total{level="warning"}',
    ):
        assert family in text, family
    assert "eyJ" not in text and "Bearer" not in text


# -- dashboard and report in headless Chromium ----------------------------------------------


async def _chromium(*args: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="kms-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        stdout, _ = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0
        return stdout


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
async def test_dashboard_and_report_render_in_chromium(kms: Api) -> None:
    """Chromium cannot add a bearer token, so a loopback proxy adds the administrator's;
    the pages are the app's own answers (headers and all)."""

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {"Authorization": f"Bearer {kms.token(kms.admin)}"}
        async with kms.client.get(request.path_qs, headers=headers) as upstream:
            body = await upstream.read()
            kept = {k: v for k, v in upstream.headers.items()
                    if k.lower() in ("content-type", "content-security-policy")}  # fmt: skip
            return web.Response(status=upstream.status, body=body, headers=kept)

    proxy = web.Application()
    proxy.router.add_get("/{tail:.*}", forward)
    server = TestServer(proxy)
    await server.start_server()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        start = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        pages = {
            "dashboard": ("/v1/dashboard", ("Enclave KMS dashboard", "Key inventory", "<svg")),
            "report": (
                f"/v1/reports/compliance?format=html&start={start}",
                ("Key lifecycle", "Access patterns", "Security incidents", "<svg"),
            ),
        }
        for name, (path, expected) in pages.items():
            url = str(server.make_url(path))
            dom = (await _chromium("--dump-dom", url)).decode()
            for text in expected:
                assert text in dom, (name, text)
            assert "failed-access-burst" in dom or "Burst of failed access" in dom
            shot = SCREENSHOTS / f"{name}.png"
            await _chromium("--window-size=1280,2000", f"--screenshot={shot}", url)
            data = shot.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    finally:
        await server.close()
