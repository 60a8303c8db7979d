"""The gateway's TLS: only forward-secret AEAD cipher suites, checked in-process and by openssl.

Rule proven here: a TLS 1.2 client that offers only a CBC suite gets no session,
one that offers an AEAD suite does, on both listeners of a real gateway.
"""

from __future__ import annotations

import subprocess

import pytest

import pki
from submitgw.config import TlsConfig
from submitgw.tls import server_context
from tests.support.gateway import GatewayProcess

CBC_SUITES = ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"]
AEAD_SUITES = ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"]


@pytest.fixture(scope="module")
def tls_config(tmp_path_factory: pytest.TempPathFactory) -> TlsConfig:
    folder = tmp_path_factory.mktemp("tls")
    ca = pki.CA.create("tls test CA")
    server = ca.issue_server_cert(["gw.test"])
    pki.write_certificate(folder / "ca.crt", ca.cert)
    server.write_cert(folder / "server.crt")
    server.write_private_key(folder / "server.key")
    return TlsConfig(
        cert=folder / "server.crt", key=folder / "server.key", ca_cert=folder / "ca.crt"
    )


@pytest.mark.parametrize("client_certificates", ["off", "optional"])
def test_context_offers_only_ecdhe_aead_suites_below_tls_1_3(
    tls_config: TlsConfig, client_certificates: str
) -> None:
    ciphers = server_context(tls_config, client_certificates).get_ciphers()

    tls12 = [c for c in ciphers if c["protocol"] == "TLSv1.2"]
    assert {c["name"] for c in tls12} >= {
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    }
    for cipher in tls12:
        assert cipher["aead"] is True, cipher["name"]
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["auth"] in {"auth-ecdsa", "auth-rsa"}, cipher["name"]
    assert all(c["aead"] for c in ciphers)
    assert not [c for c in ciphers if c["protocol"] not in {"TLSv1.2", "TLSv1.3"}]


def s_client(gateway: GatewayProcess, listener: str, cipher: str) -> subprocess.CompletedProcess:
    port = ["-starttls", "smtp", "-connect", f"127.0.0.1:{gateway.port}"]
    if listener == "implicit":
        port = ["-connect", f"127.0.0.1:{gateway.tls_port}"]
    return subprocess.run(
        [
            "openssl",
            "s_client",
            *port,
            "-tls1_2",
            "-cipher",
            cipher,
            "-CAfile",
            str(gateway.ca_file),
            "-verify_return_error",
            "-brief",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_openssl_tls12_client_gets_aead_suites_and_no_cbc(
    gateway: GatewayProcess, listener: str
) -> None:
    for cipher in AEAD_SUITES:
        result = s_client(gateway, listener, cipher)
        assert result.returncode == 0, result.stderr
        assert f"Ciphersuite: {cipher}" in result.stderr + result.stdout

    for cipher in CBC_SUITES:
        result = s_client(gateway, listener, cipher)
        assert result.returncode != 0, f"{cipher} was accepted:\n{result.stderr}"
        # The server ends the handshake (an alert or, with the STARTTLS listener, EOF).
        assert "Ciphersuite:" not in result.stderr + result.stdout
