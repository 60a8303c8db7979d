"""Real mail clients presenting TLS client certificates, end to end to the capture smarthost.

The same third-party clients as tests/gateway/test_interop.py (swaks, msmtp, curl,
openssl s_client), now with a certificate from the gateway's CA recorded in its inventory.
Each client verifies the gateway's certificate against that CA too, so every run below is
mutually authenticated TLS.
What a run must leave behind: the message at the smarthost with our envelope, a Received: header
naming the certificate's serial, and a `message` log event carrying the user and that serial.

Client behaviours these tests pin down:
- swaks and curl present the certificate without any SASL option; for a user whose policy takes
  the certificate alone no AUTH command is sent at all and MAIL FROM simply succeeds.
- msmtp (GNU SASL build) needs `user` for `auth external`: it sends `AUTH EXTERNAL`, and after
  `334 ` the base64 of `user` as the authorization identity. Without `user` it sends no response
  line at all and pipelines MAIL FROM straight after the 334, which the gateway then reads as a
  malformed SASL response (501); see test_msmtp_external_without_user_desynchronises.
- curl hides the SASL exchange from --verbose (the 334 and its response appear only in
  --trace-ascii); its AUTH EXTERNAL is opted into with --login-options AUTH=EXTERNAL.
"""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.test_certauth import CERTS_ON
from tests.gateway.test_interop import (
    HELO,
    PLAIN_BLOB,
    RCPT,
    auth_results,
    crlf_message,
    curl_args,
    s_client_args,
    s_client_send,
    swaks_args,
    token,
    wait_for_events,
)
from tests.support.client import b64
from tests.support.clients import LineClient, run_client
from tests.support.gateway import PASSWORD, USER, ClientCert, GatewayProcess, run_cli
from tests.support.smarthost import CapturedMessage, CaptureSmarthost, require_tool

LISTENERS = ["starttls", "implicit"]
# What swaks prints once its own certificate is in the handshake (issue_cert puts the user in CN).
SWAKS_SENT_CERT = f'=== TLS local DN="/CN={USER}"'
AUTH_REQUIRED = "530 5.7.0 Authentication required"
BAD_CREDENTIALS = "535 5.7.8 Authentication credentials invalid"


@pytest.fixture
def policy_gateway(gateway_factory: Any) -> Callable[[str], GatewayProcess]:
    """A gateway with client certificates optional on both listeners, USER on `policy`."""

    def make(policy: str) -> GatewayProcess:
        gw: GatewayProcess = gateway_factory(CERTS_ON, start=False)
        result = run_cli(gw.config, "user", "set-auth", USER, policy)
        assert result.returncode == 0, result.stderr
        gw.start()
        return gw

    return make


@pytest.fixture
def certgw(gateway_factory: Any) -> GatewayProcess:
    """The files `submitgw init` wrote, edited by nobody: certificates asked for on both
    listeners, and the user added with the default policy (password or certificate)."""
    gw: GatewayProcess = gateway_factory()
    return gw


def assert_relayed_with_cert(
    gw: GatewayProcess,
    sink: CaptureSmarthost,
    marker: str,
    cert: ClientCert,
    *,
    mechanism: str,
    count: int = 1,
) -> CapturedMessage:
    """The `count`-th message reached the sink with our envelope, traced to `cert`."""
    found = sink.wait_for_messages(count)
    assert len(found) == count, [m.seq for m in found]
    msg = found[-1]
    assert msg.mail_from == USER and msg.rcpt_tos == [RCPT]
    assert f"Body {marker}".encode() in msg.raw
    assert msg.message["Subject"] == f"interop {marker}"
    events = wait_for_events(gw, "message", count)
    assert len(events) == count
    event = events[-1]
    assert event["user"] == USER and event["sender"] == USER
    assert event["cert_serial"] == cert.serial
    assert event["cert_fingerprint"] == cert.fingerprint
    assert event["mechanism"] == mechanism
    assert event["reply"].startswith("250")
    received = " ".join(msg.message["Received"].split())
    assert received.startswith(f"from {HELO} ([127.0.0.1])")
    assert f"(authenticated sender: {USER}, certificate serial {cert.serial})" in received
    assert f"with ESMTPSA id {event['queue_id']}" in received
    seen = wait_for_events(gw, "certificate", count)[-1]
    assert seen["result"] == "accepted" and seen["user"] == USER
    assert seen["fingerprint_sha256"] == cert.fingerprint
    return msg


