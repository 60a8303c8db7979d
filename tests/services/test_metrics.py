"""Metrics as a sink of the gateway's events: each event moves its counter, no label names
anybody, readings at scrape time, the event loop's lag.

Events are emitted by the real `Recorder` and `SessionTrail` (or shaped exactly as the
limiter and the screen emit them); the registry is read back with Prometheus' parser.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from submitgw.errors import AuthFailed, LoginLocked
from submitgw.services.audit import Recorder, SessionTrail
from submitgw.services.metrics import Metrics, RecentMax, rejection
from submitgw.services.pool import PoolShares
from submitgw.types import CertificateFlaw, CertificateVerdict, Identity
from tests.support.metrics import Samples

USER = "alice@example.org"
CLIENT = "198.51.100.7"
ALICE = Identity(USER, "PLAIN")


def samples(metrics: Metrics) -> Samples:
    return Samples(generate_latest(metrics.registry).decode())


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def trail(metrics: Metrics) -> SessionTrail:
    return SessionTrail(Recorder([metrics]), "0123abcd", "submissions", CLIENT)


def message(trail: SessionTrail, reply: str, seconds: float | None, recipients: int = 2) -> None:
    trail.message(
        ALICE,
        queue_id="01M8YBHZ0MJFQYDYG2",
        message_id="a@b",
        sender=USER,
        recipients=[f"r{n}@example.net" for n in range(recipients)],
        size=100,
        smarthost="10.0.0.2:25" if seconds is not None else None,
        reply=reply,
        smarthost_seconds=seconds,
    )


def test_each_event_moves_its_counter(metrics: Metrics, trail: SessionTrail) -> None:
    recorder = trail.recorder
    trail.login("PLAIN", ALICE)
    trail.login_refused("LOGIN", USER, AuthFailed())
    trail.login_refused("PLAIN", USER, LoginLocked(0.0))
    message(trail, "250 2.0.0 Ok: queued as 4F1", 0.2)
    message(trail, "550 5.7.1 Sender not allowed", 0.1)
    message(trail, "552 5.3.4 Message too big", None)
    message(trail, "550 5.7.1 From: header not allowed", None)
    message(trail, "554 5.6.0 NUL characters", None)
    trail.sender_refused(ALICE, "envelope", ["bob@example.net"], "553 5.7.1 …")
    trail.sender_refused(ALICE, "header", ["bob@example.net"], "550 5.7.1 …")
    trail.smarthost("10.0.0.2:25", "connect", "timeout", "TimeoutError")
    trail.tls_failed("wrong version number")
    trail.certificate(CertificateVerdict("ab" * 32, "01", USER, flaw=CertificateFlaw.REVOKED))
    trail.certificate(CertificateVerdict("cd" * 32, "02", USER))
    trail.ended(tls="TLSv1.3", user=USER, cert_serial=None, messages=1, seconds=1.0, end="quit")
    recorder.connection_refused(listener="submission", client=CLIENT, reason="shutting-down")
    # As the limiter and the screen emit them.
    recorder.emit({"event": "limit", "session": "s", "client": CLIENT, "limit": "user messages"})
    recorder.emit({"event": "limit", "client": CLIENT, "user": USER, "limit": "ip logins"})
    recorder.emit({"event": "lockout", "lock": "account", "user": USER, "client": CLIENT})
    recorder.emit({"event": "access", "session": "s", "client": CLIENT, "decision": "deny"})
    recorder.emit({"event": "site-connection", "session": None, "end": "too-many-connections"})
    recorder.emit({"event": "site-connection", "session": "s", "end": "idle-timeout"})

    m = samples(metrics)

    assert m("submitgw_auth_attempts_total", mechanism="PLAIN", result="ok") == 1
    assert m("submitgw_auth_attempts_total", mechanism="LOGIN", result="failed") == 1
    assert m("submitgw_auth_attempts_total", mechanism="PLAIN", result="locked") == 1
    assert m("submitgw_messages_accepted_total") == 1
    assert m("submitgw_recipients_accepted_total") == 2
    assert m("submitgw_smarthost_data_seconds_count") == 2
    assert m("submitgw_smarthost_data_seconds_sum") == pytest.approx(0.3)
    assert {
        reason: m("submitgw_messages_rejected_total", reason=reason)
        for reason in ("smarthost-5xx", "size", "header-from", "content", "sender-binding")
    } == dict.fromkeys(("smarthost-5xx", "size", "header-from", "content", "sender-binding"), 1)
    assert m("submitgw_messages_rejected_total", reason="limit") == 1
    assert m("submitgw_smarthost_errors_total", step="connect", error="timeout") == 1
    assert m("submitgw_tls_handshakes_total", listener="submissions", result="failed") == 1
    assert m("submitgw_tls_handshakes_total", listener="submissions", result="ok") == 1
    assert m("submitgw_tls_handshakes_total", listener="selfservice", result="ok") == 1
    assert m("submitgw_client_certificates_total", result="rejected", reason="revoked") == 1
    assert m("submitgw_client_certificates_total", result="accepted", reason="none") == 1
    assert m("submitgw_sessions_ended_total", listener="submissions", end="quit") == 1
    assert (
        m("submitgw_connections_refused_total", listener="submission", reason="shutting-down") == 1
    )
    assert (
        m(
            "submitgw_connections_refused_total",
            listener="selfservice",
            reason="too-many-connections",
        )
        == 1
    )
    assert m("submitgw_limit_hits_total", scope="user", measure="messages") == 1
    assert m("submitgw_limit_hits_total", scope="ip", measure="logins") == 1
    assert m("submitgw_lockouts_total", lock="account") == 1
    assert m("submitgw_access_decisions_total", decision="deny") == 1


def test_recipients_may_come_as_a_list(metrics: Metrics) -> None:
    Recorder([metrics]).emit(
        {"event": "message", "reply": "250 ok", "recipients": ["a@x.example", "b@x.example"]}
    )

    assert samples(metrics)("submitgw_recipients_accepted_total") == 2


HOSTILE = [
    {"event": "connection", "listener": USER, "reason": CLIENT},
    {"event": "tls", "listener": "bob@example.net", "result": "failed"},
    {"event": "session", "listener": CLIENT, "end": USER, "tls": "x"},
    {"event": "auth", "mechanism": USER, "result": CLIENT},
    {"event": "message", "reply": f"451 {USER}", "smarthost_seconds": 0.1},
    {"event": "limit", "session": "s", "limit": f"user {USER}"},
    {"event": "lockout", "lock": CLIENT},
    {"event": "certificate", "result": USER, "reason": CLIENT},
    {"event": "access", "decision": USER},
    {"event": "smarthost", "step": USER, "error": CLIENT},
    {"event": "site-connection", "session": None, "end": CLIENT},
]


@pytest.mark.parametrize("event", HOSTILE, ids=[e["event"] for e in HOSTILE])
def test_no_value_from_an_event_becomes_a_label_unless_it_is_known(
    metrics: Metrics, event: dict[str, Any]
) -> None:
    before = samples(metrics)
    Recorder([metrics]).emit(event)
    after = samples(metrics)

    moved = {key for key, value in after.values.items() if value != before.values.get(key, 0)}
    moved_labels = {value for _, labels in moved for _, value in labels}
    assert moved, "the event counted nowhere"
    chosen = {v for v in event.values() if isinstance(v, str)} - {event["event"], "failed", "s"}
    assert not chosen & after.label_values()
    assert "other" in moved_labels or event["event"] == "message", moved_labels


def test_unknown_events_are_ignored(metrics: Metrics) -> None:
    before = samples(metrics).values
    Recorder([metrics]).emit({"event": "fd-limit", "nofile": 1024})
    Recorder([metrics]).emit({"no": "event"})

    assert samples(metrics).values.keys() == before.keys()


@pytest.mark.parametrize(
    ("reply", "relayed", "reason"),
    [
        ("451 4.4.2 Smarthost did not confirm", True, "smarthost-4xx"),
        ("452 4.3.1 Insufficient storage", True, "smarthost-4xx"),
        ("554 5.7.1 Spam", True, "smarthost-5xx"),
        ("552 5.3.4 Message too big", False, "size"),
        ("550 5.7.1 From: not allowed", False, "header-from"),
        ("554 5.6.0 Header too complex", False, "content"),
        ("500 5.5.2 Line too long", False, "content"),
        ("", False, "content"),
    ],
)
def test_rejection_reasons(reply: str, relayed: bool, reason: str) -> None:
    assert rejection(reply, relayed=relayed) == reason


def test_gateways_in_one_process_count_apart() -> None:
    one, two = Metrics(), Metrics()
    one.messages_accepted.inc()

    assert samples(one)("submitgw_messages_accepted_total") == 1
    assert samples(two)("submitgw_messages_accepted_total") == 0


def test_connections_and_pool_are_read_at_scrape_time(metrics: Metrics) -> None:
    live = {"submission": 3}
    admitted = {"submission": 7, "submissions": 2}
    shares = PoolShares(capacity=6, per_client=4, per_account=4)
    metrics.watch_connections(lambda: live, lambda: admitted)
    metrics.watch_pool(shares, workers=2)
    held = [shares.claim(f"198.51.100.{n}") for n in range(5)]

    m = samples(metrics)
    assert m("submitgw_connections_open", listener="submission") == 3
    assert m("submitgw_connections_open", listener="submissions") == 0
    assert m("submitgw_connections_accepted_total", listener="submission") == 7
    assert (m("submitgw_auth_pool_in_use"), m("submitgw_auth_pool_waiting")) == (5, 3)
    assert m("submitgw_auth_pool_capacity") == 6

    live["submission"] = 0
    for share in held:
        assert share is not None
        share.release()
    m = samples(metrics)
    assert m("submitgw_connections_open", listener="submission") == 0
    assert (m("submitgw_auth_pool_in_use"), m("submitgw_auth_pool_waiting")) == (0, 0)


def test_recent_max_forgets_after_two_windows() -> None:
    recent = RecentMax(10.0)
    recent.add(100.0, 0.5)
    recent.add(101.0, 0.1)
    assert recent.value(105.0) == 0.5
    recent.add(111.0, 0.2)  # a new window: the old maximum is still recent
    assert recent.value(112.0) == 0.5
    recent.add(122.0, 0.05)
    assert recent.value(123.0) == 0.2
    assert recent.value(150.0) == 0.0


def test_a_blocked_event_loop_shows_as_lag(metrics: Metrics) -> None:
    async def main() -> None:
        watching = asyncio.create_task(metrics.watch_loop(interval=0.05))
        await asyncio.sleep(0.12)
        time.sleep(0.3)  # what a blocking call on the loop would do
        await asyncio.sleep(0.12)
        watching.cancel()

    asyncio.run(main())
    m = samples(metrics)

    assert m("submitgw_event_loop_lag_max_seconds") >= 0.2
    assert m("submitgw_event_loop_lag_seconds_bucket", le="0.1") < m(
        "submitgw_event_loop_lag_seconds_count"
    )


SUFFIXES = ("", "_total", "_info")


def test_every_metric_is_in_the_readme(metrics: Metrics) -> None:
    metrics.watch_connections(dict, dict)
    metrics.watch_pool(PoolShares(1, 1, 1), workers=1)
    asyncio.run(_one_lag_reading(metrics))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    names = {
        family.name for family in metrics.registry.collect() if family.name.startswith("submitgw_")
    }

    assert len(names) > 20
    missing = sorted(n for n in names if not any(f"`{n}{x}`" in readme for x in SUFFIXES))
    assert not missing


async def _one_lag_reading(metrics: Metrics) -> None:
    watching = asyncio.create_task(metrics.watch_loop(interval=0.01))
    await asyncio.sleep(0.03)
    watching.cancel()
