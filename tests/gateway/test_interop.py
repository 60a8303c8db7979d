"""Real mail clients nobody here wrote, end to end through the gateway to a smarthost.

Each client is used the way its manual says a user would submit mail (STARTTLS on the
submission port, implicit TLS on the submissions port, certificate checked against the
gateway's CA, AUTH PLAIN or LOGIN), and the message is read back at the capture smarthost.
The refusals are checked with the same clients: no AUTH without TLS, no relay without AUTH.
"""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from pki import CA, write_certificate
from tests.support.clients import LineClient, run_client
from tests.support.gateway import PASSWORD, USER, GatewayProcess
from tests.support.postfix import PostfixSmarthost
from tests.support.smarthost import CapturedMessage, CaptureSmarthost, require_tool

RCPT = "bob@example.net"
HELO = "client.test"
EVENT_TIMEOUT = 5.0
PLAIN_BLOB = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()


def token() -> str:
    """A marker that only this message carries, so the test finds exactly what it sent."""
    return uuid.uuid4().hex


def crlf_message(marker: str, *, extra_headers: str = "") -> str:
    return (
        f"From: {USER}\r\nTo: {RCPT}\r\n{extra_headers}Subject: interop {marker}\r\n"
        f"\r\nBody {marker}\r\n"
    )