def assert_nothing_more_relayed(
    gw: GatewayProcess,
    sink: CaptureSmarthost,
    cert: ClientCert,
    *,
    before: int,
    password: bool = False,
) -> None:
    """Relaying is pass-through, so what a finished client got relayed is already at the sink;
    a sentinel sent now with a working certificate must be the only message after `before`."""
    marker = token()
    context = cert.context(gw.ca_file)
    with smtplib.SMTP_SSL("127.0.0.1", gw.tls_port, context=context, timeout=10) as client:
        client.ehlo(HELO)
        if password:
            client.login(USER, PASSWORD)
        client.sendmail(USER, [RCPT], crlf_message(marker).encode())
    found = sink.wait_for_messages(before + 1)
    assert len(found) == before + 1, "something else reached the smarthost"
    assert f"Body {marker}".encode() in found[-1].raw
    assert len(wait_for_events(gw, "message", before + 1)) == before + 1


def swaks_cert_args(gw: GatewayProcess, listener: str, marker: str, cert: ClientCert) -> list[str]:
    tls = ["--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path)]
    return [*swaks_args(gw, listener, marker), *tls]


def swaks_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.rstrip() for line in result.stdout.splitlines()]


# --- swaks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", LISTENERS)
def test_swaks_certificate_without_auth(
    certgw: GatewayProcess, smarthost: CaptureSmarthost, listener: str
) -> None:
    cert = certgw.issue_cert()
    marker = token()
    result = run_client(swaks_cert_args(certgw, listener, marker, cert))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = swaks_lines(result)
    assert SWAKS_SENT_CERT in lines
    assert "<~  250 AUTH PLAIN LOGIN EXTERNAL" in lines, "the certificate was recognised"
    assert not any(line.startswith(" ~> AUTH") for line in lines)
    assert "<~  250 2.1.0 Sender OK" in lines
    assert any(line.startswith("<~  250 2.0.0 Ok: queued as ") for line in lines)
    assert_relayed_with_cert(certgw, smarthost, marker, cert, mechanism="CERTIFICATE")
    assert auth_results(certgw) == []


# --- msmtp ----------------------------------------------------------------------------------


def cert_msmtprc(
    path: Path, gw: GatewayProcess, cert: ClientCert, *, listener: str, user: str | None
) -> Path:
    settings = {
        "host": "127.0.0.1",
        "port": str(gw.port if listener == "starttls" else gw.tls_port),
        "domain": HELO,
        "timeout": "20",
        "tls": "on",
        "tls_starttls": "on" if listener == "starttls" else "off",
        "tls_trust_file": str(gw.ca_file),
        "tls_cert_file": str(cert.cert_path),
        "tls_key_file": str(cert.key_path),
        "auth": "external",
        "from": USER,
    }
    if user is not None:
        settings["user"] = user
    path.write_text("account default\n" + "".join(f"{k} {v}\n" for k, v in settings.items()))
    path.chmod(0o600)
    return path


def msmtp_dialogue(stdout: str) -> list[str]:
    """The SMTP lines of msmtp's --debug output (it prints them on stdout)."""
    return [line.rstrip() for line in stdout.splitlines() if line.startswith(("-->", "<--"))]


