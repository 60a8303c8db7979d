"""Protocol rules of the SMTP session, against a real gateway process over loopback."""

from __future__ import annotations

import json
import re
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.client import Dialog, b64
from tests.support.gateway import PASSWORD, USER, GatewayProcess, run_cli
from tests.support.smarthost import CaptureSmarthost, free_port

CAROL_PASSWORD = "violet kite over the bay"
MSG = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: test\r\n\r\nHello.\r\n"


def tls_dialog(gw: GatewayProcess, *, login: bool = True) -> Dialog:
    d = Dialog(gw.port)
    assert d.cmd("EHLO client.test").code == 250
    assert d.starttls(gw.ssl_context()).code == 220
    assert d.cmd("EHLO client.test").code == 250
    if login:
        assert d.login(USER, PASSWORD).code == 235
    return d


def implicit_dialog(gw: GatewayProcess, *, login: bool = True) -> Dialog:
    d = Dialog(gw.tls_port, tls_context=gw.ssl_context())
    assert d.cmd("EHLO client.test").code == 250
    if login:
        assert d.login(USER, PASSWORD).code == 235
    return d


LISTENERS = {"starttls": tls_dialog, "implicit": implicit_dialog}


# --- before TLS ---------------------------------------------------------------------------


def test_greeting_names_host_not_software(gateway: GatewayProcess) -> None:
    d = Dialog(gateway.port)
    assert d.greeting.code == 220
    assert d.greeting.text.split()[0] == "gw.test"
    for leak in ("aiosmtpd", "python", "submitgw", "1.4"):
        assert leak not in d.greeting.text.lower()


def test_ehlo_before_tls_offers_starttls_not_auth(gateway: GatewayProcess) -> None:
    d = Dialog(gateway.port)
    keywords = [line.split()[0] for line in d.cmd("EHLO client.test").text.splitlines()[1:]]
    assert "STARTTLS" in keywords
    assert not any(k.startswith("AUTH") for k in keywords)


@pytest.mark.parametrize(
    "command",
    ["MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.net>", "DATA", "AUTH PLAIN", "VRFY x"],
)
def test_commands_before_tls_need_starttls(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, command: str
) -> None:
    d = Dialog(gateway.port)
    d.cmd("EHLO client.test")
    reply = d.cmd(command)
    assert reply.lines == ["530 5.7.0 Must issue a STARTTLS command first"]


def test_auth_with_password_before_tls_is_refused_and_not_checked(
    gateway: GatewayProcess,
) -> None:
    d = Dialog(gateway.port)
    d.cmd("EHLO client.test")
    reply = d.cmd("AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}"))
    assert reply.code == 530
    assert gateway.log_events("auth") == []


def test_commands_pipelined_after_starttls_are_discarded(gateway: GatewayProcess) -> None:
    d = Dialog(gateway.port)
    d.cmd("EHLO client.test")
    d.send(b"STARTTLS\r\nNOOP\r\n")
    assert d.read().code == 220
    assert d.buffer == b""
    d.sock = gateway.ssl_context().wrap_socket(d.sock, server_hostname="localhost")
    reply = d.cmd("EHLO client.test")
    assert reply.lines[0] == "250-gw.test", "the injected NOOP must not have been answered"


# --- after TLS ------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", LISTENERS)
def test_auth_advertised_inside_tls(gateway: GatewayProcess, listener: str) -> None:
    d = LISTENERS[listener](gateway, login=False)
    keywords = d.cmd("EHLO client.test").text.splitlines()
    assert "AUTH PLAIN LOGIN" in keywords
    assert "STARTTLS" not in keywords


@pytest.mark.parametrize("listener", LISTENERS)
def test_relay_refused_without_auth(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, listener: str
) -> None:
    d = LISTENERS[listener](gateway, login=False)
    assert d.cmd("MAIL FROM:<alice@example.org>").lines == ["530 5.7.0 Authentication required"]
    assert d.cmd("RCPT TO:<bob@example.net>").code == 503
    assert d.cmd("DATA").code == 503
    time.sleep(0.3)
    assert smarthost.messages() == []


