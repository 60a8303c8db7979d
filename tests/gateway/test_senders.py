"""Sender binding in a real gateway process, and `submitgw user sender` on the command line.

Rules proven here: MAIL FROM outside the user's list is refused before the
smarthost is contacted; a forged From: header is refused at the end of DATA and
nothing reaches the smarthost; both apply to certificate logins too; the header
check can be switched off; bindings are read once per session.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from tests.support.client import Dialog
from tests.support.gateway import PASSWORD, USER, ClientCert, GatewayProcess, run_cli
from tests.support.smarthost import CaptureSmarthost, free_port

CERTS_ON = {
    "submission": {"client_certificates": "optional"},
    "submissions": {"client_certificates": "optional"},
}


def message(sender: str, subject: str = "test") -> bytes:
    return f"From: {sender}\r\nTo: bob@example.net\r\nSubject: {subject}\r\n\r\nHi.\r\n".encode()


def session(gw: GatewayProcess, cert: ClientCert | None = None, *, login: bool = True) -> Dialog:
    d = Dialog(gw.port)
    assert d.cmd("EHLO client.test").code == 250
    assert d.starttls(cert.context(gw.ca_file) if cert else gw.ssl_context()).code == 220
    assert d.cmd("EHLO client.test").code == 250
    if login:
        assert d.login(USER, PASSWORD).code == 235
    return d


def transaction(d: Dialog, mail: str, data: bytes) -> str:
    """MAIL, RCPT, DATA: the first refusal or the final reply, as `code status`."""
    for command in (f"MAIL FROM:<{mail}>", "RCPT TO:<bob@example.net>", "DATA"):
        reply = d.cmd(command)
        if reply.code >= 400:
            return f"{reply.code} {reply.status}"
    d.send(data + b".\r\n")
    reply = d.read()
    return f"{reply.code} {reply.status}"


def bind(gw: GatewayProcess, *patterns: str, user: str = USER) -> None:
    for pattern in patterns:
        result = run_cli(gw.config, "user", "sender", "add", user, pattern)
        assert result.returncode == 0, result.stderr


def assert_nothing_relayed(smarthost: CaptureSmarthost) -> None:
    time.sleep(0.3)
    assert smarthost.messages() == []


# --- envelope sender -----------------------------------------------------------------------


def test_mail_from_outside_the_list_is_refused_before_the_smarthost(
    gateway_factory: Any,
) -> None:
    """No smarthost listens: a sender that passed the binding would get 451 instead."""
    gw = gateway_factory(smarthost_address=f"127.0.0.1:{free_port()}", start=False)
    bind(gw, "@example.net")
    gw.start()
    d = session(gw)

    for sender in ("bob@example.org", "x@sub.example.net", "x@example.net.evil.test"):
        reply = d.cmd(f"MAIL FROM:<{sender}>")
        assert reply.lines == [f"553 5.7.1 Sender address not allowed for {USER}"], sender
    assert d.cmd("MAIL FROM:<>").lines[0].startswith("553 5.7.1 ")
    assert d.cmd("MAIL FROM:<x@example.net>").status == "4.4.1", "this one was allowed"
    events = gw.log_events("sender")
    assert [e["addresses"] for e in events] == [
        ["bob@example.org"],
        ["x@sub.example.net"],
        ["x@example.net.evil.test"],
        [""],
    ]
    assert all(e["check"] == "envelope" and e["user"] == USER for e in events)


def test_own_address_and_bindings_pass(gateway_factory: Any, smarthost: CaptureSmarthost) -> None:
    gw = gateway_factory(start=False)
    bind(gw, "@Example.NET", "sales@example.com")
    gw.start()
    d = session(gw)

    for sender in (
        "alice@example.org",
        "ALICE@Example.org",
        "anyone@example.net",
        "Sales@Example.com",
    ):
        assert transaction(d, sender, message(sender)) == "250 2.0.0", sender

    relayed = smarthost.wait_for_messages(4)
    assert [m.envelope["mail_from"] for m in relayed] == [
        "alice@example.org",
        "ALICE@Example.org",
        "anyone@example.net",
        "Sales@Example.com",
    ]


def test_smtputf8_sender_matches_its_binding(gateway_factory: Any, smarthost_factory: Any) -> None:
    sink = smarthost_factory(smtputf8=True)
    gw = gateway_factory(smarthost_address=sink.address, start=False)
    bind(gw, "älice@BÜCHER.example")
    gw.start()
    d = session(gw)

    data = "From: Älice <ÄLICE@bücher.example>\r\nSubject: ü\r\n\r\nHi.\r\n".encode()
    assert d.cmd("MAIL FROM:<straße@bücher.example> SMTPUTF8 BODY=8BITMIME").code == 553
    assert d.cmd("MAIL FROM:<ÄLICE@bücher.example> SMTPUTF8 BODY=8BITMIME").code == 250
    assert d.cmd("RCPT TO:<bob@example.net>").code == 250
    assert d.cmd("DATA").code == 354
    d.send(data + b".\r\n")
    assert d.read().code == 250
    (relayed,) = sink.wait_for_messages(1)
    assert relayed.envelope["mail_from"] == "ÄLICE@bücher.example"


def test_bindings_are_read_once_per_session(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    d = session(gateway)
    assert d.cmd(f"MAIL FROM:<{USER}>").code == 250
    assert d.cmd("RSET").code == 250

    bind(gateway, "@example.net")

    assert d.cmd("MAIL FROM:<x@example.net>").code == 553, "the session keeps what it read"
    assert session(gateway).cmd("MAIL FROM:<x@example.net>").code == 250
    assert run_cli(gateway.config, "user", "sender", "remove", USER, "@example.net").returncode == 0
    assert session(gateway).cmd("MAIL FROM:<x@example.net>").code == 553


# --- From: header -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        b"From: eve@evil.test\r\n",
        b"From: bob@example.org\r\n",
        b'From: "alice@example.org" <eve@evil.test>\r\n',
        b"From: alice@example.org <eve@evil.test>\r\n",
        b"From: (alice@example.org) eve@evil.test\r\n",
        b"From: =?utf-8?q?alice=40example.org?= <eve@evil.test>\r\n",
        b"From: Team: alice@example.org, eve@evil.test;\r\n",
        b"From: alice@example.org\r\nFrom: eve@evil.test\r\n",
        b"From : eve@evil.test\r\nFrom: alice@example.org\r\n",
        b"From: <@evil.test:alice@example.org>\r\n",
        b"From: alice%evil.test@example.org\r\n",
        b"From: alice@example.org.\r\n",
        b"From: alice@[127.0.0.1]\r\n",
        b"From: =?utf-8?q?alice?= @example.org\r\n",
        b"From: undisclosed:;\r\n",
    ],
)
def test_forged_from_header_is_refused_and_nothing_is_relayed(
    gateway: GatewayProcess, smarthost: CaptureSmarthost, headers: bytes
) -> None:
    d = session(gateway)
    data = headers + b"To: bob@example.net\r\nSubject: forged\r\n\r\nHi.\r\n"

    assert transaction(d, USER, data) == "550 5.7.1"
    # The transaction is over here and upstream: a new one starts cleanly.
    assert transaction(d, USER, message(USER, "genuine")) == "250 2.0.0"

    (relayed,) = smarthost.wait_for_messages(1)
    time.sleep(0.3)
    assert len(smarthost.messages()) == 1
    assert relayed.message["Subject"] == "genuine"
    (event,) = gateway.log_events("sender")
    assert event["check"] == "header" and event["reply"].startswith("550 5.7.1 From: header")


def test_from_header_with_a_bound_domain_passes(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory(start=False)
    bind(gw, "@example.net")
    gw.start()
    d = session(gw)

    data = b'From: "ceo@bank.test" <news@EXAMPLE.net>, alice@example.org\r\nSubject: ok\r\n\r\n'
    assert transaction(d, "news@example.net", data) == "250 2.0.0"
    smarthost.wait_for_messages(1)


def test_header_check_can_be_switched_off(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory({"policy": {"check_header_from": False}})
    d = session(gw)

    assert transaction(d, USER, message("eve@evil.test")) == "250 2.0.0"
    (relayed,) = smarthost.wait_for_messages(1)
    assert relayed.message["From"] == "eve@evil.test"
    assert transaction(d, "eve@evil.test", message(USER)) == "553 5.7.1", "MAIL FROM still is"


# --- certificate users --------------------------------------------------------------------------


@pytest.mark.parametrize("auth_external", [False, True], ids=["certificate-alone", "external"])
def test_certificate_users_get_the_same_binding(
    gateway_factory: Any, smarthost: CaptureSmarthost, auth_external: bool
) -> None:
    gw = gateway_factory(CERTS_ON, start=False)
    assert run_cli(gw.config, "user", "set-auth", USER, "certificate").returncode == 0
    bind(gw, "@example.net")
    gw.start()
    d = session(gw, gw.issue_cert(), login=False)
    if auth_external:
        assert d.cmd("AUTH EXTERNAL =").code == 235

    assert transaction(d, "bob@example.org", message(USER)) == "553 5.7.1"
    assert transaction(d, USER, message("eve@evil.test")) == "550 5.7.1"
    assert transaction(d, "x@example.net", message("y@example.net")) == "250 2.0.0"
    (relayed,) = smarthost.wait_for_messages(1)
    assert relayed.envelope["mail_from"] == "x@example.net"


@pytest.mark.postgres
def test_bindings_on_postgresql(
    gateway_factory: Any, smarthost: CaptureSmarthost, pg_url: str
) -> None:
    gw = gateway_factory({"database": {"url": pg_url}}, users=False, start=False)
    assert run_cli(gw.config, "db", "upgrade").returncode == 0
    gw.add_user()
    bind(gw, "@example.net")
    gw.start()
    d = session(gw)

    assert transaction(d, "bob@example.org", message(USER)) == "553 5.7.1"
    assert transaction(d, "x@example.net", message("x@example.net")) == "250 2.0.0"
    smarthost.wait_for_messages(1)


# --- submitgw user sender -------------------------------------------------------------------------


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(gw.config, "user", "sender", *args)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_add_list_remove(gateway_factory: Any) -> None:
    gw = gateway_factory(start=False)

    assert cli(gw, "list", USER).stdout == f"{USER}\town address\n"
    added = cli(gw, "add", "ALICE@Example.org", "Sales@Example.COM")
    assert added.returncode == 0 and added.stdout == f"{USER} may now send as sales@example.com\n"
    assert cli(gw, "add", USER, "@BÜCHER.example").returncode == 0
    assert cli(gw, "list", USER).stdout == (
        f"{USER}\town address\n@bücher.example\tdomain\nsales@example.com\taddress\n"
    )

    removed = cli(gw, "remove", USER, "SALES@example.com")
    assert removed.stdout == f"{USER} may no longer send as sales@example.com\n"
    assert cli(gw, "list", USER).stdout == f"{USER}\town address\n@bücher.example\tdomain\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("add", "nobody@example.org", "@example.net"), "Error: no user nobody@example.org"),
        (("list", "nobody@example.org"), "Error: no user nobody@example.org"),
        (("remove", "nobody@example.org", "@example.net"), "Error: no user nobody@example.org"),
        (("add", "not-an-address", "@example.net"), "Error: 'not-an-address' is not a valid"),
        (("add", USER, "a%b@example.net"), "Error: 'a%b@example.net' is not a sender address"),
        (("add", USER, "@[127.0.0.1]"), "Error: '@[127.0.0.1]' is not a sender address"),
        (("add", USER, "example.net"), "Error: 'example.net' is not a sender address"),
        (("add", USER, "Alice@example.org"), "Error: alice@example.org is the user's own"),
        (("remove", USER, "@example.net"), "Error: @example.net is not bound to alice@"),
        (("remove", USER, "bad pattern"), "Error: 'bad pattern' is not a sender address"),
    ],
)
def test_cli_errors_are_one_line(gateway_factory: Any, args: tuple[str, ...], error: str) -> None:
    gw = gateway_factory(start=False)

    assert one_line_error(cli(gw, *args)).startswith(error)


def test_cli_duplicate_binding(gateway_factory: Any) -> None:
    gw = gateway_factory(start=False)
    bind(gw, "@example.net")

    line = one_line_error(cli(gw, "add", USER, "@EXAMPLE.net"))
    assert line == f"Error: @example.net is already bound to {USER}"


def test_deleting_a_user_deletes_their_bindings(gateway_factory: Any) -> None:
    gw = gateway_factory(start=False)
    bind(gw, "@example.net")

    assert run_cli(gw.config, "user", "delete", USER).returncode == 0
    gw.add_user()

    assert cli(gw, "list", USER).stdout == f"{USER}\town address\n"