@pytest.mark.parametrize("listener", LISTENERS)
def test_msmtp_auth_external(
    certgw: GatewayProcess, smarthost: CaptureSmarthost, tmp_path: Path, listener: str
) -> None:
    msmtp = require_tool("msmtp")
    cert = certgw.issue_cert()
    rc = cert_msmtprc(tmp_path / "msmtprc", certgw, cert, listener=listener, user=USER)
    marker = token()
    result = run_client([msmtp, "-C", str(rc), "--debug", RCPT], input=crlf_message(marker))
    assert result.returncode == 0, result.stdout + result.stderr
    dialogue = msmtp_dialogue(result.stdout)
    start = dialogue.index("--> AUTH EXTERNAL")
    assert dialogue[start - 1] == "<-- 250 AUTH PLAIN LOGIN EXTERNAL"
    # No initial response: the authorization identity (`user`) answers the empty challenge.
    assert dialogue[start + 1 : start + 4] == [
        "<-- 334",
        f"--> {b64(USER)}",
        "<-- 235 2.7.0 Authentication successful",
    ]
    assert_relayed_with_cert(certgw, smarthost, marker, cert, mechanism="EXTERNAL")
    assert auth_results(certgw) == [("EXTERNAL", "ok")]


def test_msmtp_external_without_user_desynchronises(
    certgw: GatewayProcess, smarthost: CaptureSmarthost, tmp_path: Path
) -> None:
    """msmtp 1.8.23 (GNU SASL) with `auth external` and no `user` answers the 334 with nothing
    and pipelines its envelope instead. The gateway must read MAIL FROM as the (invalid) SASL
    response, authenticate nobody and relay nothing; if msmtp ever sends `=` or an empty line
    here, this test fails and `user` can become optional in the docs."""
    msmtp = require_tool("msmtp")
    cert = certgw.issue_cert()
    rc = cert_msmtprc(tmp_path / "msmtprc", certgw, cert, listener="starttls", user=None)
    result = run_client([msmtp, "-C", str(rc), "--debug", RCPT], input=crlf_message(token()))
    assert result.returncode != 0
    dialogue = msmtp_dialogue(result.stdout)
    start = dialogue.index("--> AUTH EXTERNAL")
    assert dialogue[start + 1 : start + 3] == ["<-- 334", f"--> MAIL FROM:<{USER}>"]
    assert "<-- 501 5.5.2 Cannot decode base64 response" in dialogue
    assert "server message: 501 5.5.2 Cannot decode base64 response" in result.stderr
    assert auth_results(certgw) == []
    assert smarthost.messages() == []
    assert_nothing_more_relayed(certgw, smarthost, cert, before=0)


# --- curl -----------------------------------------------------------------------------------


CURL_AUTH = {
    # Certificate-policy user: no --user, so curl sends no AUTH and goes straight to MAIL.
    "none": ([], "CERTIFICATE"),
    # curl's own EXTERNAL: the user name becomes the authorization identity, no password.
    "external": (["--login-options", "AUTH=EXTERNAL", "--user", f"{USER}:"], "EXTERNAL"),
}


@pytest.mark.parametrize("auth", CURL_AUTH)
@pytest.mark.parametrize("listener", LISTENERS)
def test_curl_client_certificate(
    certgw: GatewayProcess,
    smarthost: CaptureSmarthost,
    tmp_path: Path,
    listener: str,
    auth: str,
) -> None:
    cert = certgw.issue_cert()
    marker = token()
    message = tmp_path / "message.eml"
    message.write_bytes(crlf_message(marker).encode())
    if listener == "starttls":
        url, tls = f"smtp://127.0.0.1:{certgw.port}", ["--ssl-reqd"]
    else:
        url, tls = f"smtps://127.0.0.1:{certgw.tls_port}", []
    login, mechanism = CURL_AUTH[auth]
    certs = ["--cacert", str(certgw.ca_file), "--cert", str(cert.cert_path)]
    certs += ["--key", str(cert.key_path)]
    result = run_client(curl_args(url, message, *tls, *certs, *login))
    assert result.returncode == 0, result.stderr
    lines = [line.rstrip() for line in result.stderr.splitlines()]
    assert "* TLSv1.3 (OUT), TLS handshake, Certificate (11):" in lines, "no client certificate"
    assert "< 250 AUTH PLAIN LOGIN EXTERNAL" in lines
    sent_auth = [line for line in lines if line.startswith("> AUTH")]
    assert sent_auth == (["> AUTH EXTERNAL"] if auth == "external" else [])
    assert any(line.startswith("< 250 2.0.0 Ok: queued as ") for line in lines)
    assert_relayed_with_cert(certgw, smarthost, marker, cert, mechanism=mechanism)
    assert auth_results(certgw) == ([("EXTERNAL", "ok")] if auth == "external" else [])


