"""The PyKMIP baseline harness (bench/pykmip_baseline.py).

The config/certificate test always runs (well under a second). The end-to-end smoke test
starts a real PyKMIP server and needs .bench/pykmip-venv (created from PyPI on first use,
~20 s), so it runs only with PYKMIP_BASELINE=1: about 10 s once the venv exists.
"""

from __future__ import annotations

import configparser
import os
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from bench import pykmip_baseline


def test_configs_and_certificates(tmp_path):
    files = pykmip_baseline.write_configs(tmp_path, 45123)

    server = configparser.ConfigParser()
    server.read(files["server_conf"])
    settings = dict(server["server"])
    assert settings["hostname"] == "127.0.0.1"
    assert settings["port"] == "45123"
    assert settings["auth_suite"] == "TLS1.2"
    assert settings["database_path"] == str(tmp_path / "pykmip.sqlite")
    assert (tmp_path / "policies").is_dir()
    client = configparser.ConfigParser()
    client.read(files["client_conf"])
    assert client["client"]["certfile"] == str(files["client_cert"])
    assert "$" not in files["server_conf"].read_text() + files["client_conf"].read_text()

    ca = x509.load_pem_x509_certificate(files["ca_cert"].read_bytes())
    for name, usage in (
        ("server", x509.oid.ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        cert = x509.load_pem_x509_certificate(files[f"{name}_cert"].read_bytes())
        cert.verify_directly_issued_by(ca)
        assert usage in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    client_cert = x509.load_pem_x509_certificate(files["client_cert"].read_bytes())
    common_names = client_cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [a.value for a in common_names] == [pykmip_baseline.CLIENT_IDENTITY]

    # Both ends load their chains the way PyKMIP's server and client do.
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files["server_cert"], files["server_key"])
    server_context.load_verify_locations(files["ca_cert"])
    client_context = ssl.create_default_context(cafile=str(files["ca_cert"]))
    client_context.load_cert_chain(files["client_cert"], files["client_key"])


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("PYKMIP_BASELINE") != "1",
    reason="starts a PyKMIP server (needs .bench/pykmip-venv); set PYKMIP_BASELINE=1",
)
def test_measure_pykmip_smoke():
    rates = pykmip_baseline.measure_pykmip(duration=0.5, concurrency=2)
    assert set(rates) == {"encrypt", "decrypt", "datakey"}
    assert all(rate > 0 for rate in rates.values()), rates
