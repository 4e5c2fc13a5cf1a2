"""The K/V key service as an enclave feature, in-process on the real enclave app: the
SQLite store, the hierarchy-wrapped wrapping key, restart, the release policy read from the
attested launch configuration (absent: deny all; malformed or measurement-less: refused),
the 6-hourly rotation job, and an h2c listener on a unix socket."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.attestation.providers import RUNNING_TREE, simulated_device
from enclave.config import ConfigError, EnclaveConfig
from enclave.features.pakv import PAKV_FEATURE, ROTATION_JOB, PakvFeature
from enclave.kms.release import release_report_data
from enclave.pakv.deployment import WRAPPING_KEY_ID, release_policy_from_launch_config
from enclave.pakv.formats import CHALLENGE_PATH, RECENT_KEYS_PATH, SESSION_PATH
from enclave.pakv.service import PakvRequest
from enclave.pakv.store import KEYS_KIND, META_KIND
from enclave.runtime import KEKS_KIND
from kms.pakv.simulated import SIM_KV_SERVER, release_policy_document
from measurements.compute import canonical_launch_config, launch_config_for, simulated_measurement
from simulator.testing import InProcessEnclave, SimulatedLaunch
from tests.hsm import support


@pytest.fixture(scope="module")
def shared_hsm() -> Iterator[support.SharedHsm]:
    shared = support.acquire()
    yield shared
    support.release()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> SimulatedLaunch:
    return SimulatedLaunch.prepare(tmp_path_factory.mktemp("pakv-feature"))


def with_pakv(template: SimulatedLaunch, state: Path, pakv: Any) -> SimulatedLaunch:
    """A copy of the template whose launch.json has this ``pakv`` section (or none)."""
    shutil.copytree(template.state, state)
    config = launch_config_for(template.platform)
    if pakv is not None:
        config["pakv"] = pakv
    (state / "launch.json").write_text(json.dumps(config))
    canonical = canonical_launch_config(config)
    return replace(
        template,
        state=state,
        launch_config=canonical,
        measurement=simulated_measurement(RUNNING_TREE, canonical),
    )


def feature(enclave: InProcessEnclave) -> PakvFeature:
    assert enclave.app is not None
    return enclave.app[PAKV_FEATURE]


async def session_request(enclave: InProcessEnclave, measurement_ok: bool = True) -> int:
    """Attest as the simulated K/V server straight through the service; the status."""
    service = feature(enclave).service
    answer = await service.handle(PakvRequest("POST", CHALLENGE_PATH))
    challenge = base64.b64decode(json.loads(answer.body)["challenge"])
    public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    launch = SIM_KV_SERVER if measurement_ok else replace(SIM_KV_SERVER, measurement=b"\1" * 48)
    device = simulated_device("sev-snp", enclave.launch.state / "hw")
    evidence = device.provider(launch).evidence(release_report_data(public, challenge))
    body = {
        "platform": evidence.platform,
        "evidence": base64.b64encode(evidence.evidence).decode(),
        "certs": [base64.b64encode(c).decode() for c in evidence.certs],
        "publicKey": base64.b64encode(public).decode(),
        "challenge": base64.b64encode(challenge).decode(),
    }
    answer = await service.handle(PakvRequest("POST", SESSION_PATH, body=json.dumps(body).encode()))
    return answer.status


async def test_keys_live_in_the_sqlite_store_wrapped_by_the_hierarchy_and_survive_restart(
    shared_hsm: support.SharedHsm, template: SimulatedLaunch, tmp_path: Path
) -> None:
    launch = with_pakv(
        template, tmp_path / "state", {"release_policy": release_policy_document("sev-snp")}
    )
    socket = tmp_path / "enclave.sock"
    async with InProcessEnclave(launch, socket, proxy=False) as enclave:
        first = feature(enclave)
        active = first.keys.active()
        assert len(active) == 5
        store = enclave.runtime.store
        assert {r.id for r in await store.list(KEYS_KIND)} == {r.key_id for r in first.keys.held()}
        # The wrapping key is a data key of the hierarchy, wrapped by the KEK, not raw bytes.
        record = await store.get(META_KIND, WRAPPING_KEY_ID)
        assert record is not None
        metadata = json.loads(record.value)
        wrapped_by = metadata["versions"][0]["wrapped_by"]
        assert wrapped_by["key_id"] in {r.id for r in await store.list(KEKS_KIND)}
        materials = {r.key_id: first.keys.material(r) for r in active}
        assert await session_request(enclave) == 200
        assert await session_request(enclave, measurement_ok=False) == 403
        kms_db = enclave.kms_dir / "kms.db"
    # Nothing of a private key is on disk in clear.
    disk = kms_db.read_bytes() + b"".join(
        p.read_bytes() for p in kms_db.parent.glob("kms.db*") if p.is_file()
    )
    assert not any(m in disk for m in materials.values())
    async with InProcessEnclave(launch, socket, proxy=False) as enclave:
        again = feature(enclave)
        assert {r.key_id for r in again.keys.active()} == set(materials)
        assert {r.key_id: again.keys.material(r) for r in again.keys.active()} == materials
        rotations = [
            json.loads(line)
            for line in (enclave.kms_dir / "audit" / "audit.log").read_text().splitlines()
        ]
        rotations = [r for r in rotations if r["operation"] == ROTATION_JOB]
        assert [len(r["details"]["created"]) for r in rotations] == [5, 0]
        # The rotation job is on the scheduler every 6 hours, and a run is audited.
        (status,) = again.scheduler.status()
        assert status.name == ROTATION_JOB and status.cadence == "every 6:00:00"
        result = await again.scheduler.run_now(ROTATION_JOB)
        assert result is not None and result.ok


async def test_without_a_release_policy_every_session_is_refused(
    shared_hsm: support.SharedHsm, template: SimulatedLaunch, tmp_path: Path
) -> None:
    launch = with_pakv(template, tmp_path / "state", None)
    async with InProcessEnclave(launch, tmp_path / "enclave.sock", proxy=False) as enclave:
        assert feature(enclave).service.release.policy is None
        assert len(feature(enclave).keys.active()) == 5  # public keys are still served
        assert await session_request(enclave) == 403


@pytest.mark.parametrize(
    "pakv",
    [
        pytest.param(
            {"release_policy": {"platform": "sev-snp", "allow_simulated": True}},
            id="no-measurement",
        ),
        pytest.param({"release_policy": {"measurements": "x"}}, id="malformed"),
        pytest.param({"release_policy": {"platform": "sev-snp", "bogus": 1}}, id="unknown-field"),
        pytest.param({"release": {}}, id="unknown-section-field"),
    ],
)
def test_a_release_policy_that_is_not_exact_is_refused(pakv: dict[str, Any]) -> None:
    config = canonical_launch_config(launch_config_for("sev-snp") | {"pakv": pakv})
    with pytest.raises(ConfigError):
        release_policy_from_launch_config(config)


async def test_h2c_listener_on_a_unix_socket(
    shared_hsm: support.SharedHsm, template: SimulatedLaunch, tmp_path: Path
) -> None:
    launch = with_pakv(template, tmp_path / "state", None)
    enclave = InProcessEnclave(launch, tmp_path / "enclave.sock", proxy=False)
    h2c = tmp_path / "pakv-h2c.sock"
    original = EnclaveConfig.create

    def create(**kwargs: Any) -> EnclaveConfig:
        return original(**kwargs, pakv_h2c=f"unix:{h2c}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EnclaveConfig, "create", staticmethod(create))
        await enclave.start()
    try:
        assert [(x.tls, x.address) for x in feature(enclave).listeners] == [(False, f"unix:{h2c}")]
        transport = httpx.AsyncHTTPTransport(uds=str(h2c), http1=False, http2=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://kms") as client:
            answer = await client.get("/v1alpha/publicKeys")
            assert answer.http_version == "HTTP/2" and answer.status_code == 200
            assert len(answer.json()["keys"]) == 5
            refused = await client.get(RECENT_KEYS_PATH, params={"maxAgeSeconds": "60"})
            assert refused.status_code == 401
    finally:
        await enclave.stop()
    assert not h2c.exists()
