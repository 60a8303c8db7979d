"""`serve --workers 2` as real processes: both workers serve, one supervisor stops,
reloads and counts them all, a killed worker comes back, and the caps hold for the
gateway as a whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from submitgw.app.workers import (
    RESTART_LIMIT,
    Gathered,
    Supervisor,
    merge,
    share,
    worker_count,
)
from submitgw.config import Config, Endpoint
from submitgw.services.metrics import Metrics
from tests.gateway.test_reload import install, new_server_cert, serial_of
from tests.support.gateway import USER, GatewayProcess
from tests.support.metrics import Samples, get
from tests.support.smarthost import CaptureSmarthost

MSG = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: workers\r\n\r\nHi.\r\n"
METRICS = {"metrics": {"listen": "127.0.0.1:0", "readiness_cache_seconds": 0.0}}


def children(pid: int) -> set[int]:
    """The live child processes of `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; the fields after its ")" do not.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(what: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def start(gw: GatewayProcess, workers: int = 2) -> None:
    """Started and every worker ready (the supervisor logs its listeners first)."""
    gw.start("--workers", str(workers))
    wait_for(lambda: len(gw.log_events("worker-ready")) == workers, timeout=60)


def send(gw: GatewayProcess) -> None:
    client = gw.smtp()
    try:
        assert client.sendmail(USER, ["bob@example.net"], MSG) == {}
    finally:
        client.quit()


def served_by(gw: GatewayProcess) -> set[int]:
    return {e["worker"] for e in gw.log_events("message") if "worker" in e}


def test_two_workers_serve_reload_count_restart_and_stop(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw: GatewayProcess = gateway_factory(METRICS, process=True, start=False)
    start(gw)
    assert gw.proc is not None
    supervisor = gw.proc.pid
    workers = wait_for(lambda: len(children(supervisor)) == 2 and children(supervisor))
    assert len(gw.log_events("listening")) == 3  # once per listener, by the supervisor

    # Both workers take connections from the shared sockets; every message arrives.
    sent = 0
    while served_by(gw) != {0, 1}:
        assert sent < 40, gw.log_text()[-3000:]
        send(gw)
        sent += 1
    assert len(smarthost.wait_for_messages(sent)) == sent

    # The admin port shows both, each sample labelled with its worker.
    scraped = Samples(get(gw.metrics_port, "/metrics").body)
    per_worker = [scraped("submitgw_messages_accepted_total", worker=str(i)) for i in (0, 1)]
    assert all(n > 0 for n in per_worker) and sum(per_worker) == sent
    ready = get(gw.metrics_port, "/readyz")
    assert ready.status == 200 and "worker 0:" in ready.body and "worker 1:" in ready.body

    # SIGHUP: each worker reloads and says so; new clients see the renewed certificate.
    old = serial_of(gw.smtp(login=False))
    install(new_server_cert(gw, "renewed"), gw, "server.key", "server.crt")
    gw.proc.send_signal(signal.SIGHUP)
    reloads = wait_for(lambda: len(gw.log_events("reload")) == 2 and gw.log_events("reload"))
    assert {e["worker"] for e in reloads} == {0, 1}
    assert all(e["result"] == "ok" and e["changed"] == ["tls.cert", "tls.key"] for e in reloads)
    for _ in range(6):
        client = gw.smtp(login=False)
        assert serial_of(client) != old
        client.quit()

    # A worker killed outright is started again; the gateway serves on meanwhile.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: any(e.get("code") == -9 for e in gw.log_events("worker-exit")))
    wait_for(lambda: len(gw.log_events("worker-ready")) == 3)
    replaced = children(supervisor)
    assert victim not in replaced and len(replaced) == 2
    send(gw)
    assert len(smarthost.wait_for_messages(sent + 1)) == sent + 1

    # SIGTERM: every worker stops, then the supervisor, with 0 and no orphans.
    assert gw.stop() == 0
    assert not any(alive(pid) for pid in replaced | workers)


def test_the_per_address_cap_holds_for_the_whole_gateway(gateway_factory: Any) -> None:
    """Each worker has half of it: 4 from one address in all, never 4 per worker.
    And the workers go when their supervisor is killed."""
    gw: GatewayProcess = gateway_factory(
        {"limits": {"max_connections_per_ip": 4}}, process=True, start=False
    )
    start(gw)
    greeted, held = 0, []
    try:
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            held.append(sock)
            if sock.recv(512).startswith(b"220"):
                greeted += 1
        assert 1 <= greeted <= 4
    finally:
        for sock in held:
            sock.close()

    # No worker outlives its supervisor, even one killed outright.
    assert gw.proc is not None
    workers = children(gw.proc.pid)
    assert len(workers) == 2
    gw.kill()
    wait_for(lambda: not any(alive(pid) for pid in workers))


def test_a_worker_gets_its_share_of_each_cap() -> None:
    cfg = Config()
    two = share(cfg, 2)
    assert two.limits.max_connections == cfg.limits.max_connections // 2
    assert two.limits.max_connections_per_ip == cfg.limits.max_connections_per_ip // 2
    assert two.selfservice.max_connections == cfg.selfservice.max_connections // 2
    assert two.auth.workers == max(1, cfg.auth.workers // 2)
    assert two.auth.max_pending == cfg.auth.max_pending // 2
    assert share(cfg, 1) == cfg
    assert worker_count(3) == 3 and worker_count(0) == (os.cpu_count() or 1)


def test_merged_metrics_are_valid_in_both_formats() -> None:
    """One HELP and TYPE per family, each sample with its worker, for either parser."""
    one = Metrics()
    one.record({"event": "message", "reply": "250 2.0.0 queued", "recipients": 1})
    text = generate_latest(one.registry).decode()
    gathered = Gathered()
    gathered.families = merge({0: text, 1: text})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(gathered)
    classic = generate_latest(registry).decode()
    assert classic.count("# TYPE ") == text.count("# TYPE ")
    families = list(text_string_to_metric_families(classic))
    assert families and all(s.labels["worker"] in ("0", "1") for f in families for s in f.samples)
    assert list(openmetrics_families(openmetrics_latest(registry).decode()))


def test_a_crash_loop_stops_the_gateway(caplog: Any) -> None:
    """Workers that die at once are restarted RESTART_LIMIT times, then the supervisor
    gives up with exit code 1 instead of spinning."""
    cfg = Config().replace(
        submission=dataclasses.replace(Config().submission, listen=Endpoint("127.0.0.1", 0)),
        submissions=dataclasses.replace(Config().submissions, listen=None),
    )
    dying = [sys.executable, "-c", "raise SystemExit(3)"]
    supervisor = Supervisor(cfg, dying, 1, first_delay=0.001)
    caplog.set_level(logging.INFO)

    assert asyncio.run(asyncio.wait_for(supervisor.run(), 60)) == 1
    exits = [r for r in caplog.records if getattr(r, "event", {}).get("event") == "worker-exit"]
    events = [getattr(r, "event", {}) for r in exits]
    assert [e["code"] for e in events] == [3] * (RESTART_LIMIT + 1)
    assert events[-1]["restart"] is False
