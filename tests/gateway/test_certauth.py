"""Client-certificate authentication in the gateway: EXTERNAL, policies, instant revocation."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import pki
from tests.support.client import Dialog, b64
from tests.support.gateway import PASSWORD, USER, ClientCert, GatewayProcess, run_cli
from tests.support.smarthost import CaptureSmarthost

MSG = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: cert\r\n\r\nHello.\r\n"
CERTS_ON = {
    "submission": {"client_certificates": "optional"},
    "submissions": {"client_certificates": "optional"},
}


@pytest.fixture
def certgw(gateway_factory: Any) -> GatewayProcess:
    gw: GatewayProcess = gateway_factory(CERTS_ON, start=False)
    assert run_cli(gw.config, "user", "set-auth", USER, "certificate").returncode == 0
    gw.start()
    return gw


def dialog(gw: GatewayProcess, cert: ClientCert | None, *, implicit: bool = False) -> Dialog:
    ctx = cert.context(gw.ca_file) if cert else gw.ssl_context()
    if implicit:
        d = Dialog(gw.tls_port, tls_context=ctx)
    else:
        d = Dialog(gw.port)
        d.cmd("EHLO client.test")
        assert d.starttls(ctx).code == 220
    return d


def mechanisms(d: Dialog) -> list[str]:
    for line in d.cmd("EHLO client.test").text.splitlines():
        if line.startswith("AUTH "):
            return line.split()[1:]
    return []


def send(d: Dialog) -> int:
    code = d.cmd("MAIL FROM:<alice@example.org>").code
    if code != 250:
        return code
    assert d.cmd("RCPT TO:<bob@example.net>").code == 250
    assert d.cmd("DATA").code == 354
    d.send(MSG + b".\r\n")
    return d.read().code


def own_ca_cert(*, days: int = 30, start_days: int = 0, eku: Any = None) -> Any:
    """A certificate signed by a throwaway CA, or shaped wrongly, for rejection tests."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC) + dt.timedelta(days=start_days)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, USER)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(USER)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(eku or [ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    return builder, key


def signed_by_gateway_ca(gw: GatewayProcess, builder: Any, key: Any) -> ClientCert:
    ca = pki.CA.load(gw.dir / "ca" / "ca.crt", gw.dir / "ca" / "ca.key")
    cert = builder.issuer_name(ca.cert.subject).sign(ca.key, hashes.SHA256())
    return ClientCert.write(gw.dir / "client-certs", "odd", cert, key)


# --- the happy paths ------------------------------------------------------------------------


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
def test_certificate_alone_lets_mail_through(
    certgw: GatewayProcess, smarthost: CaptureSmarthost, implicit: bool
) -> None:
    cert = certgw.issue_cert()
    d = dialog(certgw, cert, implicit=implicit)
    assert "EXTERNAL" in mechanisms(d)
    assert send(d) == 250
    (msg,) = smarthost.wait_for_messages(1)
    assert f"certificate serial {cert.serial}" in msg.message["Received"]
    time.sleep(0.2)
    (event,) = certgw.log_events("message")
    assert event["user"] == USER and event["cert_serial"] == cert.serial
    assert event["cert_fingerprint"] == cert.fingerprint and event["mechanism"] == "CERTIFICATE"


@pytest.mark.parametrize("authzid", ["=", b64(USER), b64(USER.upper()), None])
def test_auth_external_accepts_empty_or_own_identity(
    certgw: GatewayProcess, smarthost: CaptureSmarthost, authzid: str | None
) -> None:
    d = dialog(certgw, certgw.issue_cert())
    mechanisms(d)
    if authzid is None:
        assert d.cmd("AUTH EXTERNAL").lines == ["334 "]
        reply = d.cmd("=")
    else:
        reply = d.cmd(f"AUTH EXTERNAL {authzid}")
    assert reply.lines == ["235 2.7.0 Authentication successful"]
    assert send(d) == 250


def test_auth_external_for_another_identity_is_refused(certgw: GatewayProcess) -> None:
    d = dialog(certgw, certgw.issue_cert())
    mechanisms(d)
    assert d.cmd("AUTH EXTERNAL " + b64("bob@example.org")).lines == [
        "535 5.7.8 Authentication credentials invalid"
    ]


def test_no_certificate_no_external(certgw: GatewayProcess) -> None:
    d = dialog(certgw, None)
    assert "EXTERNAL" not in mechanisms(d)
    assert d.cmd("AUTH EXTERNAL =").code == 504
    assert d.cmd("MAIL FROM:<alice@example.org>").code == 530