@pytest.mark.parametrize("listener", LISTENERS)
def test_second_starttls_refused(gateway: GatewayProcess, listener: str) -> None:
    d = LISTENERS[listener](gateway, login=False)
    assert d.cmd("STARTTLS").lines == ["554 5.5.1 TLS already active"]
    assert d.cmd("NOOP").code == 250


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_version_minimum_is_1_2(gateway: GatewayProcess) -> None:
    ctx = gateway.ssl_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        Dialog(gateway.tls_port, tls_context=ctx)


@pytest.mark.parametrize("listener", LISTENERS)
def test_login_succeeds_and_mail_flows(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, listener: str
) -> None:
    d = LISTENERS[listener](gateway)
    assert d.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert d.cmd("RCPT TO:<bob@example.net>").code == 250
    assert d.cmd("DATA").code == 354
    d.send(MSG + b".\r\n")
    reply = d.read()
    assert reply.code == 250 and reply.status == "2.0.0"
    (msg,) = smarthost.wait_for_messages(1)
    assert msg.envelope["mail_from"] == "alice@example.org"
    assert msg.envelope["rcpt_tos"] == ["bob@example.net"]


def _auth_failures(gw: GatewayProcess) -> dict[str, list[str]]:
    run = run_cli(
        gw.config, "user", "add", "carol@example.org", "--password-stdin", input=CAROL_PASSWORD
    )
    assert run.returncode == 0
    assert run_cli(gw.config, "user", "disable", "carol@example.org").returncode == 0
    attempts = {
        "wrong password": f"\0{USER}\0not the password",
        "unknown user": "\0nobody@example.org\0whatever",
        "disabled user": f"\0carol@example.org\0{CAROL_PASSWORD}",
        "authzid differs": f"bob@example.org\0{USER}\0{PASSWORD}",
        "not an address": "\0alice\0whatever",
    }
    replies = {}
    for name, blob in attempts.items():
        d = tls_dialog(gw, login=False)
        replies[name] = d.cmd("AUTH PLAIN " + b64(blob)).lines
        d.close()
    return replies


def test_every_failed_login_gets_the_same_535(gateway: GatewayProcess) -> None:
    replies = _auth_failures(gateway)
    assert all(r == ["535 5.7.8 Authentication credentials invalid"] for r in replies.values())


def test_auth_login_mechanism_and_authzid_equal_to_login(gateway: GatewayProcess) -> None:
    d = tls_dialog(gateway, login=False)
    assert d.cmd("AUTH LOGIN").lines == ["334 " + b64("Username:")]
    assert d.cmd(b64(USER.upper())).lines == ["334 " + b64("Password:")]
    assert d.cmd(b64(PASSWORD)).lines == ["235 2.7.0 Authentication successful"]
    assert d.cmd("AUTH PLAIN " + b64(f"\0{USER}\0{PASSWORD}")).lines[0].startswith("503 5.5.1")
    d2 = tls_dialog(gateway, login=False)
    assert d2.cmd("AUTH PLAIN " + b64(f"{USER}\0{USER}\0{PASSWORD}")).code == 235
    d3 = tls_dialog(gateway, login=False)
    assert d3.cmd("AUTH LOGIN " + b64(USER)).lines == ["334 " + b64("Password:")]
    assert d3.cmd(b64(PASSWORD)).code == 235


def test_auth_protocol_errors(gateway: GatewayProcess) -> None:
    d = tls_dialog(gateway, login=False)
    assert d.cmd("AUTH PLAIN !!notbase64!!").lines == ["501 5.5.2 Cannot decode base64 response"]
    assert d.cmd("AUTH PLAIN").lines == ["334 "]
    assert d.cmd("*").lines[0].startswith("501 ")
    assert d.cmd("AUTH LOGIN").code == 334
    assert d.cmd("@@@").status == "5.5.2"
    assert d.cmd("AUTH CRAM-MD5").lines == ["504 5.5.4 Unrecognized authentication mechanism"]
    assert d.cmd("AUTH").code == 501
    assert d.cmd("NOOP").code == 250


def test_auth_response_too_long(gateway: GatewayProcess) -> None:
    d = tls_dialog(gateway, login=False)
    assert d.cmd("AUTH PLAIN").code == 334
    assert d.cmd("A" * 20000).lines == ["500 5.5.2 Line too long"]
    assert d.cmd("NOOP").code == 250