def wait_for_events(gw: GatewayProcess, kind: str, n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + EVENT_TIMEOUT
    while True:
        events = gw.log_events(kind)
        if len(events) >= n or time.monotonic() >= deadline:
            assert len(events) >= n, f"no {kind!r} event in the gateway log:\n{gw.log_text()}"
            return events
        time.sleep(0.05)


def assert_relayed(
    gw: GatewayProcess,
    sink: CaptureSmarthost,
    marker: str,
    *,
    rcpts: tuple[str, ...] = (RCPT,),
) -> CapturedMessage:
    """Exactly one message arrived, with our envelope, our body, and the gateway's trace."""
    (msg,) = sink.wait_for_messages(1)
    assert msg.mail_from == USER
    assert msg.rcpt_tos == list(rcpts)
    assert f"Body {marker}".encode() in msg.raw
    assert msg.message["Subject"] == f"interop {marker}"
    (event,) = wait_for_events(gw, "message")
    assert event["user"] == USER and event["sender"] == USER
    assert event["recipients"] == len(rcpts) and event["recipient_list"] == list(rcpts)
    assert event["reply"].startswith("250")
    received = msg.message["Received"]
    assert received.startswith(f"from {HELO} ([127.0.0.1])")
    assert f"(authenticated sender: {USER})" in received
    assert f"with ESMTPSA id {event['queue_id']}" in received
    return msg


def assert_nothing_relayed(gw: GatewayProcess, sink: CaptureSmarthost) -> None:
    """The gateway relays pass-through, so whatever a finished client got relayed is already at
    the sink; a sentinel sent afterwards proves the sink is up and is then the only message."""
    marker = token()
    client = gw.smtp()
    client.sendmail(USER, [RCPT], crlf_message(marker).encode())
    client.quit()
    (msg,) = sink.wait_for_messages(1)
    assert f"Body {marker}".encode() in msg.raw, "something else reached the smarthost first"
    assert len(wait_for_events(gw, "message")) == 1


def auth_results(gw: GatewayProcess) -> list[tuple[str, str]]:
    return [(e["mechanism"], e["result"]) for e in gw.log_events("auth")]


@pytest.fixture
def stranger_ca(tmp_path: Path) -> Path:
    """A CA that did not sign the gateway's certificate."""
    path = tmp_path / "stranger-ca.crt"
    write_certificate(path, CA.create("stranger CA").cert)
    return path


# --- swaks ----------------------------------------------------------------------------------


def swaks_args(gw: GatewayProcess, listener: str, marker: str) -> list[str]:
    swaks = require_tool("swaks")
    if listener == "starttls":
        connect = ["--server", f"127.0.0.1:{gw.port}", "--tls"]
    else:
        connect = ["--server", f"127.0.0.1:{gw.tls_port}", "--tls-on-connect"]
    return [
        swaks,
        *connect,
        "--tls-verify",
        "--tls-ca-path",
        str(gw.ca_file),
        "--helo",
        HELO,
        "--from",
        USER,
        "--to",
        RCPT,
        "--header",
        f"Subject: interop {marker}",
        "--body",
        f"Body {marker}",
        "--timeout",
        "20",
    ]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_swaks_submits(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, listener: str, mechanism: str
) -> None:
    marker = token()
    auth = ["--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD]
    result = run_client([*swaks_args(gateway, listener, marker), *auth])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"~> AUTH {mechanism}" in result.stdout
    assert "<~  235 2.7.0 Authentication successful" in result.stdout
    assert "<~  250 2.0.0 Ok: queued as " in result.stdout
    assert_relayed(gateway, smarthost, marker)
    assert auth_results(gateway) == [(mechanism, "ok")]


def test_swaks_without_auth_is_refused(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    result = run_client(swaks_args(gateway, "starttls", token()))
    assert result.returncode != 0
    assert "<~  250 AUTH PLAIN LOGIN" in result.stdout, "TLS must have been up"
    assert "<~* 530 5.7.0 Authentication required" in result.stdout
    assert_nothing_relayed(gateway, smarthost)


def test_swaks_wrong_password_is_refused(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    auth = ["--auth", "PLAIN", "--auth-user", USER, "--auth-password", "not the password"]
    result = run_client([*swaks_args(gateway, "starttls", token()), *auth])
    assert result.returncode != 0
    assert "<~* 535 5.7.8 Authentication credentials invalid" in result.stdout
    assert " ~> MAIL FROM" not in result.stdout
    assert auth_results(gateway) == [("PLAIN", "failed")]
    assert_nothing_relayed(gateway, smarthost)


def test_swaks_auth_without_tls_never_sends_the_password(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    """Before STARTTLS the gateway does not advertise AUTH, and swaks then refuses to send
    credentials at all (exit 28); had it tried, the gateway would answer 530 unchecked."""
    swaks = require_tool("swaks")
    result = run_client(
        [
            swaks,
            "--server",
            f"127.0.0.1:{gateway.port}",
            "--helo",
            HELO,
            "--from",
            USER,
            "--to",
            RCPT,
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            PASSWORD,
            "--timeout",
            "20",
        ]
    )
    assert result.returncode != 0
    assert "<-  250 STARTTLS" in result.stdout
    assert " -> AUTH" not in result.stdout and PLAIN_BLOB not in result.stdout + result.stderr
    assert "Host did not advertise authentication" in result.stdout + result.stderr
    (session,) = wait_for_events(gateway, "session")
    assert session["tls"] is None and session["user"] is None
    assert gateway.log_events("auth") == []
    assert_nothing_relayed(gateway, smarthost)


# --- msmtp ----------------------------------------------------------------------------------


def msmtprc(path: Path, gw: GatewayProcess, *, listener: str, auth: str, **extra: str) -> Path:
    settings = {
        "host": "127.0.0.1",
        "port": str(gw.port if listener == "starttls" else gw.tls_port),
        "domain": HELO,
        "timeout": "20",
        "tls": "on",
        "tls_starttls": "on" if listener == "starttls" else "off",
        "tls_trust_file": str(gw.ca_file),
        "auth": auth,
        "user": USER,
        "password": PASSWORD,
        "from": USER,
        **extra,
    }
    path.write_text("account default\n" + "".join(f"{k} {v}\n" for k, v in settings.items()))
    path.chmod(0o600)  # msmtp refuses a password in a file others can read
    return path


@pytest.mark.parametrize("auth", ["on", "plain", "login"])
@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_msmtp_submits(
    gateway: GatewayProcess,
    smarthost: CaptureSmarthost,
    tmp_path: Path,
    listener: str,
    auth: str,
) -> None:
    msmtp = require_tool("msmtp")
    rc = msmtprc(tmp_path / "msmtprc", gateway, listener=listener, auth=auth)
    marker = token()
    result = run_client([msmtp, "-C", str(rc), RCPT], input=crlf_message(marker))
    assert result.returncode == 0, result.stderr
    assert_relayed(gateway, smarthost, marker)
    # "auth on" lets msmtp choose among the offered mechanisms; it picks PLAIN.
    expected = "PLAIN" if auth == "on" else auth.upper()
    assert auth_results(gateway) == [(expected, "ok")]


def test_msmtp_takes_recipients_from_headers(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, tmp_path: Path
) -> None:
    msmtp = require_tool("msmtp")
    rc = msmtprc(tmp_path / "msmtprc", gateway, listener="starttls", auth="on")
    marker = token()
    headers = "Cc: carol@example.net\r\nBcc: dave@example.net\r\n"
    message = crlf_message(marker, extra_headers=headers)
    result = run_client([msmtp, "-C", str(rc), "-t"], input=message)
    assert result.returncode == 0, result.stderr
    rcpts = (RCPT, "carol@example.net", "dave@example.net")
    msg = assert_relayed(gateway, smarthost, marker, rcpts=rcpts)
    assert msg.message["Bcc"] is None, "msmtp strips Bcc:, the gateway must not restore it"
    assert msg.message["Cc"] == "carol@example.net"


def test_msmtp_auth_without_tls_never_sends_the_password(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, tmp_path: Path
) -> None:
    msmtp = require_tool("msmtp")
    rc = msmtprc(tmp_path / "msmtprc", gateway, listener="starttls", auth="plain", tls="off")
    result = run_client([msmtp, "-C", str(rc), "-v", RCPT], input=crlf_message(token()))
    assert result.returncode != 0
    assert "the server does not support authentication" in result.stderr
    assert "--> AUTH" not in result.stderr and PLAIN_BLOB not in result.stderr
    assert gateway.log_events("auth") == []
    assert_nothing_relayed(gateway, smarthost)


# --- curl -----------------------------------------------------------------------------------


def curl_args(url: str, message: Path, *extra: str) -> list[str]:
    # curl takes the EHLO name from the URL path; without one it appends the upload's file name
    # to the URL (RFC 3986 style) and greets with "EHLO message.eml".
    return [
        require_tool("curl"),
        "--silent",
        "--show-error",
        "--verbose",
        "--max-time",
        "20",
        "--url",
        f"{url}/{HELO}",
        *extra,
        "--mail-from",
        USER,
        "--mail-rcpt",
        RCPT,
        "--upload-file",
        str(message),
    ]


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_curl_submits(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, tmp_path: Path, listener: str
) -> None:
    marker = token()
    message = tmp_path / "message.eml"
    message.write_bytes(crlf_message(marker).encode())
    if listener == "starttls":
        url, tls = f"smtp://127.0.0.1:{gateway.port}", ["--ssl-reqd"]
    else:
        url, tls = f"smtps://127.0.0.1:{gateway.tls_port}", []
    user = ["--cacert", str(gateway.ca_file), "--user", f"{USER}:{PASSWORD}"]
    result = run_client(curl_args(url, message, *tls, *user))
    assert result.returncode == 0, result.stderr
    # Verified by name, not only by chain: the certificate carries IP 127.0.0.1.
    assert 'host "127.0.0.1" matched cert\'s IP address' in result.stderr
    assert "< 250 2.0.0 Ok: queued as " in result.stderr
    assert_relayed(gateway, smarthost, marker)
    assert auth_results(gateway) == [("PLAIN", "ok")]


def test_curl_without_tls_never_sends_the_password(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, tmp_path: Path
) -> None:
    """smtp:// without --ssl-reqd: curl skips STARTTLS and, as AUTH is not offered, skips
    AUTH too, so its MAIL FROM is the first thing the gateway refuses."""
    message = tmp_path / "message.eml"
    message.write_bytes(crlf_message(token()).encode())
    url = f"smtp://127.0.0.1:{gateway.port}"
    result = run_client(curl_args(url, message, "--user", f"{USER}:{PASSWORD}"))
    assert result.returncode != 0
    assert "< 530 5.7.0 Must issue a STARTTLS command first" in result.stderr
    sent = [line for line in result.stderr.splitlines() if line.startswith("> ")]
    assert not any(line.startswith("> AUTH") for line in sent), sent
    assert PLAIN_BLOB not in result.stderr
    assert gateway.log_events("auth") == []
    assert_nothing_relayed(gateway, smarthost)


# --- openssl s_client -----------------------------------------------------------------------


def s_client_connect(gw: GatewayProcess, listener: str) -> list[str]:
    if listener == "starttls":
        return ["-starttls", "smtp", "-name", HELO, "-connect", f"127.0.0.1:{gw.port}"]
    return ["-connect", f"127.0.0.1:{gw.tls_port}"]


def s_client_args(gw: GatewayProcess, listener: str, cert: Any = None) -> list[str]:
    """A hand-typed session over s_client, verifying the gateway (with `cert`, a
    `ClientCert`, presented as the client's certificate)."""
    certificate = ["-cert", str(cert.cert_path), "-key", str(cert.key_path)] if cert else []
    return [
        require_tool("openssl"),
        "s_client",
        *s_client_connect(gw, listener),
        "-CAfile",
        str(gw.ca_file),
        "-verify_ip",
        "127.0.0.1",
        "-verify_return_error",
        *certificate,
        "-crlf",
        "-quiet",
        # Else a line starting with R (RCPT) renegotiates and one starting with Q quits.
        "-nocommands",
    ]


def s_client_send(client: LineClient, marker: str, body: str | None = None) -> None:
    """MAIL, RCPT, DATA and QUIT for a client that is logged in (or needs no login)."""
    client.send(f"MAIL FROM:<{USER}>\nRCPT TO:<{RCPT}>\nDATA\n")
    client.expect("250 2.1.0 ")
    client.expect("250 2.1.5 ")
    client.expect("354 ")
    client.send(f"Subject: interop {marker}\n\n{body or f'Body {marker}'}\n.\n")
    client.expect("250 2.0.0 ")
    client.send("QUIT\n")
    client.expect("221 ")
    assert client.finish() == 0, client.stderr


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_openssl_s_client_dialogue(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, listener: str
) -> None:
    """A hand-typed session. s_client sends stdin only once TLS is up, and each group of
    commands waits for the previous reply, as RFC 2920 wants around AUTH and DATA."""
    args = s_client_args(gateway, listener)
    marker = token()
    with LineClient(args) as client:
        if listener == "implicit":
            client.expect("220 ")  # with -starttls, s_client consumes the greeting itself
        client.send(f"EHLO {HELO}\n")
        assert client.expect("250 ") == "250 AUTH PLAIN LOGIN"
        client.send(f"AUTH PLAIN {PLAIN_BLOB}\n")
        client.expect("235 2.7.0 ")
        s_client_send(client, marker, f"Body {marker}\nRegards,\nQ.\nKeys")
    msg = assert_relayed(gateway, smarthost, marker)
    assert msg.raw.endswith(b"\r\nRegards,\r\nQ.\r\nKeys\r\n")


# --- certificate verification is really on --------------------------------------------------


def _swaks_stranger(gw: GatewayProcess, ca: Path, tmp_path: Path) -> list[str]:
    args = swaks_args(gw, "starttls", token())
    args[args.index("--tls-ca-path") + 1] = str(ca)
    return [*args, "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD]


def _msmtp_stranger(gw: GatewayProcess, ca: Path, tmp_path: Path) -> list[str]:
    rc = msmtprc(tmp_path / "msmtprc", gw, listener="starttls", auth="on", tls_trust_file=str(ca))
    return [require_tool("msmtp"), "-C", str(rc), RCPT]


def _curl_stranger(gw: GatewayProcess, ca: Path, tmp_path: Path) -> list[str]:
    message = tmp_path / "message.eml"
    message.write_bytes(crlf_message(token()).encode())
    url = f"smtps://127.0.0.1:{gw.tls_port}"
    return curl_args(url, message, "--cacert", str(ca), "--user", f"{USER}:{PASSWORD}")


def _openssl_stranger(gw: GatewayProcess, ca: Path, tmp_path: Path) -> list[str]:
    connect = ["-starttls", "smtp", "-connect", f"127.0.0.1:{gw.port}"]
    options = ["-CAfile", str(ca), "-verify_return_error", "-crlf", "-quiet", "-nocommands"]
    return [require_tool("openssl"), "s_client", *connect, *options]


STRANGER_CLIENTS = {
    "swaks": (_swaks_stranger, "certificate verify failed"),
    "msmtp": (_msmtp_stranger, "TLS certificate verification failed"),
    "curl": (_curl_stranger, "SSL certificate problem: unable to get local issuer certificate"),
    "openssl": (_openssl_stranger, "certificate verify failed"),
}


@pytest.mark.parametrize("client", STRANGER_CLIENTS)
def test_client_rejects_certificate_from_another_ca(
    gateway: GatewayProcess,
    smarthost: CaptureSmarthost,
    stranger_ca: Path,
    tmp_path: Path,
    client: str,
) -> None:
    """Guards the tests above: their clients do verify, so success there means a trusted chain."""
    build, complaint = STRANGER_CLIENTS[client]
    args = build(gateway, stranger_ca, tmp_path)
    dialogue = f"EHLO {HELO}\nAUTH PLAIN {PLAIN_BLOB}\nQUIT\n"
    result = run_client(args, input=dialogue if client == "openssl" else crlf_message(token()))
    assert result.returncode != 0
    assert complaint in result.stdout + result.stderr
    assert gateway.log_events("auth") == []
    assert_nothing_relayed(gateway, smarthost)


# --- Postfix as the smarthost ---------------------------------------------------------------


def test_postfix_smarthost_end_to_end(
    gateway_factory: Any, postfix_smarthost: PostfixSmarthost, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory(smarthost_address=postfix_smarthost.address)
    marker = token()
    client = gw.smtp()
    assert client.mail(USER)[0] == 250 and client.rcpt(RCPT)[0] == 250
    code, reply = client.data(crlf_message(marker).encode())
    client.quit()
    # Pass-through: the client's 250 names the gateway's queue id, then quotes Postfix's own
    # answer, its queue id included.
    ours_id, _, theirs_reply = reply.decode().removeprefix("2.0.0 Ok: queued as ").partition(" ")
    assert code == 250 and theirs_reply.startswith("(smarthost: 250 2.0.0 Ok: queued as ")
    queue_id = theirs_reply.rstrip(")").rsplit(" ", 1)[1]
    (msg,) = smarthost.wait_for_messages(1, timeout=30)
    assert msg.mail_from == USER and msg.rcpt_tos == [RCPT]
    assert f"Body {marker}".encode() in msg.raw
    # Postfix prepends its trace above the gateway's; the text is unfolded to compare.
    theirs, ours = (" ".join(h.split()) for h in msg.message.get_all("Received"))
    assert theirs.startswith("from gw.test (") and "[127.0.0.1]" in theirs
    assert f"by {postfix_smarthost.myhostname} (Postfix) with ESMTP id {queue_id}" in theirs
    assert ours.startswith(f"from {HELO} ([127.0.0.1])")
    assert f"(authenticated sender: {USER}) by gw.test with ESMTPSA id {ours_id} " in ours
    (event,) = wait_for_events(gw, "message")
    assert event["user"] == USER and event["smarthost"] == postfix_smarthost.address
    assert event["reply"].startswith("250 2.0.0 Ok: queued as ")
    assert event["queue_id"] == ours_id and event["smarthost_queue_id"] == queue_id


def test_postfix_rejected_recipient_is_passed_through(
    gateway_factory: Any, smarthost: CaptureSmarthost, tmp_path_factory: pytest.TempPathFactory
) -> None:
    postfix = PostfixSmarthost(smarthost, keep_log_in=tmp_path_factory.mktemp("postfix"))
    access = "inline:{ { nobody@example.net = 550 5.1.1 Mailbox unknown } }"
    try:
        postfix.start({"smtpd_recipient_restrictions": f"check_recipient_access {access}"})
        gw = gateway_factory(smarthost_address=postfix.address)
        marker = token()
        client = gw.smtp()
        refused = client.sendmail(USER, [RCPT, "nobody@example.net"], crlf_message(marker).encode())
        client.quit()
        code, text = refused["nobody@example.net"]
        assert code == 550 and text.startswith(b"5.1.1 <nobody@example.net>: Recipient address")
        assert b"Mailbox unknown" in text and list(refused) == ["nobody@example.net"]
        (msg,) = smarthost.wait_for_messages(1, timeout=30)
        assert msg.rcpt_tos == [RCPT]
        assert f"Body {marker}".encode() in msg.raw
        (event,) = wait_for_events(gw, "message")
        assert event["recipients"] == 1 and event["reply"].startswith("250 ")
    finally:
        postfix.stop()