def test_listener_with_certificates_off_ignores_them(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    off = {"client_certificates": "off"}
    gw = gateway_factory({"submission": off, "submissions": off}, start=False)
    assert run_cli(gw.config, "user", "set-auth", USER, "certificate").returncode == 0
    gw.start()
    d = dialog(gw, gw.issue_cert())
    assert "EXTERNAL" not in mechanisms(d)
    assert d.cmd("MAIL FROM:<alice@example.org>").code == 530


def test_required_certificates_refuse_a_client_without_one(gateway_factory: Any) -> None:
    """Refused in words it can read, not by a dead handshake; the connection stays."""
    gw = gateway_factory({"submissions": {"client_certificates": "required"}})
    d = Dialog(gw.tls_port, tls_context=gw.ssl_context())
    assert d.cmd("EHLO client.test").code == 250
    assert d.login(USER, PASSWORD).lines[-1] == "530 5.7.0 Client certificate required"
    assert d.cmd("MAIL FROM:<alice@example.org>").lines[-1] == (
        "530 5.7.0 Client certificate required"
    )
    assert d.cmd("NOOP").code == 250
    assert not [e for e in gw.log_events("tls") if e["result"] == "failed"]


def test_certificate_without_auth_can_be_switched_off(gateway_factory: Any) -> None:
    options = {"submission": {"client_certificates": "optional", "certificate_without_auth": False}}
    gw = gateway_factory(options, start=False)
    assert run_cli(gw.config, "user", "set-auth", USER, "certificate").returncode == 0
    gw.start()
    d = dialog(gw, gw.issue_cert())
    mechanisms(d)
    assert d.cmd("MAIL FROM:<alice@example.org>").code == 530
    assert d.cmd("AUTH EXTERNAL =").code == 235


# --- policies -------------------------------------------------------------------------------


def test_certificate_user_cannot_use_a_password(certgw: GatewayProcess) -> None:
    d = dialog(certgw, None)
    mechanisms(d)
    assert d.login(USER, PASSWORD).code == 535


def test_default_policy_logs_in_with_the_password_or_the_certificate_alone(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    """`user add` without --auth: either credential alone is enough, on either port."""
    gw = gateway_factory(CERTS_ON)
    listed = run_cli(gw.config, "user", "list", "--json")
    assert [row["auth_policy"] for row in json.loads(listed.stdout)] == ["password-or-certificate"]
    cert = gw.issue_cert()

    with gw.smtp(login=False) as client:
        client.user, client.password = USER, PASSWORD
        assert client.auth("PLAIN", client.auth_plain)[0] == 235
        assert client.sendmail(USER, ["bob@example.net"], MSG) == {}
    for implicit in (False, True):
        d = dialog(gw, cert, implicit=implicit)
        assert "EXTERNAL" in mechanisms(d)
        assert d.cmd("AUTH EXTERNAL =").code == 235
        assert send(d) == 250
    without_auth = dialog(gw, cert)
    mechanisms(without_auth)
    assert send(without_auth) == 250

    smarthost.wait_for_messages(4)
    time.sleep(0.2)
    assert [
        (e["user"], e["mechanism"], e.get("cert_serial")) for e in gw.log_events("message")
    ] == [
        (USER, "PLAIN", None),
        (USER, "EXTERNAL", cert.serial),
        (USER, "EXTERNAL", cert.serial),
        (USER, "CERTIFICATE", cert.serial),
    ]


def test_password_user_certificate_alone_is_not_enough(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory(CERTS_ON, start=False)
    assert run_cli(gw.config, "user", "set-auth", USER, "password").returncode == 0
    gw.start()
    d = dialog(gw, gw.issue_cert())
    assert "EXTERNAL" in mechanisms(d)
    assert d.cmd("MAIL FROM:<alice@example.org>").code == 530
    assert d.cmd("AUTH EXTERNAL =").code == 535
    assert d.login(USER, PASSWORD).code == 235
    assert send(d) == 250


def test_two_factor_needs_both_in_one_session(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory(CERTS_ON, start=False)
    assert run_cli(gw.config, "user", "set-auth", USER, "password+certificate").returncode == 0
    gw.start()
    cert = gw.issue_cert()
    without_cert = dialog(gw, None)
    mechanisms(without_cert)
    assert without_cert.login(USER, PASSWORD).code == 535
    cert_only = dialog(gw, cert)
    mechanisms(cert_only)
    assert cert_only.cmd("MAIL FROM:<alice@example.org>").code == 530
    assert cert_only.cmd("AUTH EXTERNAL =").code == 535
    both = dialog(gw, cert)
    mechanisms(both)
    assert both.login(USER, PASSWORD).code == 235
    assert send(both) == 250
    (msg,) = smarthost.wait_for_messages(1)
    assert f"certificate serial {cert.serial}" in msg.message["Received"]


def test_certificate_of_one_user_with_password_of_another(gateway_factory: Any) -> None:
    """Both users on the default policy, where either credential alone would do."""
    gw = gateway_factory(CERTS_ON)
    other = "bob@example.org"
    other_password = "rusty gate at the orchard"
    assert (
        run_cli(
            gw.config, "user", "add", other, "--password-stdin", input=other_password
        ).returncode
        == 0
    )
    d = dialog(gw, gw.issue_cert(USER))
    mechanisms(d)
    assert d.login(other, other_password).code == 535
    d2 = dialog(gw, None)
    mechanisms(d2)
    assert d2.login(other, other_password).code == 235


# --- rejections -----------------------------------------------------------------------------
# A flawed certificate identifies nobody and ends nothing: EXTERNAL is still offered, so
# that the client can hear what is wrong with it, and MAIL says it too. Certificates that
# OpenSSL itself refuses (expired, another CA) still fail today's stdlib handshake.


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def _rejected(gw: GatewayProcess, cert: ClientCert, why: str) -> None:
    """The certificate gives no identity, the client is told `why` (after "Certificate "),
    and the handshake and the session go on: the same client may log in with its password."""
    d = dialog(gw, cert)
    assert "EXTERNAL" in mechanisms(d)
    assert d.cmd("AUTH EXTERNAL =").lines[-1] == f"535 5.7.8 Certificate {why}"
    assert d.cmd("MAIL FROM:<alice@example.org>").lines[-1] == (
        f"530 5.7.0 Authentication required; certificate {why}"
    )
    assert d.cmd("NOOP").code == 250, "the session goes on"
    assert d.login(USER, PASSWORD).code == 535, "a certificate-policy user has no password login"
    ok = dialog(gw, gw.issue_cert())
    mechanisms(ok)
    assert send(ok) == 250, "the gateway keeps serving others"


def _log_reasons(gw: GatewayProcess) -> list[str]:
    time.sleep(0.3)
    reasons = [e["reason"] for e in gw.log_events("certificate") if e["result"] == "rejected"]
    reasons += [e["reason"] for e in gw.log_events("tls")]
    assert "Traceback" not in gw.log_text()
    return reasons


def test_expired_certificate(certgw: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    builder, key = own_ca_cert(days=1, start_days=-30)
    cert = signed_by_gateway_ca(certgw, builder, key)
    ended = (dt.datetime.now(dt.UTC) - dt.timedelta(days=29)).strftime("%Y-%m-%d")
    _rejected(certgw, cert, f"expired on {ended}")
    assert any("expired" in r for r in _log_reasons(certgw))


def test_certificate_from_another_ca(certgw: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    builder, key = own_ca_cert()
    other_ca = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some other CA")])
    cert = builder.issuer_name(other_ca).sign(key, hashes.SHA256())
    foreign = ClientCert.write(certgw.dir / "client-certs", "foreign", cert, key)
    _rejected(certgw, foreign, "not issued by this gateway")
    assert _log_reasons(certgw)


def test_certificate_without_client_auth_usage(
    certgw: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    builder, key = own_ca_cert(eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    cert = signed_by_gateway_ca(certgw, builder, key)
    _rejected(certgw, cert, "not for client authentication")
    assert _log_reasons(certgw)


def test_unrecorded_certificate_from_our_ca(
    certgw: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    builder, key = own_ca_cert()
    _rejected(certgw, signed_by_gateway_ca(certgw, builder, key), "not known to this gateway")
    assert "not-in-inventory" in _log_reasons(certgw)


def test_the_ca_certificate_itself(certgw: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    ca = ClientCert(
        certgw.dir / "ca" / "ca.crt",
        certgw.dir / "ca" / "ca.key",
        "",
        "",
    )
    _rejected(certgw, ca, "is a CA certificate")
    assert _log_reasons(certgw)


def test_revocation_takes_effect_on_the_next_connection(
    certgw: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    cert = certgw.issue_cert()
    before = dialog(certgw, cert)
    mechanisms(before)
    assert before.cmd("MAIL FROM:<alice@example.org>").code == 250
    result = run_cli(certgw.config, "pki", "revoke", cert.serial.lower())
    assert result.returncode == 0, result.stderr
    _rejected(certgw, cert, f"revoked on {today()}")
    assert "revoked" in _log_reasons(certgw)


def test_user_disable_takes_effect_on_the_next_connection(
    certgw: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    """The client holds the certificate, not the right to know the account's state."""
    cert = certgw.issue_cert()
    assert run_cli(certgw.config, "user", "disable", USER).returncode == 0
    d = dialog(certgw, cert)
    assert "EXTERNAL" in mechanisms(d)
    assert d.cmd("AUTH EXTERNAL =").lines[-1] == "535 5.7.8 Certificate not valid for this gateway"
    assert d.cmd("MAIL FROM:<alice@example.org>").code == 530
    assert "user-disabled" in _log_reasons(certgw)


@pytest.mark.parametrize("flaw", ["revoked", "not-in-inventory"])
def test_a_refused_certificate_leaves_the_password(
    gateway_factory: Any, smarthost: CaptureSmarthost, flaw: str
) -> None:
    """AUTH EXTERNAL says why the certificate is refused; the same session then logs in
    with the password, and the log has the verdict and the fingerprint."""
    gw = gateway_factory(CERTS_ON)
    if flaw == "revoked":
        cert = gw.issue_cert()
        assert run_cli(gw.config, "pki", "revoke", cert.serial).returncode == 0
        why = f"revoked on {today()}"
    else:
        builder, key = own_ca_cert()
        cert = signed_by_gateway_ca(gw, builder, key)
        why = "not known to this gateway"
    d = dialog(gw, cert)
    assert "EXTERNAL" in mechanisms(d)
    assert d.cmd("AUTH EXTERNAL =").lines[-1] == f"535 5.7.8 Certificate {why}"
    assert d.login(USER, PASSWORD).code == 235
    assert send(d) == 250
    time.sleep(0.3)
    (event,) = gw.log_events("certificate")
    assert event["result"] == "rejected" and event["reason"] == flaw
    assert event["fingerprint_sha256"] == cert.fingerprint
    assert event["serial"] == cert.serial
    assert event["user"] == (USER if flaw == "revoked" else None)
    auths = [(e["mechanism"], e["result"]) for e in gw.log_events("auth")]
    assert auths == [("EXTERNAL", "failed"), ("PLAIN", "ok")]
    (message,) = gw.log_events("message")
    assert message["cert_serial"] is None, "the refused certificate is nobody's identity"


def test_required_certificate_refused_but_the_session_goes_on(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    """On a listener that requires certificates, a refused one stops every login and
    MAIL with 530 and its reason; the connection stays."""
    gw = gateway_factory({"submissions": {"client_certificates": "required"}})
    cert = gw.issue_cert()
    assert run_cli(gw.config, "pki", "revoke", cert.serial).returncode == 0
    d = dialog(gw, cert, implicit=True)
    assert "EXTERNAL" in mechanisms(d)
    required = f"530 5.7.0 Client certificate required; certificate revoked on {today()}"
    assert d.login(USER, PASSWORD).lines[-1] == required
    assert d.cmd("MAIL FROM:<alice@example.org>").lines[-1] == required
    assert d.cmd("AUTH EXTERNAL =").lines[-1] == f"535 5.7.8 Certificate revoked on {today()}"
    assert d.cmd("NOOP").code == 250


@pytest.mark.postgres
def test_inventory_on_postgresql(
    gateway_factory: Any, smarthost: CaptureSmarthost, pg_url: str
) -> None:
    gw = gateway_factory({**CERTS_ON, "database": {"url": pg_url}}, users=False, start=False)
    assert run_cli(gw.config, "db", "upgrade").returncode == 0
    gw.add_user()
    assert run_cli(gw.config, "user", "set-auth", USER, "certificate").returncode == 0
    gw.start()
    cert = gw.issue_cert()
    d = dialog(gw, cert)
    mechanisms(d)
    assert send(d) == 250
    assert run_cli(gw.config, "pki", "revoke", cert.serial).returncode == 0
    d2 = dialog(gw, cert)
    mechanisms(d2)
    assert d2.cmd("AUTH EXTERNAL =").lines[-1].startswith("535 5.7.8 Certificate revoked on ")