def test_no_secret_reaches_the_log(gateway: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    _auth_failures(gateway)
    client = gateway.smtp()
    client.sendmail(USER, ["bob@example.net"], MSG)
    client.quit()
    d = tls_dialog(gateway, login=False)
    d.cmd("AUTH LOGIN")
    d.cmd(b64(USER))
    d.cmd(b64("typed-the-wrong-secret"))
    time.sleep(0.3)
    log = gateway.log_text()
    assert gateway.log_events("auth"), "the log must record logins at all"
    for secret in (PASSWORD, "not the password", CAROL_PASSWORD, "typed-the-wrong-secret"):
        assert secret not in log
        assert b64(secret) not in log
    assert b64(f"\0{USER}\0{PASSWORD}") not in log


# --- bad input ------------------------------------------------------------------------------


def test_bad_command_lines(gateway: GatewayProcess) -> None:
    d = tls_dialog(gateway)
    assert d.cmd("NOOP " + "x" * 600).lines == ["500 5.5.2 Line too long"]
    assert d.cmd("X" * 70000).lines == ["500 5.5.2 Line too long"]
    assert d.cmd(b"NO\x00OP").status == "5.5.2"
    assert d.cmd(b"NOOP\rRSET").status == "5.5.2"
    assert d.cmd(b"MAIL FROM:<\xff@example.org>").code == 500
    assert d.cmd("BDAT 10 LAST").lines == ["500 5.5.1 Command not recognized"]
    assert d.cmd("VRFY alice").code == 252
    assert d.cmd("VRFY nobody-at-all").code == 252
    assert d.cmd("EXPN staff").code == 502
    assert d.cmd("NOOP").lines == ["250 2.0.0 OK"]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("MAIL FROM:alice@example.org", "501 5.5.4"),
        ("MAIL FROM:<alice%evil.com@example.org>", "553 5.1.7"),
        ("MAIL FROM:<evil.com!alice@example.org>", "553 5.1.7"),
        ("MAIL FROM:<@relay.example:alice@example.org>", "553 5.1.7"),
        ('MAIL FROM:<"alice"@example.org>', "553 5.1.7"),
        ("MAIL FROM:<alice@[127.0.0.1]>", "553 5.1.7"),
        ("MAIL FROM:<alice@example.org.>", "553 5.1.7"),
        ("MAIL FROM:<alice@example.org> FOO=BAR", "555 5.5.4"),
        ("MAIL FROM:<jörg@example.org>", "553 5.6.7"),
        ("MAIL FROM:<>", "553 5.7.1"),
    ],
)
def test_sender_tricks_rejected(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, command: str, reply: str
) -> None:
    d = tls_dialog(gateway)
    assert d.cmd(command).lines[0].startswith(reply + " ")
    assert d.cmd("MAIL FROM:<alice@example.org>").code == 250


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        ("RCPT TO:bob@example.net", "501 5.5.4"),
        ("RCPT TO:<bob%other.example@example.net>", "553 5.1.3"),
        ("RCPT TO:<other!bob@example.net>", "553 5.1.3"),
        ("RCPT TO:<@example.net:bob@other.example>", "553 5.1.3"),
        ('RCPT TO:<"bob@other"@example.net>', "553 5.1.3"),
        ("RCPT TO:<bob@[10.0.0.1]>", "553 5.1.3"),
        ("RCPT TO:<bob@example.net> NOTIFY=NEVER", "555 5.5.4"),
        ("RCPT TO:<bøb@example.net>", "553 5.6.7"),
        ("RCPT TO:<>", "553 5.1.3"),
    ],
)
def test_recipient_tricks_rejected(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, command: str, reply: str
) -> None:
    d = tls_dialog(gateway)
    assert d.cmd("MAIL FROM:<alice@example.org>").code == 250
    assert d.cmd(command).lines[0].startswith(reply + " ")
    assert d.cmd("RCPT TO:<bob@example.net>").code == 250
    assert d.cmd("DATA").code == 354
    d.send(MSG + b".\r\n")
    assert d.read().code == 250
    (msg,) = smarthost.wait_for_messages(1)
    assert msg.envelope["rcpt_tos"] == ["bob@example.net"]


