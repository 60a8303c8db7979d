"""contrib/haproxy/haproxy.cfg: two `submitgw serve` processes on one PostgreSQL database
behind a real HAProxy, run from the shipped file (see tests/support/haproxy.py).

Clients bind 127.0.0.X source addresses to be different hosts; HAProxy reaches the gateways
from 127.0.0.1, their only trusted proxy, so a gateway sees a client's address only from
the PROXY header.

Which gateway served a connection: each instance has its own `[server] hostname` (gw1.test,
gw2.test), which its greeting names. To reach one of them, a client connects through HAProxy
until the greeting names it, holding the other connections open meanwhile (round robin moves
on either way): a rule shown on both instances is shown on each by name, not by luck. The
gateways take no connection without a PROXY header, so there is no side door to use instead.

One set of processes serves the whole module (starting them is most of its time); each test
uses its own users and client addresses, so that counters and lockouts of one never meet
another's. A test that stops a gateway leaves it to the `cluster` fixture to start it again.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import Dialog, Reply
from tests.support.gateway import PASSWORD, GatewayProcess, run_cli
from tests.support.haproxy import CONTRIB, Haproxy, require_haproxy
from tests.support.postgres import empty_database
from tests.support.smarthost import CaptureSmarthost

INSTANCES = ("gw1", "gw2")
BALANCER = "127.0.0.1"
PROXIED = {"proxy_protocol": True, "trusted_proxies": [BALANCER]}
FAILURES = 3
LIMIT = 3
GRACE = 10.0
OPTIONS: dict[str, dict[str, Any]] = {
    "submission": PROXIED,
    "submissions": PROXIED,
    "limits": {
        "messages_per_user": LIMIT,
        "auth_failures_per_account": FAILURES,
        "auth_delay": 0.01,
        "auth_max_delay": 0.02,
    },
}
MSG = "From: {user}\r\nTo: bob@example.net\r\nSubject: {token}\r\n\r\nHello.\r\n"


@dataclass
class Cluster:
    gateways: dict[str, GatewayProcess]
    balancer: Haproxy
    tls: ssl.SSLContext
    users: set[str] = field(default_factory=set)

    def port(self, frontend: str) -> int:
        return self.balancer.ports[frontend]

    def dial(
        self,
        source: str,
        *,
        want: str | None = None,
        implicit: bool = False,
        context: ssl.SSLContext | None = None,
    ) -> Dialog:
        """A connection through HAProxy from `source`, on 587 (greeted, not yet in TLS) or
        465; with `want`, one that HAProxy gave to that instance."""
        held: list[Dialog] = []
        try:
            for _ in range(2 * len(self.gateways)):
                if implicit:
                    d = Dialog(
                        self.port("submissions"), source=source, tls_context=context or self.tls
                    )
                else:
                    d = Dialog(self.port("submission"), source=source)
                if want is None or instance(d) == want:
                    return d
                held.append(d)
            raise AssertionError(f"HAProxy never gave {source} a connection to {want}")
        finally:
            for d in held:
                d.close()

    def user(self, email: str, *, messages_per_hour: int | None = None) -> str:
        """A user of this test only, created in the shared database; `messages_per_hour`
        lifts the module's small sending limit for tests about something else."""
        if email not in self.users:
            run = run_cli(
                self.gateways["gw1"].config,
                "user",
                "add",
                email,
                "--password-stdin",
                input=PASSWORD,
            )
            assert run.returncode == 0, run.stderr
            self.users.add(email)
        if messages_per_hour is not None:
            self.cli("user", "set-limit", email, "--messages-per-hour", str(messages_per_hour))
        return email

    def cli(self, *args: str, on: str = "gw1") -> str:
        result = run_cli(self.gateways[on].config, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout


def instance(d: Dialog) -> str:
    """The gateway a connection reached, from its greeting: `220 gw1.test ESMTP ready`."""
    assert d.greeting.code == 220, d.greeting
    return d.greeting.lines[0].split()[1].removesuffix(".test")


def secure(d: Dialog, context: ssl.SSLContext) -> Dialog:
    assert d.cmd("EHLO client.test").code == 250
    assert d.starttls(context).code == 220
    assert d.cmd("EHLO client.test").code == 250
    return d


def logged_in(cluster: Cluster, source: str, user: str, *, want: str | None = None) -> Dialog:
    d = secure(cluster.dial(source, want=want), cluster.tls)
    reply = d.login(user, PASSWORD)
    assert reply.code == 235, reply
    return d


def transaction(d: Dialog, user: str, token: str) -> Reply:
    """One message; the first reply that is not a success, or the reply to its data."""
    for command, expected in ((f"MAIL FROM:<{user}>", 250), ("RCPT TO:<bob@example.net>", 250)):
        reply = d.cmd(command)
        if reply.code != expected:
            return reply
    reply = d.cmd("DATA")
    if reply.code != 354:
        return reply
    d.send(MSG.format(user=user, token=token).encode() + b".\r\n")
    return d.read()


def tokens_at(smarthost: CaptureSmarthost, n: int) -> dict[str, Any]:
    """Subject -> the message, once `n` messages of this test reached the smarthost."""
    return {m.message["Subject"]: m.message for m in smarthost.wait_for_messages(n)}


def start_all(gateways: list[GatewayProcess]) -> None:
    """Start processes side by side: each start is mostly a Python start-up."""
    failures: list[BaseException] = []

    def start(gw: GatewayProcess) -> None:
        try:
            gw.start()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(gw,)) for gw in gateways]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if failures:
        raise failures[0]


