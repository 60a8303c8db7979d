"""With the files `submitgw init` writes, edited by nobody: certificates are asked for, our
CA is named in the request, and a client offering a certificate from elsewhere still logs
in with its password — proven with five clients nobody here wrote.
"""

from __future__ import annotations

import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography.x509.oid import NameOID

import pki
from tests.gateway.test_interop import (
    HELO,
    PLAIN_BLOB,
    RCPT,
    assert_relayed,
    auth_results,
    crlf_message,
    curl_args,
    msmtprc,
    s_client_args,
    s_client_connect,
    s_client_send,
    swaks_args,
    token,
)
from tests.support.clients import LineClient, run_client
from tests.support.gateway import PASSWORD, USER, ClientCert, GatewayProcess
from tests.support.smarthost import CaptureSmarthost, require_tool

LISTENERS = ["starttls", "implicit"]


@pytest.fixture
def foreign(tmp_path: Path) -> ClientCert:
    """A client certificate for the user's own address, from a CA the gateway never saw."""
    issued = pki.CA.create("Some other CA").issue_client_cert(USER)
    return ClientCert.write(tmp_path / "foreign", "foreign", issued.cert, issued.key)


@pytest.mark.parametrize("listener", LISTENERS)
def test_the_certificate_request_names_the_bundled_ca(
    gateway: GatewayProcess, listener: str
) -> None:
    openssl = require_tool("openssl")
    ca_file = gateway.ca_file
    ca = pki.load_certificate(ca_file)
    ca_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    result = subprocess.run(
        [
            openssl,
            "s_client",
            *s_client_connect(gateway, listener),
            "-CAfile",
            str(gateway.ca_file),
        ],
        input="QUIT\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    listed = result.stdout.split("Acceptable client certificate CA names", 1)
    assert len(listed) == 2, result.stdout + result.stderr
    names = listed[1].split("\n---", 1)[0]
    assert f"CN={ca_name}" in names.replace(" = ", "="), names


@pytest.mark.parametrize("listener", LISTENERS)
def test_smtplib_with_a_foreign_certificate_logs_in_with_its_password(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, foreign: ClientCert, listener: str
) -> None:
    context = ssl.create_default_context(cafile=str(gateway.ca_file))
    context.load_cert_chain(str(foreign.cert_path), str(foreign.key_path))
    marker = token()
    client: smtplib.SMTP
    if listener == "starttls":
        client = smtplib.SMTP("127.0.0.1", gateway.port, timeout=20)
        client.starttls(context=context)
    else:
        client = smtplib.SMTP_SSL("127.0.0.1", gateway.tls_port, context=context, timeout=20)
    client.ehlo(HELO)
    # Offered, so that a client set up for certificates can hear what is wrong with it.
    assert "external" in client.esmtp_features.get("auth", "").lower()
    code, text = client.docmd("AUTH", "EXTERNAL =")
    assert (code, text) == (535, b"5.7.8 Certificate not issued by this gateway")
    client.login(USER, PASSWORD)
    client.sendmail(USER, [RCPT], crlf_message(marker).encode())
    client.quit()
    assert_relayed(gateway, smarthost, marker)
    (event,) = gateway.log_events("certificate")
    assert event["result"] == "rejected"
    assert event["fingerprint_sha256"] == foreign.fingerprint


@pytest.mark.parametrize("listener", LISTENERS)
def test_swaks_with_a_foreign_certificate_logs_in_with_its_password(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, foreign: ClientCert, listener: str
) -> None:
    marker = token()
    tls = ["--tls-cert", str(foreign.cert_path), "--tls-key", str(foreign.key_path)]
    auth = ["--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD]
    result = run_client([*swaks_args(gateway, listener, marker), *tls, *auth])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  235 2.7.0 Authentication successful" in result.stdout
    assert_relayed(gateway, smarthost, marker)
    assert auth_results(gateway) == [("PLAIN", "ok")]


@pytest.mark.parametrize("listener", LISTENERS)
def test_msmtp_with_a_foreign_certificate_logs_in_with_its_password(
    gateway: GatewayProcess,
    smarthost: CaptureSmarthost,
    foreign: ClientCert,
    tmp_path: Path,
    listener: str,
) -> None:
    msmtp = require_tool("msmtp")
    rc = msmtprc(
        tmp_path / "msmtprc",
        gateway,
        listener=listener,
        auth="plain",
        tls_cert_file=str(foreign.cert_path),
        tls_key_file=str(foreign.key_path),
    )
    marker = token()
    result = run_client([msmtp, "-C", str(rc), RCPT], input=crlf_message(marker))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_relayed(gateway, smarthost, marker)
    assert auth_results(gateway) == [("PLAIN", "ok")]


@pytest.mark.parametrize("listener", LISTENERS)
def test_curl_with_a_foreign_certificate_logs_in_with_its_password(
    gateway: GatewayProcess,
    smarthost: CaptureSmarthost,
    foreign: ClientCert,
    tmp_path: Path,
    listener: str,
) -> None:
    marker = token()
    message = tmp_path / "message.eml"
    message.write_text(crlf_message(marker), encoding="utf-8")
    if listener == "starttls":
        url, tls = f"smtp://127.0.0.1:{gateway.port}", ["--ssl-reqd"]
    else:
        url, tls = f"smtps://127.0.0.1:{gateway.tls_port}", []
    result = run_client(
        curl_args(
            url,
            message,
            *tls,
            "--cacert",
            str(gateway.ca_file),
            "--cert",
            str(foreign.cert_path),
            "--key",
            str(foreign.key_path),
            "--user",
            f"{USER}:{PASSWORD}",
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert_relayed(gateway, smarthost, marker)


@pytest.mark.parametrize("listener", LISTENERS)
def test_openssl_s_client_with_a_foreign_certificate_logs_in_with_its_password(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, foreign: ClientCert, listener: str
) -> None:
    marker = token()
    with LineClient(s_client_args(gateway, listener, foreign)) as client:
        if listener == "implicit":
            client.expect("220 ")
        client.send(f"EHLO {HELO}\n")
        assert client.expect("250 ") == "250 AUTH PLAIN LOGIN EXTERNAL"
        client.send("AUTH EXTERNAL =\n")
        assert client.expect("535 ") == "535 5.7.8 Certificate not issued by this gateway"
        client.send(f"AUTH PLAIN {PLAIN_BLOB}\n")
        client.expect("235 2.7.0 ")
        s_client_send(client, marker)
    assert_relayed(gateway, smarthost, marker)