def test_smtputf8_address_forwarded_exactly(gateway_factory: Any, smarthost_factory: Any) -> None:
    sink = smarthost_factory(smtputf8=True)
    gw = gateway_factory(smarthost_address=sink.address)
    d = tls_dialog(gw)
    assert d.cmd("MAIL FROM:<alice@example.org> SMTPUTF8 BODY=8BITMIME").code == 250
    assert d.cmd("RCPT TO:<jörg@bücher.example>").code == 250
    assert d.cmd("DATA").code == 354
    d.send(MSG + b".\r\n")
    assert d.read().code == 250
    (msg,) = sink.wait_for_messages(1)
    assert msg.envelope["rcpt_tos"] == ["jörg@bücher.example"]


def _send_data(d: Dialog, data: bytes, mail: str = "MAIL FROM:<alice@example.org>") -> Any:
    assert d.cmd(mail).code == 250
    assert d.cmd("RCPT TO:<bob@example.net>").code == 250
    assert d.cmd("DATA").code == 354
    d.send(data)
    return d.read()


def test_eight_bit_data_needs_8bitmime(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    body = "Subject: caf\u00e9\r\n\r\ncaf\u00e9\r\n.\r\n".encode()
    d = tls_dialog(gateway)
    assert _send_data(d, body).lines == ["554 5.6.0 8-bit message data requires BODY=8BITMIME"]
    reply = _send_data(d, body, "MAIL FROM:<alice@example.org> BODY=8BITMIME")
    assert reply.code == 250
    assert _send_data(d, b"Subject: x\r\n\r\nnul\x00here\r\n.\r\n").status == "5.6.0"
    (msg,) = smarthost.wait_for_messages(1)
    assert "café".encode() in msg.raw


@pytest.mark.parametrize(
    "smuggle",
    [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r", b"\r.\r"],
    ids=["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CRLF", "CRLF.CR", "CR.CR"],
)
def test_smuggling_never_makes_a_second_message(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, smuggle: bytes
) -> None:
    payload = (
        b"Subject: first\r\n\r\nbody"
        + smuggle
        + b"MAIL FROM:<ceo@example.org>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nowned\r\n.\r\n"
    )
    d = tls_dialog(gateway)
    reply = _send_data(d, payload)
    assert reply.code == 250
    assert d.cmd("NOOP").code == 250
    messages = smarthost.wait_for_messages(1)
    time.sleep(0.5)
    messages = smarthost.messages()
    assert len(messages) == 1
    assert messages[0].envelope["rcpt_tos"] == ["bob@example.net"]
    assert all(m.envelope["mail_from"] != "ceo@example.org" for m in messages)


def test_dot_stuffing_round_trip(gateway: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    d = tls_dialog(gateway)
    assert _send_data(d, b"Subject: dots\r\n\r\n..leading\r\n...\r\n.\r\n").code == 250
    (msg,) = smarthost.wait_for_messages(1)
    assert msg.raw.endswith(b"\r\n.leading\r\n..\r\n")


def test_a_big_message_with_odd_lines_arrives_byte_exact(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    """Several MiB, so the message is read, normalised and sent in many pieces: bare CRs
    and LFs and leading dots every few bytes (every piece starts with a dot), with line
    lengths that shift where each piece is cut, must come out as the one-shot rules say
    (CRLF everywhere, stuffed on the wire, unstuffed by the smarthost)."""
    odd = [b".dot\r\n", b"bare\n", b"cr\r", b".\n", b"\r", b"\n.x\r\n", b"..\r\n"]
    body = b"".join(b"." + b"y" * (i % 97) + odd[i % len(odd)] for i in range(90_000))
    content = b"Subject: big\r\n\r\n" + body + b"\r\n"
    assert len(content) > 4 * 1024 * 1024
    sent = content.replace(b"\r\n.", b"\r\n..")
    d = tls_dialog(gateway)
    assert _send_data(d, sent + b".\r\n").code == 250
    (msg,) = smarthost.wait_for_messages(1)
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", body + b"\r\n")
    assert msg.raw.endswith(b"\r\n\r\n" + expected)


# --- relay ----------------------------------------------------------------------------------


def test_received_header_and_added_fields(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    client = gateway.smtp()
    client.sendmail(USER, ["bob@example.net"], b"Subject: bare\r\n\r\nno id or date\r\n")
    own = b"Message-ID: <own@client.test>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
    client.sendmail(USER, ["bob@example.net"], own + b"Subject: full\r\n\r\nx\r\n")
    client.quit()
    first, second = smarthost.wait_for_messages(2)
    received = first.message["Received"]
    assert "ESMTPSA" in received and f"authenticated sender: {USER}" in received
    assert "[127.0.0.1]" in received and "by gw.test" in received
    assert first.message["Message-ID"].endswith("@gw.test>")
    assert first.message["Date"]
    assert second.message.get_all("Message-ID") == ["<own@client.test>"]
    assert len(second.message.get_all("Date")) == 1


def test_hide_client_ip(gateway_factory: Any, smarthost: CaptureSmarthost) -> None:
    gw = gateway_factory({"server": {"hide_client_ip": True}})
    client = gw.smtp()
    client.sendmail(USER, ["bob@example.net"], MSG)
    client.quit()
    (msg,) = smarthost.wait_for_messages(1)
    assert "127.0.0.1" not in msg.message["Received"]
    assert "ESMTPSA" in msg.message["Received"]


def test_message_log_line(gateway: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    client = gateway.smtp()
    client.sendmail(USER, ["bob@example.net", "carol@example.net"], MSG)
    client.quit()
    smarthost.wait_for_messages(1)
    time.sleep(0.3)
    (event,) = gateway.log_events("message")
    assert event["user"] == USER and event["sender"] == USER
    assert event["recipients"] == 2 and event["size"] == len(MSG)
    assert event["recipient_list"] == ["bob@example.net", "carol@example.net"]
    assert event["client"] == "127.0.0.1" and event["reply"].startswith("250")
    assert event["smarthost"] == smarthost.address
    assert 0 < event["smarthost_seconds"] < 5
    (relayed,) = smarthost.messages()
    assert event["message_id"] == relayed.message["Message-ID"].strip("<>")
    assert event["smarthost_queue_id"] == relayed.seq and len(event["queue_id"]) == 18
    (session,) = gateway.log_events("session")
    assert session["user"] == USER and session["messages"] == 1 and session["end"] == "quit"


def test_smarthost_down_gives_4xx(gateway_factory: Any, smarthost: CaptureSmarthost) -> None:
    gw = gateway_factory(smarthost_address=f"127.0.0.1:{free_port()}")
    d = tls_dialog(gw)
    reply = d.cmd("MAIL FROM:<alice@example.org>")
    assert reply.code == 451 and reply.status == "4.4.1"
    assert d.cmd("NOOP").code == 250
    (trouble,) = gw.log_events("smarthost")
    assert (trouble["step"], trouble["error"]) == ("connect", "connect")
    assert trouble["level"] == "warning"
    assert trouble["server"] == gw.smarthost and trouble["session"]


def test_smarthost_failover(gateway_factory: Any, smarthost: CaptureSmarthost) -> None:
    gw = gateway_factory(smarthost_address=f"127.0.0.1:{free_port()}", start=False)
    gw.start("--smarthost", smarthost.address)
    client = gw.smtp()
    client.sendmail(USER, ["bob@example.net"], MSG)
    client.quit()
    assert len(smarthost.wait_for_messages(1)) == 1


def test_smarthost_rejects_one_recipient(gateway_factory: Any, smarthost_factory: Any) -> None:
    sink = smarthost_factory(reject_rcpt=["nobody"])
    gw = gateway_factory(smarthost_address=sink.address)
    client = gw.smtp()
    refused = client.sendmail(USER, ["bob@example.net", "nobody@example.net", "eve@x.net"], MSG)
    client.quit()
    assert list(refused) == ["nobody@example.net"]
    assert refused["nobody@example.net"][0] == 550
    (msg,) = sink.wait_for_messages(1)
    assert msg.envelope["rcpt_tos"] == ["bob@example.net", "eve@x.net"]
    (trouble,) = gw.log_events("smarthost")
    assert (trouble["step"], trouble["error"]) == ("rcpt", "5xx")
    assert trouble["detail"].startswith("550 ")


def test_smarthost_rejects_data(gateway_factory: Any, smarthost_factory: Any) -> None:
    sink = smarthost_factory(reject_data=True)
    gw = gateway_factory(smarthost_address=sink.address)
    d = tls_dialog(gw)
    assert _send_data(d, MSG + b".\r\n").lines[0].startswith("554 5.6.0")


@pytest.mark.parametrize("behaviour", ["drop_after_data", "data_delay"])
def test_smarthost_lost_after_data_is_never_250(
    gateway_factory: Any, smarthost_factory: Any, behaviour: str
) -> None:
    sink = smarthost_factory(**({behaviour: True} if behaviour != "data_delay" else {behaviour: 5}))
    gw = gateway_factory({"smarthost": {"data_timeout": 1.0}}, smarthost_address=sink.address)
    d = tls_dialog(gw)
    reply = _send_data(d, MSG + b".\r\n")
    assert reply.code == 451 and reply.status == "4.4.2"
    assert "may or may not" in reply.text
    assert d.cmd("NOOP").code == 250
    (trouble,) = gw.log_events("smarthost")
    expected = "lost" if behaviour == "drop_after_data" else "timeout"
    assert (trouble["step"], trouble["error"]) == ("data", expected)
    assert "may or may not have queued it" in trouble["detail"]
    (message,) = gw.log_events("message")
    assert message["reply"].startswith("451 4.4.2") and message["smarthost"] == sink.address
    assert message["smarthost_seconds"] is not None


def _smarthost_that_stops_reading(stop: threading.Event) -> tuple[str, threading.Thread]:
    """Answers up to DATA's 354, then reads nothing more until `stop`."""
    server = socket.create_server(("127.0.0.1", 0))
    # Small and fixed (no autotuning), so the gateway's side fills up long before the end.
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    server.settimeout(20)

    def serve() -> None:
        with server, server.accept()[0] as conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 stall.test\r\n")
            while line := lines.readline():
                if line[:4].upper() == b"DATA":
                    conn.sendall(b"354 go on\r\n")
                    stop.wait(20)
                    return
                conn.sendall(b"250 ok\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"127.0.0.1:{server.getsockname()[1]}", thread


def test_a_smarthost_that_stops_reading_times_out_the_message(gateway_factory: Any) -> None:
    """The message goes out as fast as the smarthost takes it; one that stops taking it
    (its socket buffers full) gets data_timeout, and the client a 451, never a 250."""
    stop = threading.Event()
    address, thread = _smarthost_that_stops_reading(stop)
    try:
        gw = gateway_factory({"smarthost": {"data_timeout": 1.0}}, smarthost_address=address)
        d = tls_dialog(gw)
        big = b"Subject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 150_000 + b".\r\n"
        reply = _send_data(d, big)
        assert reply.code == 451 and reply.status == "4.4.2"
        assert d.cmd("NOOP").code == 250
        (trouble,) = gw.log_events("smarthost")
        assert (trouble["step"], trouble["error"]) == ("data", "timeout")
    finally:
        stop.set()
        thread.join(5)


def test_hundred_recipients_then_452(gateway: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    d = tls_dialog(gateway)
    d.cmd("MAIL FROM:<alice@example.org>")
    for i in range(100):
        assert d.cmd(f"RCPT TO:<user{i}@example.net>").code == 250
    assert d.cmd("RCPT TO:<one-too-many@example.net>").lines == ["452 4.5.3 Too many recipients"]
    assert d.cmd("DATA").code == 354
    d.send(MSG + b".\r\n")
    assert d.read().code == 250
    (msg,) = smarthost.wait_for_messages(1)
    assert len(msg.envelope["rcpt_tos"]) == 100


def test_oversize_gets_552(gateway_factory: Any, smarthost: CaptureSmarthost) -> None:
    gw = gateway_factory({"limits": {"max_message_size": 10000}})
    d = tls_dialog(gw)
    assert "SIZE 10000" in d.cmd("EHLO client.test").text.splitlines()
    assert d.cmd("MAIL FROM:<alice@example.org> SIZE=20000").lines[0].startswith("552 5.3.4")
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200 + b".\r\n"
    assert _send_data(d, big).lines[0].startswith("552 5.3.4")
    assert d.cmd("NOOP").code == 250
    time.sleep(0.3)
    assert smarthost.messages() == []
    # Refused after DATA: logged, as not having gone to the smarthost.
    (message,) = gw.log_events("message")
    assert message["reply"].startswith("552 5.3.4") and message["sender"] == USER
    assert (message["smarthost"], message["smarthost_seconds"]) == (None, None)


def test_overlong_data_line(gateway: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    d = tls_dialog(gateway)
    reply = _send_data(d, b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n.\r\n")
    assert reply.lines == ["500 5.5.2 Line too long"]
    assert d.cmd("NOOP").code == 250


def test_rset_and_ehlo_reset_the_transaction(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    d = tls_dialog(gateway)
    d.cmd("MAIL FROM:<alice@example.org>")
    d.cmd("RCPT TO:<first@example.net>")
    assert d.cmd("RSET").code == 250
    assert d.cmd("RCPT TO:<x@example.net>").code == 503
    d.cmd("MAIL FROM:<alice@example.org>")
    d.cmd("RCPT TO:<second@example.net>")
    d.cmd("EHLO again.test")
    assert _send_data(d, MSG + b".\r\n").code == 250
    (msg,) = smarthost.wait_for_messages(1)
    assert msg.envelope["rcpt_tos"] == ["bob@example.net"]


def test_many_messages_one_connection(gateway: GatewayProcess, smarthost: CaptureSmarthost) -> None:
    client = gateway.smtp()
    for i in range(5):
        client.sendmail(USER, [f"r{i}@example.net"], MSG)
    client.quit()
    assert len(smarthost.wait_for_messages(5)) == 5


# --- limits ---------------------------------------------------------------------------------


def test_idle_timeout(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"idle_timeout": 1.0}})
    d = tls_dialog(gw)
    time.sleep(1.5)
    reply = d.read()
    assert reply.code == 421 and reply.status == "4.4.2"
    assert d.closed()


def test_idle_timeout_applies_during_data(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"idle_timeout": 1.0}})
    d = tls_dialog(gw)
    d.cmd("MAIL FROM:<alice@example.org>")
    d.cmd("RCPT TO:<bob@example.net>")
    assert d.cmd("DATA").code == 354
    d.send(b"Subject: slow\r\n")
    assert d.read().code == 421
    assert d.closed()


def test_session_lifetime(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"idle_timeout": 5.0, "max_session_seconds": 2.0}})
    d = tls_dialog(gw)
    deadline = time.monotonic() + 10
    reply = None
    while time.monotonic() < deadline:
        reply = d.cmd("NOOP")
        if reply.code != 250:
            break
        time.sleep(0.3)
    assert reply is not None and reply.code == 421
    assert d.closed()


def test_pipelined_command_flood_is_cut(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"max_junk_commands": 50}})
    d = tls_dialog(gw)
    d.send(b"NOOP\r\n" * 500)
    codes = []
    for _ in range(500):
        try:
            codes.append(d.read().code)
        except ConnectionError:
            break
    assert codes.count(250) <= 50
    assert 421 in codes
    assert d.closed()
    assert ended(gw) == "junk-commands"


def test_error_flood_is_cut(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"max_errors": 5}})
    d = tls_dialog(gw)
    replies = [d.cmd("BOGUS") for _ in range(4)]
    assert all(r.code == 500 for r in replies)
    assert d.cmd("BOGUS").code == 500
    assert d.read().lines == ["421 4.7.0 Too many errors, closing connection"]
    assert d.closed()
    assert ended(gw) == "errors"


def ended(gw: GatewayProcess) -> str:
    """How the one session so far ended, as its log line says."""
    for _ in range(50):
        sessions = gw.log_events("session")
        if sessions:
            (session,) = sessions
            return str(session["end"])
        time.sleep(0.1)
    raise AssertionError("no session line logged")


def test_connection_limit(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"max_connections": 2}})
    # Logged in, so neither gives way to a newcomer (strangers would: see test_connections).
    first, second = tls_dialog(gw), tls_dialog(gw)
    third = Dialog(gw.port)
    assert third.greeting.lines == ["421 4.7.0 Too many connections, try again later"]
    first.cmd("QUIT")
    first.close()  # the slot is the socket's: it is free once the socket is gone
    time.sleep(0.3)
    assert Dialog(gw.port).greeting.code == 220
    assert second.cmd("NOOP").code == 250