@pytest.fixture(scope="module")
def running_cluster(
    gateway_template: Path,
    shared_smarthost: CaptureSmarthost,
    pg_migrated: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    require_haproxy()
    empty_database(pg_migrated)
    base = tmp_path_factory.mktemp("two-gateways")
    gateways: dict[str, GatewayProcess] = {}
    try:
        for name in INSTANCES:
            setup = base / name
            # One CA and server certificate for both, as the README's recipe copies them.
            shutil.copytree(gateway_template, setup)
            gw = GatewayProcess(setup, shared_smarthost.address)
            gw.configure(
                {
                    **OPTIONS,
                    "server": {"hostname": f"{name}.test", "shutdown_grace": GRACE},
                    "database": {"url": pg_migrated},
                    # HAProxy's health checks ask each gateway's /readyz here.
                    "metrics": {"listen": "127.0.0.1:0", "readiness_cache_seconds": 0.5},
                }
            )
            gateways[name] = gw
        start_all(list(gateways.values()))
        servers = {
            (backend, name): f"127.0.0.1:{gw.port if backend == 'submission' else gw.tls_port}"
            for name, gw in gateways.items()
            for backend in ("submission", "submissions")
        }
        for gw in gateways.values():
            # A gateway started again must answer HAProxy's checks where it did before.
            gw.configure({"metrics": {"listen": f"127.0.0.1:{gw.metrics_port}"}})
        checks = {("submission", name): gw.metrics_port for name, gw in gateways.items()}
        with Haproxy(base / "haproxy").start(servers, checks) as balancer:
            tls = gateways["gw1"].ssl_context()
            yield Cluster(gateways, balancer, tls)
    finally:
        for gw in gateways.values():
            # A gateway that outstays its grace is killed by `stop`, which then raises.
            with contextlib.suppress(subprocess.TimeoutExpired):
                gw.stop(timeout=GRACE + 5)


@pytest.fixture
def cluster(running_cluster: Cluster, smarthost: CaptureSmarthost) -> Cluster:
    """Both gateways serving and UP in HAProxy (a test before may have stopped one)."""
    stopped = [gw for gw in running_cluster.gateways.values() if not gw.running]
    if stopped:
        start_all(stopped)
        running_cluster.balancer.wait_for(
            lambda states: all(s == "UP" for s in states.values()), timeout=15
        )
    return running_cluster


# --- the shipped file ------------------------------------------------------------------------


def test_the_shipped_file_is_valid_haproxy_configuration() -> None:
    """As shipped (chroot, user, syslog and all), not only as the tests render it."""
    checked = subprocess.run(
        [require_haproxy(), "-c", "-f", str(CONTRIB)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "WARNING" not in checked.stdout + checked.stderr


# --- the client, not the balancer ------------------------------------------------------------


def queue_id(received: str) -> str:
    """The gateway's queue id in its Received: header (`... with ESMTPSA id QID ...`)."""
    found = re.search(r"\bid ([0-9A-Z]{18})\b", received)
    assert found, received
    return found.group(1)


def test_the_real_client_address_reaches_both_gateways_on_both_ports(
    cluster: Cluster, smarthost: CaptureSmarthost
) -> None:
    user = cluster.user("alice@example.org", messages_per_hour=10)
    sent = {}
    for n, (name, implicit) in enumerate(
        [("gw1", False), ("gw2", False), ("gw1", True), ("gw2", True)], start=41
    ):
        source, token = f"127.0.0.{n}", f"address-{n}"
        if implicit:
            d = cluster.dial(source, want=name, implicit=True)
            assert d.cmd("EHLO client.test").code == 250
            assert d.login(user, PASSWORD).code == 235
        else:
            d = logged_in(cluster, source, user, want=name)
        assert transaction(d, user, token).code == 250
        d.cmd("QUIT")
        d.close()
        sent[token] = (name, source)

    arrived = tokens_at(smarthost, len(sent))
    for token, (name, source) in sent.items():
        received = arrived[token]["Received"]
        assert received.startswith(f"from client.test ([{source}])"), received
        assert f"by {name}.test " in received, received
    for name, gw in cluster.gateways.items():
        clients = {e["client"] for e in gw.log_events("message") if e["user"] == user}
        assert clients == {source for n, source in sent.values() if n == name}
    # One database trail: either gateway's `audit search` finds what both relayed, each
    # message by the queue id its Received: header names, with the real client.
    queued = {queue_id(arrived[token]["Received"]): source for token, (_, source) in sent.items()}
    found: dict[str, str] = {}
    deadline = time.monotonic() + 10
    while found != queued and time.monotonic() < deadline:
        time.sleep(0.2)  # each gateway writes its trail in batches, every 0.5 s
        result = run_cli(
            cluster.gateways["gw2"].config, "audit", "search", "--user", user, "--json"
        )
        assert result.returncode == 0, result.stderr
        records = json.loads(result.stdout)
        found = {r["queue_id"]: r["client"] for r in records if r["kind"] == "message"}
    assert found == queued


def test_no_way_around_the_balancer(cluster: Cluster) -> None:
    """A client connecting straight to a gateway is cut off without a word."""
    for gw in cluster.gateways.values():
        for port in (gw.port, gw.tls_port):
            sock = socket.create_connection(
                ("127.0.0.1", port), timeout=10, source_address=("127.0.0.49", 0)
            )
            with sock, contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b""


# --- one database: what one gateway learns, the other knows --------------------------------


def test_a_revoked_certificate_is_refused_by_both_gateways_at_once(cluster: Cluster) -> None:
    """Client certificates pass through HAProxy untouched (465 here); `pki revoke` on the
    shared database refuses one on both instances from the next connection on."""
    user = cluster.user("carol@example.org")
    cluster.cli("user", "set-auth", user, "certificate")
    cert = cluster.gateways["gw1"].issue_cert(user)
    context = cert.context(cluster.gateways["gw1"].ca_file)

    def mail_from(name: str) -> tuple[Reply, Dialog]:
        d = cluster.dial("127.0.0.50", want=name, implicit=True, context=context)
        assert d.cmd("EHLO client.test").code == 250
        return d.cmd(f"MAIL FROM:<{user}>"), d

    for name in INSTANCES:
        accepted, d = mail_from(name)
        assert accepted.code == 250, accepted
        d.close()

    cluster.cli("pki", "revoke", cert.serial, on="gw2")

    for name in INSTANCES:
        refused, d = mail_from(name)
        assert (refused.code, refused.status) == (530, "5.7.0"), refused
        assert d.cmd("AUTH EXTERNAL =").lines[-1].startswith("535 5.7.8 Certificate revoked on ")
        d.close()
        verdicts = [
            (e["result"], e["reason"])
            for e in cluster.gateways[name].log_events("certificate")
            if e["serial"] == cert.serial
        ]
        assert verdicts == [("accepted", None), ("rejected", "revoked")], verdicts


def test_a_lockout_earned_on_one_gateway_holds_on_the_other(cluster: Cluster) -> None:
    user = cluster.user("frank@example.org")
    for _ in range(FAILURES):
        d = secure(cluster.dial("127.0.0.60", want="gw1"), cluster.tls)
        assert d.login(user, "not the password").code == 535
        d.close()

    for name in ("gw2", "gw1"):
        d = secure(cluster.dial("127.0.0.61", want=name), cluster.tls)
        locked = d.login(user, PASSWORD)
        assert (locked.code, locked.status) == (454, "4.7.0"), locked
        assert "Too many failed logins" in locked.text
        d.close()
    (lockout,) = [e for e in cluster.gateways["gw1"].log_events("lockout") if e["user"] == user]
    assert lockout["client"] == "127.0.0.60"
    refusals = [e for e in cluster.gateways["gw2"].log_events("auth") if e["user"] == user]
    assert [(e["result"], e["client"]) for e in refusals] == [("locked", "127.0.0.61")]


def test_a_sending_limit_counts_messages_through_both_gateways(
    cluster: Cluster, smarthost: CaptureSmarthost
) -> None:
    user = cluster.user("dave@example.org")
    for n, name in enumerate(["gw1", "gw2", "gw1"]):
        d = logged_in(cluster, f"127.0.0.{65 + n}", user, want=name)
        assert transaction(d, user, f"limit-{n}").code == 250
        d.close()

    for name in INSTANCES:
        d = logged_in(cluster, "127.0.0.68", user, want=name)
        refused = d.cmd(f"MAIL FROM:<{user}>")
        assert (refused.code, refused.status) == (450, "4.7.1"), refused
        assert f"{LIMIT} messages per hour" in refused.text
        d.close()
    assert len(tokens_at(smarthost, LIMIT)) == LIMIT


# --- taking one gateway out ----------------------------------------------------------------


def test_a_disabled_server_gets_no_new_connections_and_keeps_its_sessions(
    cluster: Cluster, smarthost: CaptureSmarthost
) -> None:
    """The README's drain: `disable server submission/gw1` (465's twin follows by `track`)."""
    user = cluster.user("grace@example.org")
    staying = logged_in(cluster, "127.0.0.55", user, want="gw1")
    cluster.balancer.command("disable server submission/gw1")
    try:
        states = cluster.balancer.wait_for(lambda s: s[("submission", "gw1")] == "MAINT")
        assert states[("submissions", "gw1")] == "MAINT"
        served = {instance(cluster.dial("127.0.0.56")) for _ in range(4)}
        served |= {instance(cluster.dial("127.0.0.56", implicit=True)) for _ in range(4)}
        assert served == {"gw2"}
        assert transaction(staying, user, "drained").code == 250
        assert "drained" in tokens_at(smarthost, 1)
    finally:
        cluster.balancer.command("enable server submission/gw1")
        cluster.balancer.wait_for(lambda s: all(v == "UP" for v in s.values()))
        staying.close()


@dataclass
class Attempt:
    token: str
    instance: str | None  # None: no greeting came
    code: int | None  # None: the connection dropped
    after_stop: bool


def attempt(cluster: Cluster, user: str, source: str, token: str) -> tuple[str | None, int | None]:
    """One try at one message, as a mail client makes it: (instance, last reply code)."""
    name = None
    try:
        d = cluster.dial(source)
        try:
            if d.greeting.code != 220:
                return name, d.greeting.code
            name = instance(d)
            for reply in (
                d.cmd("EHLO client.test"),
                d.starttls(cluster.tls),
                d.cmd("EHLO client.test"),
                d.login(user, PASSWORD),
            ):
                if reply.code >= 400:
                    return name, reply.code
            code = transaction(d, user, token).code
            if code == 250:
                d.cmd("QUIT")
            return name, code
        finally:
            d.close()
    except OSError:  # refused, reset or closed: the client tries again
        return name, None


def deliver(
    cluster: Cluster,
    user: str,
    source: str,
    tokens: list[str],
    stopped: threading.Event,
    attempts: list[Attempt],
) -> None:
    """Send each message until accepted, retrying after a 4xx or a dropped connection."""
    for token in tokens:
        for _ in range(RETRIES):
            after = stopped.is_set()
            name, code = attempt(cluster, user, source, token)
            attempts.append(Attempt(token, name, code, after))
            if code == 250:
                break
            if code is not None and code >= 500:
                return
            time.sleep(0.1)


RETRIES = 8
# Two clients sending five messages each, one per connection.
LOAD = [[f"load-{i}-{j}" for j in range(5)] for i in range(2)]


def test_stopping_a_gateway_loses_no_accepted_message(
    cluster: Cluster, smarthost: CaptureSmarthost
) -> None:
    """SIGTERM on gw1 while clients send through HAProxy: the message in flight on gw1 is
    finished (`shutdown_grace`), every 250 reached the smarthost, and clients that got a
    4xx or lost their connection get through on gw2 at their next try."""
    user = cluster.user("erin@example.org", messages_per_hour=100)
    gw1 = cluster.gateways["gw1"]
    assert gw1.proc is not None
    idle = logged_in(cluster, "127.0.0.69", user, want="gw1")
    inflight = logged_in(cluster, "127.0.0.70", user, want="gw1")
    assert inflight.cmd(f"MAIL FROM:<{user}>").code == 250
    assert inflight.cmd("RCPT TO:<bob@example.net>").code == 250
    assert inflight.cmd("DATA").code == 354
    inflight.send(MSG.format(user=user, token="in-flight").encode())

    stopped, attempts = threading.Event(), list[Attempt]()
    senders = [
        threading.Thread(
            target=deliver,
            args=(cluster, user, f"127.0.0.{71 + i}", tokens, stopped, attempts),
            daemon=True,
        )
        for i, tokens in enumerate(LOAD)
    ]
    for sender in senders:
        sender.start()
    deadline = time.monotonic() + 10
    while sum(a.code == 250 for a in attempts) < len(LOAD) and time.monotonic() < deadline:
        time.sleep(0.02)
    gw1.proc.send_signal(signal.SIGTERM)
    stopped.set()
    deadline = time.monotonic() + 10
    while "stopping: no new connections" not in gw1.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)

    # The idle client is sent away at once; the one inside DATA may finish its message.
    dismissed = idle.read()
    inflight.send(b".\r\n")
    finished, goodbye = inflight.read(), inflight.read()
    for d in (idle, inflight):
        d.close()
    assert (dismissed.code, dismissed.status) == (421, "4.3.2"), dismissed
    assert finished.code == 250, finished
    assert (goodbye.code, goodbye.status) == (421, "4.3.2"), goodbye
    # Both try again, as a mail client does after a 421: HAProxy sends them to gw2.
    for n, token in ((69, "idle-retry"), (70, "in-flight-retry")):
        assert attempt(cluster, user, f"127.0.0.{n}", token) == ("gw2", 250)
    for sender in senders:
        sender.join(30)
    assert not any(sender.is_alive() for sender in senders)
    assert gw1.proc.wait(GRACE + 5) == 0

    accepted = {a.token for a in attempts if a.code == 250}
    assert accepted == {token for tokens in LOAD for token in tokens}, attempts
    assert not [a for a in attempts if a.code is not None and a.code >= 500], attempts
    assert "gw2" in {a.instance for a in attempts if a.after_stop and a.code == 250}, attempts
    accepted |= {"in-flight", "idle-retry", "in-flight-retry"}
    assert set(tokens_at(smarthost, len(accepted))) == accepted
    # HAProxy's health check notices too, for both ports.
    cluster.balancer.wait_for(
        lambda s: s[("submission", "gw1")] == s[("submissions", "gw1")] == "DOWN"
    )
