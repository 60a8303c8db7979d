"""Live reload (SIGHUP) against real gateway processes: new connections take the new
configuration and certificate, sessions under way keep theirs, and anything unusable is
refused whole, in one log line, with the gateway serving on as before.
"""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

import pki
from tests.support.gateway import USER, GatewayProcess, run_cli
from tests.support.smarthost import CaptureSmarthost

MSG = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: reload\r\n\r\nHello.\r\n"
TWO = ["bob@example.net", "carol@example.net"]


def hang_up(gw: GatewayProcess, times: int = 1) -> list[dict[str, Any]]:
    """SIGHUP `times` times; the `reload` lines they brought, once each has logged one."""
    assert gw.proc is not None
    before = len(gw.log_events("reload"))
    for _ in range(times):
        gw.proc.send_signal(signal.SIGHUP)
        # Two signals pending at once would be one: let each be taken in first.
        time.sleep(0.02)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = gw.log_events("reload")[before:]
        if len(events) >= times:
            time.sleep(0.1)  # room for a second line, which must not come
            events = gw.log_events("reload")[before:]
            assert len(events) == times, events
            return events
        time.sleep(0.02)
    raise AssertionError(f"no reload line after SIGHUP:\n{gw.log_text()[-2000:]}")


def serial_of(client: smtplib.SMTP | ssl.SSLSocket) -> str:
    """The serial of the certificate the gateway showed this TLS connection."""
    sock = client if isinstance(client, ssl.SSLSocket) else client.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return pki.format_serial(x509.load_der_x509_certificate(der).serial_number)


def site_connection(gw: GatewayProcess) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", gw.web_port), timeout=10)
    return gw.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")


def fetch(tls: ssl.SSLSocket) -> bytes:
    """The status line of one request on a kept-alive connection."""
    tls.sendall(b"GET /style.css HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    return tls.recv(4096).split(b"\r\n", 1)[0]


def new_server_cert(gw: GatewayProcess, name: str) -> Path:
    """A new server certificate from the setup's CA, as an admin makes one."""
    out = gw.dir / name
    result = run_cli(gw.config, "pki", "server-cert", "localhost", "127.0.0.1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "systemctl reload submitgw" in result.stdout
    return out


def install(folder: Path, gw: GatewayProcess, *names: str) -> None:
    for name in names:
        shutil.copyfile(folder / name, gw.dir / "tls" / name)


def rcpts_accepted(gw: GatewayProcess) -> int:
    """How many of two recipients a new session may give one message."""
    client = gw.smtp()
    try:
        assert client.mail(USER)[0] == 250
        return sum(client.rcpt(rcpt)[0] == 250 for rcpt in TWO)
    finally:
        client.close()


def test_a_renewed_certificate_serves_new_clients_and_old_sessions_go_on(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory(process=True, selfservice=True)
    logged_in = gw.smtp()
    old = serial_of(logged_in)
    plain = smtplib.SMTP("127.0.0.1", gw.port, timeout=10)
    plain.ehlo("client.test")  # connected before the reload, STARTTLS after it
    browser = site_connection(gw)

    install(new_server_cert(gw, "renewed"), gw, "server.key", "server.crt")
    # Two in a row: the second waits for the first, then finds nothing more to change.
    first, second = hang_up(gw, times=2)

    new = pki.format_serial(pki.load_certificate(gw.dir / "tls" / "server.crt").serial_number)
    assert new != old
    assert (first["result"], first["changed"], first["needs_restart"]) == (
        "ok",
        ["tls.cert", "tls.key"],
        [],
    )
    assert first["cert_serial"] == new and first["sessions"] == 2
    assert (second["result"], second["changed"]) == ("ok", [])

    starttls = gw.smtp()
    implicit = gw.smtps()
    with site_connection(gw) as site:
        assert serial_of(starttls) == serial_of(implicit) == serial_of(site) == new
    starttls.quit()
    implicit.quit()
    # The self-service site's kept-alive connection too goes on with what it had.
    with browser:
        assert fetch(browser) == b"HTTP/1.1 200 OK"
        assert serial_of(browser) == old

    # The session already in TLS sends on, over the certificate it started with.
    logged_in.sendmail(USER, ["bob@example.net"], MSG)
    assert serial_of(logged_in) == old
    logged_in.quit()
    # The one that took STARTTLS only now still gets its listener's old context.
    plain.starttls(context=gw.ssl_context())
    assert serial_of(plain) == old
    plain.quit()
    assert len(smarthost.wait_for_messages(1)) == 1


def test_a_lowered_limit_applies_to_new_sessions_only(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory(process=True)
    before = gw.smtp()
    gw.configure({"limits": {"max_recipients": 1}})

    (event,) = hang_up(gw)

    assert (event["result"], event["changed"], event["needs_restart"]) == (
        "ok",
        ["limits.max_recipients"],
        [],
    )
    assert rcpts_accepted(gw) == 1
    before.sendmail(USER, TWO, MSG)
    before.quit()
    assert smarthost.wait_for_messages(1)[0].rcpt_tos == TWO


def test_an_unusable_config_or_key_is_refused_whole(gateway_factory: Any) -> None:
    gw = gateway_factory(process=True)
    old = serial_of(gw.smtp())
    renewed = new_server_cert(gw, "renewed")
    good_config = gw.config.read_text()
    # Each attempt also lowers a limit: a reload that applied what it could would show it.
    gw.configure({"limits": {"max_recipients": 1}})
    lowered = gw.config.read_text()

    gw.config.write_text(lowered + "oops =\n")
    install(renewed, gw, "server.crt")  # and the old key stays: not this certificate's
    attempts = {"toml": hang_up(gw)[0]}
    gw.config.write_text(lowered)
    attempts["mismatch"] = hang_up(gw)[0]
    (gw.dir / "tls" / "server.key").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    attempts["garbage"] = hang_up(gw)[0]

    reasons = {name: event["reason"] for name, event in attempts.items()}
    assert all(e["result"] == "refused" and e["level"] == "error" for e in attempts.values())
    assert str(gw.config) in reasons["toml"]
    assert "does not match [tls] cert" in reasons["mismatch"]
    assert "is not a PEM private key" in reasons["garbage"]
    assert gw.running
    client = gw.smtp()
    assert serial_of(client) == old
    client.quit()
    assert rcpts_accepted(gw) == 2

    # Fixed: all of it at once.
    install(renewed, gw, "server.key")
    gw.config.write_text(good_config)
    gw.configure({"limits": {"max_recipients": 1}})
    (event,) = hang_up(gw)
    assert event["changed"] == ["limits.max_recipients", "tls.cert", "tls.key"]
    client = gw.smtp()
    assert serial_of(client) != old
    client.quit()
    assert rcpts_accepted(gw) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_listen_addresses_and_the_database_wait_for_a_restart(gateway_factory: Any) -> None:
    gw = gateway_factory(process=True)
    port = free_port()
    gw.configure(
        {
            "selfservice": {"listen": f"127.0.0.1:{port}"},
            "database": {"url": "sqlite:///elsewhere.db"},
            # The command line's --listen wins over the file, on a reload too.
            "submission": {"listen": "127.0.0.1:1"},
            "limits": {"max_recipients": 1},
        }
    )

    (event,) = hang_up(gw)

    assert event["result"] == "ok" and event["level"] == "warning"
    assert event["needs_restart"] == ["database.url", "selfservice.listen"]
    assert event["changed"] == ["limits.max_recipients"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # Still the old database (the user is not in the new one), and the limit is live.
    assert rcpts_accepted(gw) == 1
    assert not (gw.dir / "elsewhere.db").exists()