def test_auth_pool_saturation_answers_454(gateway_factory: Any) -> None:
    slow = {"workers": 1, "max_pending": 0, "argon2_time_cost": 6, "argon2_memory_kib": 65536}
    gw = gateway_factory({"auth": slow})
    results: list[str] = []

    def attempt() -> None:
        d = tls_dialog(gw, login=False)
        results.append(d.login(USER, PASSWORD).lines[0])

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert any(r.startswith("454 4.7.0") for r in results), results
    assert any(r.startswith("235 2.7.0") for r in results), results


# --- shutdown -------------------------------------------------------------------------------


def test_sigterm_closes_idle_sessions_with_421_and_exits_0(gateway_factory: Any) -> None:
    gateway = gateway_factory(process=True)
    d = tls_dialog(gateway)
    started = time.monotonic()
    assert gateway.stop() == 0
    # This client reads nothing and never answers the TLS close: it is cut after the
    # close grace (5 s), not after asyncio's 30 s TLS shutdown wait or shutdown_grace.
    assert time.monotonic() - started < 15
    reply = d.read()
    assert reply.lines == ["421 4.3.2 Service shutting down, closing connection"]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=2)


def test_sigterm_lets_in_flight_message_finish(
    gateway_factory: Any, smarthost_factory: Any
) -> None:
    sink = smarthost_factory(data_delay=2)
    gw = gateway_factory(smarthost_address=sink.address)
    d = tls_dialog(gw)
    d.cmd("MAIL FROM:<alice@example.org>")
    d.cmd("RCPT TO:<bob@example.net>")
    d.cmd("DATA")
    d.send(MSG + b".\r\n")
    time.sleep(0.5)
    stopper = threading.Thread(target=lambda: results.append(gw.stop()))
    results: list[int] = []
    stopper.start()
    reply = d.read()
    assert reply.code == 250, "an in-flight message must be allowed to finish"
    assert d.read().lines == ["421 4.3.2 Service shutting down, closing connection"]
    # Hung up, as a client does after a 421: the stop need not wait out the TLS close grace.
    d.close()
    stopper.join(30)
    assert results == [0]
    assert len(sink.wait_for_messages(1)) == 1