# --- openssl s_client -----------------------------------------------------------------------


@pytest.mark.parametrize("listener", LISTENERS)
def test_openssl_s_client_auth_external(
    certgw: GatewayProcess, smarthost: CaptureSmarthost, listener: str
) -> None:
    cert = certgw.issue_cert()
    marker = token()
    with LineClient(s_client_args(certgw, listener, cert)) as client:
        if listener == "implicit":
            client.expect("220 ")  # with -starttls, s_client consumes the greeting itself
        client.send(f"EHLO {HELO}\n")
        assert client.expect("250 ") == "250 AUTH PLAIN LOGIN EXTERNAL"
        client.send("AUTH EXTERNAL =\n")
        assert client.expect("235 ") == "235 2.7.0 Authentication successful"
        s_client_send(client, marker)
    assert_relayed_with_cert(certgw, smarthost, marker, cert, mechanism="EXTERNAL")
    assert auth_results(certgw) == [("EXTERNAL", "ok")]


# --- revocation and two factors with a real client ------------------------------------------


def test_swaks_certificate_revoked_while_running(
    certgw: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    cert = certgw.issue_cert()
    marker = token()
    args = swaks_cert_args(certgw, "starttls", marker, cert)
    first = run_client(args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert_relayed_with_cert(certgw, smarthost, marker, cert, mechanism="CERTIFICATE")

    revoked = run_cli(certgw.config, "pki", "revoke", cert.serial)
    assert revoked.returncode == 0, revoked.stderr

    again = run_client(args)
    assert again.returncode != 0
    lines = swaks_lines(again)
    assert SWAKS_SENT_CERT in lines, "the handshake still succeeds: the chain is valid"
    assert "<~  250 AUTH PLAIN LOGIN EXTERNAL" in lines, "EXTERNAL may say what is wrong"
    revoked_on = datetime.now(UTC).strftime("%Y-%m-%d")
    assert f"<~* {AUTH_REQUIRED}; certificate revoked on {revoked_on}" in lines
    assert " ~> RCPT TO:<bob@example.net>" not in lines
    rejected = wait_for_events(certgw, "certificate", 2)[-1]
    assert rejected["result"] == "rejected" and rejected["reason"] == "revoked"
    assert rejected["fingerprint_sha256"] == cert.fingerprint
    assert rejected["serial"] == cert.serial and rejected["user"] == USER
    # The revocation is of that certificate, not of the user: a new one still works.
    assert_nothing_more_relayed(certgw, smarthost, certgw.issue_cert(), before=1)


def test_swaks_two_factor_needs_certificate_and_password(
    policy_gateway: Callable[[str], GatewayProcess], smarthost: CaptureSmarthost
) -> None:
    gw = policy_gateway("password+certificate")
    cert = gw.issue_cert()
    auth = ["--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD]

    without_cert = run_client([*swaks_args(gw, "starttls", token()), *auth])
    assert without_cert.returncode != 0
    lines = swaks_lines(without_cert)
    assert SWAKS_SENT_CERT not in lines
    assert "<~  250 AUTH PLAIN LOGIN" in lines
    assert f"<~* {BAD_CREDENTIALS}" in lines
    assert not any(line.startswith(" ~> MAIL FROM") for line in lines)
    assert auth_results(gw) == [("PLAIN", "failed")]

    marker = token()
    both = run_client([*swaks_cert_args(gw, "starttls", marker, cert), *auth])
    assert both.returncode == 0, both.stdout + both.stderr
    lines = swaks_lines(both)
    assert SWAKS_SENT_CERT in lines
    assert f" ~> AUTH PLAIN {PLAIN_BLOB}" in lines
    assert "<~  235 2.7.0 Authentication successful" in lines
    # The password failure above relayed nothing: this is the first and only message.
    assert_relayed_with_cert(gw, smarthost, marker, cert, mechanism="PLAIN")
    assert auth_results(gw) == [("PLAIN", "failed"), ("PLAIN", "ok")]
