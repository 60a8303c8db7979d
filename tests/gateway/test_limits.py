"""Sending limits, connection caps and login lockouts, against real gateway processes.

Clients bind different 127.0.0.x source addresses to be different hosts. Limits
and windows are configured small so each test sees them trip within seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from submitgw import config as config_mod
from submitgw.rules.limits import account_key, success_key, user_key
from tests.support.client import Dialog, Reply
from tests.support.gateway import PASSWORD, USER, GatewayProcess, run_cli
from tests.support.smarthost import CaptureSmarthost

BOB = "bob@example.org"
GHOST = "ghost@example.org"  # never created
MSG = b"From: {sender}\r\nTo: someone@example.net\r\nSubject: limits\r\n\r\nHello.\r\n.\r\n"
# Fast and lock-free unless a test says otherwise.
QUIET_AUTH = {"auth_delay": 0.01, "auth_max_delay": 0.02}


def connect(gw: GatewayProcess, source: str) -> Dialog:
    d = Dialog(gw.port, source=source)
    assert d.greeting.code == 220, d.greeting
    assert d.cmd("EHLO client.test").code == 250
    assert d.starttls(gw.ssl_context()).code == 220
    assert d.cmd("EHLO client.test").code == 250
    return d


def session(gw: GatewayProcess, source: str, user: str = USER) -> Dialog:
    d = connect(gw, source)
    reply = d.login(user, PASSWORD)
    assert reply.code == 235, reply
    return d


def send(d: Dialog, recipients: list[str], sender: str = USER) -> list[Reply]:
    """One transaction: the replies to MAIL, each RCPT and (if any RCPT passed) the data."""
    replies = [d.cmd(f"MAIL FROM:<{sender}>")]
    if replies[0].code != 250:
        return replies
    replies += [d.cmd(f"RCPT TO:<{rcpt}>") for rcpt in recipients]
    if not any(r.code == 250 for r in replies[1:]):
        d.cmd("RSET")
        return replies
    assert d.cmd("DATA").code == 354
    d.send(MSG.replace(b"{sender}", sender.encode()))
    return [*replies, d.read()]


def sent(d: Dialog, recipients: int = 1, sender: str = USER) -> None:
    replies = send(d, [f"r{i}@example.net" for i in range(recipients)], sender)
    assert [r.code for r in replies] == [250] * (recipients + 2), replies


def said(reply: Reply) -> str:
    """The text of a one-line reply, after the code and the enhanced status."""
    return reply.lines[-1].split(" ", 2)[2]


def reset_at(reply: Reply) -> float:
    found = re.search(r"resets at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC \(in (\d+) s\)", reply.text)
    assert found, reply
    when = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return when.timestamp()


def locked_until(reply: Reply) -> float:
    found = re.search(r"try again after (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", reply.text)
    assert found, reply
    when = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return when.timestamp()


def auth(gw: GatewayProcess, source: str, user: str, password: str) -> Reply:
    d = connect(gw, source)
    try:
        return d.login(user, password)
    finally:
        d.close()


def timed_auth(gw: GatewayProcess, source: str, user: str, password: str) -> tuple[Reply, float]:
    d = connect(gw, source)
    try:
        started = time.monotonic()
        reply = d.login(user, password)
        return reply, time.monotonic() - started
    finally:
        d.close()


def cli_ok(config: Path, *args: str) -> str:
    result = run_cli(config, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def restart(gw: GatewayProcess) -> None:
    """Stop and start the same gateway (same setup, database and ports)."""
    assert gw.stop() == 0
    # `start` waits for "listening" lines in the log: keep the old run's lines apart.
    gw.log_path.rename(gw.log_path.with_suffix(".log.previous"))
    gw.start()


def pg_pair(gateway_factory: Any, pg_url: str, limits: dict[str, Any]) -> tuple[Any, Any]:
    """Two gateway processes on one fresh PostgreSQL database."""
    options = {"database": {"url": pg_url}, "limits": limits}
    gw1 = gateway_factory(options, users=False, start=False, name="gw1")
    cli_ok(gw1.config, "db", "upgrade")
    gw1.add_user()
    gw1.add_user(BOB)
    gw1.start()
    gw2 = gateway_factory(options, users=False, name="gw2")
    return gw1, gw2


# --- sending limits -------------------------------------------------------------------------


def test_user_message_limit_gives_450_with_the_reset_time(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory({"limits": {"messages_per_user": 2}})
    d = session(gw, "127.0.0.10")
    first = time.time()
    sent(d)
    sent(d)

    refused = d.cmd(f"MAIL FROM:<{USER}>")

    assert (refused.code, refused.status) == (450, "4.7.1")
    assert said(refused).startswith(f"Message limit reached for {USER}: 2 messages per hour;")
    # The first message leaves the window an hour (plus at most one minute bucket) later.
    assert first + 3600 - 61 <= reset_at(refused) <= first + 3600 + 61
    # A user limit follows the user to another address.
    other = session(gw, "127.0.0.11")
    assert other.cmd(f"MAIL FROM:<{USER}>").code == 450
    assert len(smarthost.wait_for_messages(2)) == 2
    time.sleep(0.3)
    assert len(smarthost.messages()) == 2
    events = [(e["limit"], e["user"]) for e in gw.log_events("limit")]
    assert events == [("user messages", USER)] * 2


def test_user_recipient_limit_refuses_the_recipient_over_it(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory({"limits": {"recipients_per_user": 3}})
    d = session(gw, "127.0.0.12")
    sent(d, recipients=2)

    replies = send(d, ["a@example.net", "b@example.net"])

    assert [r.code for r in replies] == [250, 250, 450, 250]
    assert replies[2].status == "4.7.1"
    assert said(replies[2]).startswith(
        f"Recipient limit reached for {USER}: 3 recipients per hour;"
    )
    reset_at(replies[2])
    # With the limit used up, the next message is refused at MAIL already.
    again = d.cmd(f"MAIL FROM:<{USER}>")
    assert again.code == 450 and said(again).startswith("Recipient limit reached")
    messages = smarthost.wait_for_messages(2)
    assert sorted(len(m.rcpt_tos) for m in messages) == [1, 2]


def test_only_what_the_smarthost_accepted_is_counted(
    gateway_factory: Any, smarthost_factory: Any
) -> None:
    refusing = smarthost_factory(reject_data=True)
    gw = gateway_factory(
        {"limits": {"messages_per_user": 1}}, smarthost_address=refusing.address, name="refused"
    )
    d = session(gw, "127.0.0.13")
    for _ in range(2):
        assert [r.code for r in send(d, ["a@example.net"])] == [250, 250, 554]
    assert json.loads(cli_ok(gw.config, "user", "limits", USER, "--json"))["messages"] == 0

    picky = smarthost_factory(reject_rcpt=["nobody"])
    gw = gateway_factory(smarthost_address=picky.address, name="picky")
    replies = send(session(gw, "127.0.0.13"), ["a@example.net", "nobody@example.net"])
    assert [r.code for r in replies] == [250, 250, 550, 250]
    shown = json.loads(cli_ok(gw.config, "user", "limits", USER, "--json"))
    assert (shown["messages"], shown["recipients"]) == (1, 1)


def test_client_limits_hold_for_every_user_of_the_address(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"messages_per_ip": 2, "recipients_per_ip": 3}})
    gw.add_user(BOB)
    alice, bob = session(gw, "127.0.0.20"), session(gw, "127.0.0.20", BOB)
    sent(alice)
    sent(bob, sender=BOB)

    refused = alice.cmd(f"MAIL FROM:<{USER}>")

    assert (refused.code, refused.status) == (450, "4.7.1")
    assert said(refused).startswith("Message limit reached for client 127.0.0.20: 2 messages")
    reset_at(refused)
    # Another address has its own count, and the users are far from theirs.
    sent(session(gw, "127.0.0.21"), recipients=2)
    replies = send(session(gw, "127.0.0.21", BOB), ["a@example.net", "b@example.net"], BOB)
    assert [r.code for r in replies] == [250, 250, 450, 250]
    assert "Recipient limit reached for client 127.0.0.21: 3 recipients" in replies[2].text


def test_per_user_override_beats_the_default_both_ways(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"messages_per_user": 2}})
    gw.add_user(BOB)
    assert "messages: 3 per hour" in cli_ok(
        gw.config, "user", "set-limit", USER, "--messages-per-hour", "3"
    )
    cli_ok(gw.config, "user", "set-limit", BOB, "--messages-per-hour", "1")
    alice, bob = session(gw, "127.0.0.22"), session(gw, "127.0.0.23", BOB)

    for _ in range(3):
        sent(alice)
    sent(bob, sender=BOB)
    assert "3 messages per hour" in alice.cmd(f"MAIL FROM:<{USER}>").text
    assert "1 messages per hour" in bob.cmd(f"MAIL FROM:<{BOB}>").text

    # Back to the default (2): bob may send one more, at once, without a restart.
    cli_ok(gw.config, "user", "set-limit", BOB, "--messages-per-hour", "default")
    sent(bob, sender=BOB)
    shown = json.loads(cli_ok(gw.config, "user", "limits", USER, "--json"))
    assert shown["messages"] == 3 and shown["messages_limit"] == 3
    assert not shown["messages_limit_is_default"] and shown["recipients_limit_is_default"]


def test_a_limit_frees_up_at_the_time_the_reply_gave(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"messages_per_user": 1, "rate_window": 2}})
    d = session(gw, "127.0.0.24")
    sent(d)
    refused = d.cmd(f"MAIL FROM:<{USER}>")
    assert refused.code == 450 and "1 messages per 2 seconds" in refused.text

    resets = reset_at(refused)
    assert resets - time.time() <= 4
    time.sleep(max(0.0, resets - time.time()) + 0.2)

    sent(d)


def test_counters_survive_a_restart(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"messages_per_user": 2}})
    d = session(gw, "127.0.0.25")
    sent(d)
    sent(d)
    d.close()

    restart(gw)

    assert session(gw, "127.0.0.25").cmd(f"MAIL FROM:<{USER}>").code == 450


@pytest.mark.postgres
def test_limits_are_shared_by_gateways_on_one_postgresql_database(
    gateway_factory: Any, pg_url: str
) -> None:
    gw1, gw2 = pg_pair(gateway_factory, pg_url, {"messages_per_user": 3, "recipients_per_ip": 3})
    sent(session(gw1, "127.0.0.26"))
    sent(session(gw2, "127.0.0.27"))
    sent(session(gw1, "127.0.0.27"))

    for gw in (gw1, gw2):
        refused = session(gw, "127.0.0.28").cmd(f"MAIL FROM:<{USER}>")
        assert refused.code == 450 and "3 messages per hour" in refused.text
    # The client limit too: 2 recipients of 127.0.0.27 are counted on each gateway.
    replies = send(session(gw2, "127.0.0.27", BOB), ["a@example.net", "b@example.net"], BOB)
    assert [r.code for r in replies] == [250, 250, 450, 250]
    # And both survive a restart of both gateways.
    assert gw1.stop() == 0
    restart(gw2)
    assert session(gw2, "127.0.0.28").cmd(f"MAIL FROM:<{USER}>").code == 450


# --- connections ----------------------------------------------------------------------------


def test_connections_per_client_address_are_capped(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"max_connections_per_ip": 2}})
    first, second = Dialog(gw.port, source="127.0.0.30"), Dialog(gw.port, source="127.0.0.30")
    assert first.greeting.code == second.greeting.code == 220

    third = Dialog(gw.port, source="127.0.0.30")

    assert (third.greeting.code, third.greeting.status) == (421, "4.7.0")
    assert third.closed()
    assert Dialog(gw.port, source="127.0.0.31").greeting.code == 220
    first.cmd("QUIT")
    first.close()
    deadline = time.monotonic() + 5
    while True:
        again = Dialog(gw.port, source="127.0.0.30")
        if again.greeting.code == 220 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert again.greeting.code == 220


# --- password guessing ----------------------------------------------------------------------


def test_guesses_from_several_addresses_lock_the_account_until_unlocked(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory({"limits": {"auth_failures_per_account": 3, **QUIET_AUTH}})
    gw.add_user(BOB)
    for source in ("127.0.0.40", "127.0.0.41", "127.0.0.42"):
        assert auth(gw, source, USER, "wrong").code == 535

    locked = auth(gw, "127.0.0.43", USER, PASSWORD)

    assert (locked.code, locked.status) == (454, "4.7.0")
    assert 800 < locked_until(locked) - time.time() <= 900
    # The address is not locked: another account logs in from it.
    assert auth(gw, "127.0.0.43", BOB, PASSWORD).code == 235
    assert '"result": "locked"' in gw.log_text()
    (lockout,) = gw.log_events("lockout")
    assert (lockout["lock"], lockout["user"], lockout["failures"]) == ("account", USER, 3)

    assert "unlocked" in cli_ok(gw.config, "user", "unlock", USER)
    assert auth(gw, "127.0.0.43", USER, PASSWORD).code == 235


def test_a_locked_account_costs_no_password_check(gateway_factory: Any) -> None:
    """Production argon2 settings: a checked password costs far more CPU than a lockout."""
    production = {"argon2_time_cost": 3, "argon2_memory_kib": 65536, "argon2_parallelism": 4}
    gw = gateway_factory(
        {"auth": production, "limits": {"auth_failures_per_account": 2, **QUIET_AUTH}},
        process=True,
    )
    assert gw.proc is not None
    stat = Path(f"/proc/{gw.proc.pid}/stat")

    def cpu() -> int:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    checked = []
    for _ in range(2):
        d = connect(gw, "127.0.0.44")
        before = cpu()
        assert d.login(GHOST, "guess").code == 535
        checked.append(cpu() - before)
    d = connect(gw, "127.0.0.45")
    before = cpu()
    for _ in range(4):
        assert d.login(GHOST, "guess").code == 454
    refused = cpu() - before

    assert min(checked) >= 3, "argon2 with production settings should cost several ticks"
    assert refused * 2 < min(checked)


def test_an_unknown_account_locks_exactly_like_a_known_one(gateway_factory: Any) -> None:
    gw = gateway_factory({"limits": {"auth_failures_per_account": 2, **QUIET_AUTH}})
    replies: dict[str, list[Reply]] = {}
    for name, source in ((USER, "127.0.0.46"), (GHOST, "127.0.0.47")):
        replies[name] = [auth(gw, source, name, "wrong") for _ in range(3)]
        replies[name].append(auth(gw, source, name, PASSWORD))

    def shape(reply: Reply) -> str:
        return re.sub(r"\d", "0", reply.lines[-1])

    assert [shape(r) for r in replies[USER]] == [shape(r) for r in replies[GHOST]]
    assert [r.code for r in replies[GHOST]] == [535, 535, 454, 454]
    assert {e["user"] for e in gw.log_events("lockout")} == {USER, GHOST}
    assert "unlocked" in cli_ok(gw.config, "user", "unlock", GHOST)
    assert auth(gw, "127.0.0.47", GHOST, "wrong").code == 535


def test_a_password_spray_from_one_address_trips_the_address_limit(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory(
        {"limits": {"auth_failures_per_account": 5, "auth_failures_per_ip": 4, **QUIET_AUTH}}
    )
    for n in range(4):
        assert auth(gw, "127.0.0.50", f"user{n}@example.org", "Summer2026!").code == 535

    # Each name failed once, far from its own limit, but the address is locked.
    assert auth(gw, "127.0.0.50", "user9@example.org", "Summer2026!").code == 454
    assert auth(gw, "127.0.0.50", USER, PASSWORD).code == 454
    assert auth(gw, "127.0.0.51", USER, PASSWORD).code == 235
    (lockout,) = gw.log_events("lockout")
    assert (lockout["lock"], lockout["client"], lockout["failures"]) == ("ip", "127.0.0.50", 4)


def test_delay_escalates_with_each_failure(gateway_factory: Any) -> None:
    gw = gateway_factory(
        {
            "limits": {
                "auth_failures_per_account": 10,
                "auth_delay": 0.2,
                "auth_max_delay": 10.0,
            }
        }
    )
    latencies = []
    for _ in range(4):
        reply, seconds = timed_auth(gw, "127.0.0.52", USER, "wrong")
        assert reply.code == 535
        latencies.append(seconds)
    # Then the right password: it waits as long as a wrong one would.
    reply, right = timed_auth(gw, "127.0.0.52", USER, PASSWORD)
    assert reply.code == 235

    # Doubling from 0.2 s: each wait is about twice the one before.
    first, *delayed = latencies
    assert delayed[0] > first + 0.1, latencies
    for earlier, later in itertools.pairwise([*delayed, right]):
        assert later / earlier > 1.4, (latencies, right)


def test_a_lockout_expires_by_itself(gateway_factory: Any) -> None:
    gw = gateway_factory(
        {"limits": {"auth_failures_per_account": 2, "auth_lockout": 1.5, **QUIET_AUTH}}
    )
    for _ in range(2):
        assert auth(gw, "127.0.0.53", USER, "wrong").code == 535
    locked = auth(gw, "127.0.0.53", USER, PASSWORD)
    assert locked.code == 454

    time.sleep(max(0.0, locked_until(locked) + 1 - time.time()))

    assert auth(gw, "127.0.0.53", USER, PASSWORD).code == 235


@pytest.mark.postgres
def test_lockout_is_shared_by_gateways_on_one_postgresql_database(
    gateway_factory: Any, pg_url: str
) -> None:
    gw1, gw2 = pg_pair(gateway_factory, pg_url, {"auth_failures_per_account": 3, **QUIET_AUTH})
    assert auth(gw1, "127.0.0.60", USER, "wrong").code == 535
    assert auth(gw2, "127.0.0.61", USER, "wrong").code == 535
    assert auth(gw1, "127.0.0.62", USER, "wrong").code == 535

    for gw in (gw1, gw2):
        assert auth(gw, "127.0.0.63", USER, PASSWORD).code == 454
    # A restart does not lift it either.
    restart(gw2)
    assert auth(gw2, "127.0.0.63", USER, PASSWORD).code == 454

    cli_ok(gw1.config, "user", "unlock", USER)
    for gw in (gw1, gw2):
        assert auth(gw, "127.0.0.63", USER, PASSWORD).code == 235


# --- the commands ---------------------------------------------------------------------------


def test_set_limit_refuses_what_it_cannot_do(gateway_factory: Any) -> None:
    gw = gateway_factory(start=False)
    nothing = run_cli(gw.config, "user", "set-limit", USER)
    unknown = run_cli(gw.config, "user", "set-limit", GHOST, "--messages-per-hour", "5")
    negative = run_cli(gw.config, "user", "set-limit", USER, "--messages-per-hour", "-1")

    assert nothing.returncode != 0 and "--messages-per-hour" in nothing.stderr
    assert unknown.returncode != 0 and GHOST in unknown.stderr
    assert negative.returncode != 0 and "'default'" in negative.stderr
    shown = cli_ok(gw.config, "user", "limits", USER)
    assert "messages: 0 of 200 per hour (default)" in shown
    assert "login: not locked" in shown


def test_unlock_of_a_name_that_is_not_locked_says_so(gateway_factory: Any) -> None:
    gw = gateway_factory(start=False)

    assert "was not locked" in cli_ok(gw.config, "user", "unlock", GHOST)


def _sqlite_path(gw: GatewayProcess) -> str:
    url = config_mod.load(gw.config).database.url
    assert url.startswith("sqlite:///"), url
    return url.removeprefix("sqlite:///")


def _messages_counted(path: str, key: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        found = db.execute(
            "SELECT coalesce(sum(messages), 0) FROM rate_counters WHERE key = ?", (key,)
        ).fetchone()
    return int(found[0])


def _logins_counted(path: str, login: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        found = db.execute(
            "SELECT coalesce(sum(failures), 0) FROM auth_failures WHERE key = ?",
            (success_key(account_key(login)),),
        ).fetchone()
    return int(found[0])


def _wait_for_logins_counted(path: str, login: str, count: int) -> None:
    """A successful login is counted in the background: wait for its commit."""
    deadline = time.monotonic() + 5
    while _logins_counted(path, login) < count:
        assert time.monotonic() < deadline, "the login was never counted"
        time.sleep(0.02)


def test_the_235_does_not_wait_for_the_login_count_and_the_next_login_does(
    gateway_factory: Any,
) -> None:
    """A successful login is counted off the reply path; the next login's limit check waits
    for it, so the limit on successful logins holds exactly."""
    gw = gateway_factory({"limits": {"auth_successes_per_account": 2}})
    path = _sqlite_path(gw)
    # The first login also records the login time, a write of its own: before the lock.
    session(gw, "127.0.0.16")
    _wait_for_logins_counted(path, USER, 1)
    d = connect(gw, "127.0.0.16")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.0, lambda: blocker.execute("ROLLBACK"))
    try:
        started = time.monotonic()
        assert d.login(USER, PASSWORD).code == 235
        assert time.monotonic() - started < 0.8, "the 235 waited for the login count"
        release.start()
        again = connect(gw, "127.0.0.17").login(USER, PASSWORD)
    finally:
        if release.is_alive() or release.finished.is_set():
            release.join()
        else:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert (again.code, again.status) == (454, "4.7.0"), again
    assert _logins_counted(path, USER) == 2


def test_the_250_does_not_wait_for_the_count_and_stopping_writes_it(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    """The count is committed off the reply path; the session's next MAIL, and a stop, wait
    for it, so nothing is ever left uncounted."""
    gw = gateway_factory({"limits": {"messages_per_user": 2}})
    path = _sqlite_path(gw)
    d = session(gw, "127.0.0.12")
    _wait_for_logins_counted(path, USER, 1)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # every writer now waits (busy_timeout 5 s)
    try:
        started = time.monotonic()
        sent(d)
        assert time.monotonic() - started < 3, "the 250 waited for the counter write"
        assert _messages_counted(path, user_key(USER)) == 0
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    sent(d)  # its MAIL waited for the first count
    assert d.cmd(f"MAIL FROM:<{USER}>").code == 450
    assert _messages_counted(path, user_key(USER)) == 2

    gw.add_user(BOB)
    other = session(gw, "127.0.0.13", user=BOB)
    sent(other, sender=BOB)
    for client in (other, d):  # hang up, as clients do: the stop need not wait for them
        client.cmd("QUIT")
        client.close()
    assert gw.stop() == 0
    assert _messages_counted(path, user_key(BOB)) == 1
    assert len(smarthost.wait_for_messages(3)) == 3


def test_a_count_still_being_written_holds_for_every_session_of_the_gateway(
    gateway_factory: Any,
) -> None:
    """Another session's MAIL waits for a count that is still being written, not past it."""
    gw = gateway_factory({"limits": {"messages_per_user": 1}})
    path = _sqlite_path(gw)
    first, second = session(gw, "127.0.0.14"), session(gw, "127.0.0.15")
    _wait_for_logins_counted(path, USER, 2)
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(1.0, lambda: blocker.execute("ROLLBACK"))
    try:
        sent(first)  # its count now waits for the lock
        release.start()
        started = time.monotonic()
        refused = second.cmd(f"MAIL FROM:<{USER}>")
        assert time.monotonic() - started >= 0.5, "the MAIL did not wait for the count"
    finally:
        release.join()
        blocker.close()
    assert (refused.code, refused.status) == (450, "4.7.1"), refused
    assert _messages_counted(path, user_key(USER)) == 1
