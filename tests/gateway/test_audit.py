"""The audit trail end to end: real traffic through a real gateway, then `audit search`.

Rules proven here: every kind of event a connection produces (session, login
attempt, certificate verdict, access decision, TLS failure, refused sender,
refused connection, limit, lockout, message) lands in the database; the
client's 250, the Received header, the `message` log line and the record carry
the same queue id, and the smarthost's queue id is kept; `audit search` answers
"who sent this?" from a Message-ID and from a recipient, and "what did this
account or client do?"; no password, nor the AUTH payload that carries it, is in
any column of any row; a gateway stopped with SIGTERM right after its last 250
has written every accepted message first. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from submitgw import config as config_mod
from submitgw.store import Database
from tests.support.client import Dialog, Reply
from tests.support.gateway import PASSWORD, USER, run_cli
from tests.support.smarthost import CaptureSmarthost

WRONG = "not the password, but close"
GHOST = "ghost@example.org"
QUIET_AUTH = {"auth_delay": 0.01, "auth_max_delay": 0.02}
LIMITS = {
    **QUIET_AUTH,
    "auth_failures_per_account": 2,
    "messages_per_user": 2,
    "max_connections_per_ip": 1,
}
AUDIT_TABLES = ("audit_events", "audit_messages", "audit_recipients", "account_events")


@pytest.fixture
def db_options(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if backend == "sqlite":
        return {}
    return {"database": {"url": request.getfixturevalue("pg_migrated_url")}}


def search(config: Any, *filters: str) -> list[dict[str, Any]]:
    result = run_cli(config, "audit", "search", *filters, "--json", "--limit", "1000")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def starttls(port: int, source: str, gw: Any, context: Any = None) -> Dialog:
    d = Dialog(port, source=source)
    assert d.greeting.code == 220, d.greeting
    d.cmd("EHLO client.test")
    assert d.starttls(context or gw.ssl_context()).code == 220
    assert d.cmd("EHLO client.test").code == 250
    return d


def send(d: Dialog, recipients: list[str], headers: str = "") -> Reply:
    assert d.cmd(f"MAIL FROM:<{USER}>").code == 250
    for rcpt in recipients:
        assert d.cmd(f"RCPT TO:<{rcpt}>").code == 250
    assert d.cmd("DATA").code == 354
    d.send(f"From: {USER}\r\n{headers}Subject: audit\r\n\r\nHello.\r\n.\r\n")
    return d.read()


def hang_up(d: Dialog) -> None:
    """QUIT and hang up, as a client does; a client that stays would hold up the stop
    for the TLS close grace."""
    d.cmd("QUIT")
    d.close()


def queue_id(reply: Reply) -> str:
    assert reply.code == 250, reply
    prefix = "250 2.0.0 Ok: queued as "
    assert reply.lines[-1].startswith(prefix)
    return reply.lines[-1].removeprefix(prefix).split(" ", 1)[0]


def every_value(url: str) -> list[str]:
    """Every column of every row of the trail's tables, as text."""
    db = Database(url)
    try:
        meta = MetaData()
        meta.reflect(db.engine, only=AUDIT_TABLES)
        values = []
        with db.engine.connect() as connection:
            for name in AUDIT_TABLES:
                for row in connection.execute(select(meta.tables[name])):
                    for value in row:
                        values.append(
                            value.decode("latin-1") if isinstance(value, bytes) else str(value)
                        )
        return values
    finally:
        db.dispose()


