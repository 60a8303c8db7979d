"""The admin port of a whole gateway: metrics after real traffic, /healthz and /readyz.

Real gateway, real TLS clients, a capture smarthost of the test's own (it is stopped),
and the counters read back through Prometheus' own parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import smtplib
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from submitgw import config as config_mod
from submitgw.app.gateway import App
from submitgw.config import Endpoint
from submitgw.services import metrics
from submitgw.store import Database
from tests.support.client import Dialog
from tests.support.gateway import PASSWORD, USER, InProcessGateway
from tests.support.metrics import get, scrape, scrape_until
from tests.support.smarthost import CaptureSmarthost

METRICS = {"metrics": {"listen": "127.0.0.1:0", "readiness_cache_seconds": 0.0}}
MSG = b"From: alice@example.org\r\nSubject: metrics\r\n\r\nhello\r\n"
# Each source address is another client (loopback answers on all of 127/8).
CROWD = "127.0.0.9"


def wait_closed(sock: socket.socket, timeout: float = 5) -> None:
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def test_counters_follow_real_traffic_and_name_nobody(
    gateway_factory: Any, smarthost_factory: Any
) -> None:
    sink: CaptureSmarthost = smarthost_factory(reject_rcpt=["nobody"])
    options = {**METRICS, "limits": {"max_connections_per_ip": 2}}
    gw: InProcessGateway = gateway_factory(options, smarthost_address=sink.address)
    assert gw.metrics_port > 0
    before = scrape(gw.metrics_port)
    assert before("submitgw_messages_accepted_total") == 0

    # A good login and a message to two recipients; a third is refused by the smarthost.
    client = gw.smtp()
    client.ehlo("client.test")
    client.mail(USER)
    assert client.rcpt("bob@example.net")[0] == 250
    assert client.rcpt("nobody@example.net")[0] == 550
    assert client.rcpt("carol@example.net")[0] == 250
    assert client.data(MSG)[0] == 250
    client.quit()
    # A wrong password.
    bad = Dialog(gw.port)
    bad.cmd("EHLO client.test")
    bad.starttls(gw.ssl_context())
    bad.cmd("EHLO client.test")
    assert bad.login(USER, "not " + PASSWORD).code == 535
    bad.cmd("QUIT")
    bad.close()
    # A sender the user may not use.
    other = gw.smtp()
    with pytest.raises(smtplib.SMTPSenderRefused):
        other.sendmail("mallory@evil.example", ["bob@example.net"], MSG)
    other.quit()
    # One connection over the per-address cap.
    crowd = [Dialog(gw.port, source=CROWD) for _ in range(2)]
    refused = Dialog(gw.port, source=CROWD)
    assert refused.greeting.code == 421
    for d in [*crowd, refused]:
        d.close()
    # A failed TLS handshake on the implicit-TLS port.
    with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=5) as junk:
        junk.sendall(b"EHLO not-tls\r\n")
        wait_closed(junk)

    m = scrape_until(
        gw.metrics_port,
        lambda s: (
            s("submitgw_sessions_ended_total", listener="submission", end="disconnect") >= 2
            and s("submitgw_tls_handshakes_total", listener="submissions", result="failed") >= 1
        ),
    )

    assert m("submitgw_messages_accepted_total") == 1
    assert m("submitgw_recipients_accepted_total") == 2
    assert m("submitgw_auth_attempts_total", mechanism="PLAIN", result="ok") == 2
    assert m("submitgw_auth_attempts_total", mechanism="PLAIN", result="failed") == 1
    assert m("submitgw_messages_rejected_total", reason="sender-binding") == 1
    assert m("submitgw_smarthost_errors_total", step="rcpt", error="5xx") == 1
    assert m("submitgw_smarthost_data_seconds_count") == 1
    assert 0 < m("submitgw_smarthost_data_seconds_sum") < 5
    assert (
        m(
            "submitgw_connections_refused_total",
            listener="submission",
            reason="too-many-connections-from-client",
        )
        == 1
    )
    assert m("submitgw_connections_accepted_total", listener="submission") == 5
    assert m("submitgw_connections_accepted_total", listener="submissions") == 1
    assert m("submitgw_tls_handshakes_total", listener="submission", result="ok") == 3
    assert m("submitgw_tls_handshakes_total", listener="submissions", result="failed") == 1
    assert m("submitgw_sessions_ended_total", listener="submission", end="quit") == 3
    assert m("submitgw_sessions_ended_total", listener="submissions", end="tls-failed") == 1
    assert m("submitgw_access_decisions_total", decision="allow") == 5
    assert m("submitgw_connections_open", listener="submission") == 0
    assert m("submitgw_auth_pool_capacity") == 2 + 16
    assert m("submitgw_build_info", version=metrics.version()) == 1
    assert m("process_open_fds") > 0
    # No user, address or client IP ever becomes a label value.
    labels = m.label_values()
    assert not [v for v in labels if "@" in v or v.startswith("127.")], labels
    assert not {USER, "alice", CROWD, "127.0.0.1", "evil.example"} & labels


def test_health_and_readiness_follow_the_smarthost(
    gateway_factory: Any, smarthost_factory: Any
) -> None:
    sink: CaptureSmarthost = smarthost_factory()
    gw: InProcessGateway = gateway_factory(METRICS, smarthost_address=sink.address)

    health = get(gw.metrics_port, "/healthz")
    ready = get(gw.metrics_port, "/readyz")
    assert (health.status, health.body) == (200, "ok\n")
    assert ready.status == 200, ready.body
    assert ready.body.startswith("ready\ndatabase: ok (")
    assert f"smarthost: ok ({sink.address})" in ready.body

    sink.stop()
    down = get(gw.metrics_port, "/readyz")

    assert down.status == 503
    assert down.body.startswith("not ready\n")
    assert f"smarthost: none greets: {sink.address} ConnectionRefusedError" in down.body
    assert get(gw.metrics_port, "/healthz").status == 200
    (change,) = [e for e in gw.log_events("readiness") if not e["ready"]]
    assert change["smarthost"].startswith("none greets")


def test_stopping_gateway_is_not_ready_at_once_and_answers_to_the_end(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw: InProcessGateway = gateway_factory(METRICS)
    assert get(gw.metrics_port, "/readyz").status == 200
    # A transaction in progress holds the shutdown (shutdown_grace) until it is over.
    busy = gw.smtp()
    busy.mail(USER)
    stopping = threading.Thread(target=gw.stop)
    stopping.start()
    try:
        deadline = time.monotonic() + 5
        answer = get(gw.metrics_port, "/readyz")
        while answer.status == 200 and time.monotonic() < deadline:
            time.sleep(0.02)
            answer = get(gw.metrics_port, "/readyz")
        assert (answer.status, answer.body) == (503, "not ready: stopping\n")
        assert stopping.is_alive(), "the session still holds the shutdown"
        assert get(gw.metrics_port, "/healthz").status == 200
    finally:
        with contextlib.suppress(smtplib.SMTPException):
            busy.rset()  # the transaction is over: the session gets its 421
        busy.close()
        stopping.join(10)
    assert not stopping.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gw.metrics_port), timeout=2).close()


def test_unreachable_database_is_not_ready(gateway_template: Path, tmp_path: Path) -> None:
    """A gateway whose PostgreSQL server does not answer (nothing listens on its port)."""
    setup = tmp_path / "setup"
    shutil.copytree(gateway_template, setup)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    cfg = config_mod.load(setup / "submitgw.toml")
    here = Endpoint("127.0.0.1", 0)
    cfg = cfg.replace(
        submission=dataclasses.replace(cfg.submission, listen=here),
        submissions=dataclasses.replace(cfg.submissions, listen=None),
        database=dataclasses.replace(
            cfg.database, url=f"postgresql+psycopg://gw@127.0.0.1:{port}/submitgw"
        ),
        metrics=dataclasses.replace(cfg.metrics, listen=here),
    )

    async def main() -> tuple[int, str]:
        db = Database(cfg.database.url)
        app = App(cfg, db)
        try:
            await app.start()
            loop = asyncio.get_running_loop()
            answer = await loop.run_in_executor(None, get, app.bound["metrics"].port, "/readyz")
        finally:
            await app.stop(0)
            db.dispose()
        return answer.status, answer.body

    status, body = asyncio.run(main())

    assert status == 503
    assert "database: failed (OperationalError)" in body
    # Not the URL, not the driver's message: those go to the log only.
    assert "postgresql" not in body and str(port) not in body


def test_metrics_are_off_by_default(gateway: InProcessGateway) -> None:
    assert gateway.app is not None
    assert gateway.app.metrics is None and gateway.app.readiness is None
    assert gateway.metrics_port == 0
    assert {e["listener"] for e in gateway.log_events("listening")} == {
        "submission",
        "submissions",
    }
