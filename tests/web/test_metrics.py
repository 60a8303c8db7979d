"""The admin port on its own: its three paths, its connection cap and its clocks.

A real aiohttp server on loopback, in a thread with its own event loop, read with
http.client and raw sockets; readiness is whatever verdict the test sets.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from submitgw.config import Endpoint, MetricsConfig
from submitgw.services.metrics import Metrics
from submitgw.services.readiness import Probe, Verdict
from submitgw.web.metrics import AdminLimits, AdminSite
from tests.support.metrics import Answer, Samples, get

LIMITS = AdminLimits(
    max_connections=3, max_connections_per_ip=2, header_timeout=0.5, idle_timeout=1.0
)
READY = Verdict((Probe("database", True, "ok (1 ms)"), Probe("smarthost", True, "ok (x)")))
NOT_READY = Verdict((Probe("database", False, "failed (OperationalError)"),))


@dataclass
class Admin:
    port: int = 0
    verdict: Verdict = READY
    metrics: Metrics = field(default_factory=Metrics)

    async def readiness(self) -> Verdict:
        return self.verdict


@pytest.fixture
def admin() -> Iterator[Admin]:
    state = Admin()
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        site = AdminSite(state.metrics.registry, state.readiness, MetricsConfig(), LIMITS)
        runner, sockets = await site.start(Endpoint("127.0.0.1", 0))
        state.port = sockets[0].getsockname()[1]
        started.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    yield state
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def closed_within(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes `sock` (reading whatever it sends first)."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError as exc:
        raise AssertionError(f"still open after {limit} s") from exc
    except OSError:
        pass
    return time.monotonic() - started


def test_metrics_in_the_format_the_scraper_asks_for(admin: Admin) -> None:
    admin.metrics.messages_accepted.inc(3)

    classic = get(admin.port, "/metrics")
    assert classic.status == 200
    assert classic.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert Samples(classic.body)("submitgw_messages_accepted_total") == 3

    conn = http.client.HTTPConnection("127.0.0.1", admin.port, timeout=5)
    conn.request("GET", "/metrics", headers={"Accept": "application/openmetrics-text"})
    answer = conn.getresponse()
    body = answer.read().decode()
    conn.close()
    assert answer.getheader("Content-Type", "").startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_healthz_and_readyz(admin: Admin) -> None:
    assert get(admin.port, "/healthz") == Answer(200, "text/plain; charset=utf-8", "ok\n")
    ready = get(admin.port, "/readyz")
    assert (ready.status, ready.body) == (
        200,
        "ready\ndatabase: ok (1 ms)\nsmarthost: ok (x)\n",
    )

    admin.verdict = NOT_READY
    down = get(admin.port, "/readyz")
    assert (down.status, down.body) == (503, "not ready\ndatabase: failed (OperationalError)\n")

    admin.verdict = Verdict((), stopping=True)
    assert get(admin.port, "/readyz").status == 503


def test_only_get_of_the_three_paths(admin: Admin) -> None:
    assert get(admin.port, "/").status == 404
    assert get(admin.port, "/metrics/../etc/passwd").status == 404
    assert get(admin.port, "/metrics", method="POST").status == 405
    assert get(admin.port, "/readyz", method="DELETE").status == 405
    assert get(admin.port, "/healthz", method="HEAD").status == 200


def test_connections_are_capped_at_accept(admin: Admin, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="submitgw")
    held = [
        socket.create_connection(("127.0.0.1", admin.port), source_address=("127.0.0.7", 0))
        for _ in range(2)
    ]
    try:
        same_client = socket.create_connection(
            ("127.0.0.1", admin.port), source_address=("127.0.0.7", 0)
        )
        assert closed_within(same_client, 2) < 1
        held.append(
            socket.create_connection(("127.0.0.1", admin.port), source_address=("127.0.0.8", 0))
        )
        over_all = socket.create_connection(
            ("127.0.0.1", admin.port), source_address=("127.0.0.9", 0)
        )
        assert closed_within(over_all, 2) < 1
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if get(admin.port, "/healthz", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.05)
    else:
        raise AssertionError("the slots were not given back")
    events = [getattr(r, "event", {}) for r in caplog.records if r.levelno == logging.WARNING]
    refused = [e["end"] for e in events if e.get("event") == "metrics-connection"]
    # (a retry above may have come before the slots were given back: refused all the same)
    assert refused[:2] == ["too-many-connections-from-client", "too-many-connections"]


def test_slow_and_idle_clients_are_cut(admin: Admin) -> None:
    with socket.create_connection(("127.0.0.1", admin.port)) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert 0.3 < closed_within(slow, 5) < 2.5
    with socket.create_connection(("127.0.0.1", admin.port)) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(5)
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        assert 0.7 < closed_within(idle, 5) < 3