def test_real_traffic_leaves_a_searchable_trail_without_secrets(
    gateway_factory: Any, smarthost: CaptureSmarthost, db_options: dict[str, Any]
) -> None:
    gw = gateway_factory({**db_options, "limits": LIMITS})
    cert = gw.issue_cert()
    before = datetime.now(UTC)

    d = starttls(gw.port, "127.0.0.5", gw)
    assert d.login(USER, PASSWORD).code == 235
    first = queue_id(
        send(
            d, ["bob@example.net", "Carol@Example.NET"], "Message-ID: <complaint-1@example.org>\r\n"
        )
    )
    second = queue_id(send(d, ["dave@example.net"]))
    hang_up(d)
    d = starttls(gw.port, "127.0.0.6", gw)
    assert d.login(USER, PASSWORD).code == 235
    assert d.cmd("MAIL FROM:<someone-else@example.org>").code == 553
    assert d.cmd(f"MAIL FROM:<{USER}>").code == 450
    assert Dialog(gw.port, source="127.0.0.6").greeting.code == 421
    hang_up(d)
    d = starttls(gw.port, "127.0.0.7", gw)
    assert d.login(GHOST, WRONG).code == 535
    assert d.login(GHOST, WRONG).code == 535
    hang_up(d)
    d = starttls(gw.port, "127.0.0.8", gw, cert.context(gw.ca_file))
    assert d.cmd("AUTH EXTERNAL =").code == 235
    hang_up(d)
    assert run_cli(gw.config, "access", "deny", "127.0.0.9").returncode == 0
    assert Dialog(gw.port, source="127.0.0.9").greeting.code == 554
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as raw:
        raw.sendall(b"EHLO not-tls\r\n")
        raw.recv(100)
    time.sleep(0.3)
    gw.stop()

    relayed = {m.envelope["rcpt_tos"][0]: m for m in smarthost.messages()}
    one, two = relayed["bob@example.net"], relayed["dave@example.net"]
    (found,) = search(gw.config, "--message-id", "<complaint-1@example.org>")
    assert (found["kind"], found["user"], found["client"]) == ("message", USER, "127.0.0.5")
    assert found["queue_id"] == first and found["smarthost_queue_id"] == one.seq
    assert found["recipients"] == ["bob@example.net", "carol@example.net"]
    assert found["mechanism"] == "PLAIN" and found["reply"].startswith("250 ")
    assert f"with ESMTPSA id {first}" in " ".join(one.message["Received"].split())
    logged = {e["queue_id"]: e for e in gw.log_events("message")}
    assert logged[first]["message_id"] == "complaint-1@example.org"
    assert logged[first]["smarthost_queue_id"] == one.seq

    generated = two.message["Message-ID"].strip("<>")
    (added,) = search(gw.config, "--message-id", generated)
    assert added["queue_id"] == second and logged[second]["message_id"] == generated
    assert [r["queue_id"] for r in search(gw.config, "--recipient", "carol@example.net")] == [first]
    assert [r["queue_id"] for r in search(gw.config, "--queue-id", two.seq)] == [second]

    mine = search(gw.config, "--user", USER)
    assert [r["queue_id"] for r in mine if r["kind"] == "message"] == [second, first]
    assert {r["kind"] for r in mine} >= {"session", "auth", "limit", "message", "account"}
    (limit,) = [r for r in mine if r["kind"] == "limit"]
    assert (limit["client"], limit["result"]) == ("127.0.0.6", "user messages")
    (forged,) = [r for r in mine if r["kind"] == "sender"]
    assert forged["result"] == "envelope"
    assert forged["addresses"] == ["someone-else@example.org"]
    (refused,) = [r for r in search(gw.config, "--ip", "127.0.0.6") if r["kind"] == "connection"]
    assert refused["result"] == "too-many-connections-from-client"
    (cert_seen,) = [r for r in mine if r["kind"] == "certificate"]
    assert cert_seen["result"] == "accepted" and cert_seen["serial"] == cert.serial

    guessed = search(gw.config, "--ip", "127.0.0.7")
    assert [r["result"] for r in guessed if r["kind"] == "auth"] == ["failed", "failed"]
    assert {r["user"] for r in guessed if r["kind"] == "auth"} == {GHOST}
    (lockout,) = [r for r in guessed if r["kind"] == "lockout"]
    assert (lockout["user"], lockout["result"]) == (GHOST, "account")
    (denied,) = [r for r in search(gw.config, "--ip", "127.0.0.9") if r["kind"] == "access"]
    assert denied["result"] == "deny" and denied["rule"] == "127.0.0.9"
    (tls,) = [r for r in search(gw.config, "--since", "1h") if r["kind"] == "tls"]
    assert tls["client"] == "127.0.0.1" and tls["result"] not in (None, "", "failed")

    clients = {r["client"] for r in search(gw.config, "--ip", "127.0.0.4/30")}
    assert clients == {"127.0.0.5", "127.0.0.6", "127.0.0.7"}
    earlier = before.isoformat()
    assert {r["kind"] for r in search(gw.config, "--until", earlier)} == {"account"}
    time.sleep(1.1)  # `--until 1s` is a second ago: every record above is older by now
    assert len(search(gw.config, "--since", earlier, "--until", "1s")) > 10

    url = config_mod.load(gw.config).database.url
    values = every_value(url)
    assert len(values) > 100
    secrets = [PASSWORD, WRONG, base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()]
    secrets.append(base64.b64encode(f"\0{GHOST}\0{WRONG}".encode()).decode())
    for secret in secrets:
        assert not [v for v in values if secret in v], "a secret is in the trail"


def test_sigterm_right_after_the_last_250_loses_no_message(
    gateway_factory: Any, smarthost: CaptureSmarthost, db_options: dict[str, Any]
) -> None:
    # Nothing is written before the stop: only the shutdown flush can save them.
    audit = {"flush_interval": 600.0, "batch_size": 1000}
    gw = gateway_factory({**db_options, "audit": audit}, process=True)
    d = starttls(gw.port, "127.0.0.5", gw)
    assert d.login(USER, PASSWORD).code == 235
    accepted = [queue_id(send(d, [f"r{n}@example.net"])) for n in range(25)]
    # Gone without QUIT: a client that stays would hold the stop for its TLS close.
    d.close()

    started = time.monotonic()
    assert gw.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10

    found = search(gw.config, "--user", USER)
    assert sorted(r["queue_id"] for r in found if r["kind"] == "message") == sorted(accepted)
    assert "could not be written" not in gw.log_text()