def test_smtplib_end_to_end_both_listeners(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    for client in (gateway.smtp(), gateway.smtps()):
        client.sendmail(USER, ["bob@example.net"], MSG)
        client.quit()
    assert len(smarthost.wait_for_messages(2)) == 2
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        gateway.smtp(login=False).login(USER, "wrong")
    assert err.value.smtp_code == 535


@pytest.mark.postgres
def test_gateway_on_postgresql(
    gateway_factory: Any, smarthost: CaptureSmarthost, pg_url: str
) -> None:
    gw = gateway_factory({"database": {"url": pg_url}}, users=False, start=False)
    refused = run_cli(gw.config, "user", "list")
    assert refused.returncode != 0 and "submitgw db upgrade" in refused.stderr
    assert run_cli(gw.config, "db", "upgrade").returncode == 0
    gw.add_user()
    gw.start()
    client = gw.smtp()
    client.sendmail(USER, ["bob@example.net"], MSG)
    client.quit()
    assert len(smarthost.wait_for_messages(1)) == 1
    assert json.loads(run_cli(gw.config, "user", "list", "--json").stdout)[0]["last_login_at"]


def test_smarthost_restart_between_messages_of_one_session(
    gateway_factory: Any, smarthost_factory: Callable[..., CaptureSmarthost]
) -> None:
    smarthost = smarthost_factory()
    gateway = gateway_factory(smarthost_address=smarthost.address)
    client = gateway.smtp()
    client.sendmail(USER, ["first@example.net"], MSG)
    port = smarthost.port
    smarthost.stop()
    smarthost.start(port=port)
    client.sendmail(USER, ["second@example.net"], MSG)
    client.quit()
    assert len(smarthost.wait_for_messages(2)) == 2


def test_helo_name_is_sanitised_in_received(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    d = Dialog(gateway.port)
    d.cmd("EHLO x")
    d.starttls(gateway.ssl_context())
    d.cmd("EHLO evil(forged)\u00e9.example")
    assert d.login(USER, PASSWORD).code == 235
    assert _send_data(d, MSG + b".\r\n").code == 250
    (msg,) = smarthost.wait_for_messages(1)
    received = msg.message["Received"]
    assert "forged" not in received and "invalid-helo" in received
