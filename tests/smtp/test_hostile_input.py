"""Hostile message content against a real gateway process over loopback.

Rules proven here: a From: header built to be expensive (hundreds of KB folded,
hundreds of nested comments, a header section over the limit) is refused at
once with `550 5.7.1` or `554 5.6.0` and one log line, while other clients keep
getting their greeting; the From: check has a time limit; DATA made of millions
of short lines is read in seconds with modest memory; commands pipelined after
the final dot are still answered; dripping DATA cannot outlive the session.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from tests.support.client import Dialog, Reply
from tests.support.gateway import PASSWORD, USER, GatewayProcess, run_cli
from tests.support.smarthost import CaptureSmarthost

SUBJECT = b"To: bob@example.net\r\nSubject: test\r\n\r\nHello.\r\n"


def session(gw: GatewayProcess, timeout: float = 30) -> Dialog:
    d = Dialog(gw.port, timeout=timeout)
    assert d.cmd("EHLO client.test").code == 250
    assert d.starttls(gw.ssl_context()).code == 220
    assert d.cmd("EHLO client.test").code == 250
    assert d.login(USER, PASSWORD).code == 235
    return d


def send_message(d: Dialog, data: bytes) -> Reply:
    for command in (f"MAIL FROM:<{USER}>", "RCPT TO:<bob@example.net>", "DATA"):
        reply = d.cmd(command)
        assert reply.code < 400, reply
    d.send(data + b".\r\n")
    return d.read()


def cpu_seconds(gw: GatewayProcess) -> float:
    """User and system CPU time of the gateway process so far."""
    assert gw.proc is not None
    with open(f"/proc/{gw.proc.pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(gw: GatewayProcess, field: str) -> int:
    assert gw.proc is not None
    with open(f"/proc/{gw.proc.pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc status")


class GreetingProbe:
    """Connects again and again while a test runs; records how long each greeting took."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.gw = gw
        self.waits: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.waits) < 100:
            started = time.monotonic()
            probe = Dialog(self.gw.port, timeout=30)
            self.waits.append(time.monotonic() - started)
            assert probe.greeting.code == 220
            probe.cmd("QUIT")
            probe.close()
            self._stop.wait(0.2)

    def __enter__(self) -> GreetingProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(40)


def refused_once(gw: GatewayProcess, reply: Reply) -> None:
    """The refusal is one `sender` log line, and nothing went to the internal-error path."""
    time.sleep(0.3)
    events = [e for e in gw.log_events("sender") if e["check"] == "header"]
    assert [e["reply"] for e in events] == [reply.lines[-1]]
    log = gw.log_text()
    assert "Traceback" not in log and "internal error" not in log


def folded_from(size: int) -> bytes:
    addresses = (f",\r\n user{i}@example.org".encode() for i in range(size // 20 + 1))
    header = (b"From: " + USER.encode() + b"".join(addresses))[:size]
    return header[: header.rfind(b",")] + b"\r\n"


# --- From: header ---------------------------------------------------------------------------


def test_huge_folded_from_is_refused_at_once_and_others_are_served(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    """400 KB of From: took Python's parser ~8 s on the event loop: every client waited."""
    d = session(gateway)
    with GreetingProbe(gateway) as probe:
        started = time.monotonic()
        reply = send_message(d, folded_from(400_000) + SUBJECT)
        elapsed = time.monotonic() - started
    assert reply.lines == ["550 5.7.1 From: header is too long; the limit is 8192 bytes"]
    assert elapsed < 3, elapsed
    assert probe.waits and max(probe.waits) < 1, probe.waits
    refused_once(gateway, reply)
    assert d.cmd("NOOP").code == 250
    assert smarthost.messages() == []


def test_nested_comments_are_refused_without_a_traceback(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    """400 nested comments made the parser raise RecursionError: 421 and a huge traceback."""
    d = session(gateway)
    nested = b"From: " + b"(" * 400 + b"x" + b")" * 400 + b" " + USER.encode() + b"\r\n"
    reply = send_message(d, nested + SUBJECT)
    assert reply.lines == ["550 5.7.1 From: header has comments nested too deeply"]
    refused_once(gateway, reply)
    assert d.cmd("NOOP").code == 250
    shallow = b"From: (a (b (c))) " + USER.encode() + b"\r\n"
    assert send_message(d, shallow + SUBJECT).code == 250
    assert len(smarthost.wait_for_messages(1)) == 1


def test_header_section_over_the_limit_gets_554(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory({"limits": {"max_header_bytes": 65536}})
    d = session(gw)
    padding = b"X-Padding: " + b"p" * 60 + b"\r\n"
    big = padding * 1200 + b"From: " + USER.encode() + b"\r\n" + SUBJECT
    reply = send_message(d, big)
    assert reply.lines == ["554 5.6.0 Header section too big; the limit is 65536 bytes"]
    refused_once(gw, reply)
    small = padding * 800 + b"From: " + USER.encode() + b"\r\n" + SUBJECT
    assert send_message(d, small).code == 250
    body_only = b"\r\n" + padding * 2000
    assert send_message(d, body_only).code == 250, "a long body is not a header section"
    assert len(smarthost.wait_for_messages(2)) == 2


def test_from_address_count_limit(gateway_factory: Any, smarthost: CaptureSmarthost) -> None:
    gw = gateway_factory({"limits": {"max_from_addresses": 5}}, start=False)
    assert run_cli(gw.config, "user", "sender", "add", USER, "@example.net").returncode == 0
    gw.start()
    d = session(gw)

    def header(count: int) -> bytes:
        names = [f'"Team member {i}" <m{i}@example.net>'.encode() for i in range(count)]
        return b"From: " + b",\r\n ".join(names) + b"\r\n" + SUBJECT

    assert send_message(d, header(5)).code == 250
    reply = send_message(d, header(6))
    assert reply.lines == ["550 5.7.1 From: header has too many addresses; the limit is 5"]
    refused_once(gw, reply)
    assert len(smarthost.wait_for_messages(1)) == 1


def test_from_check_has_a_time_limit(gateway_factory: Any, smarthost: CaptureSmarthost) -> None:
    """A header within every bound but slower to parse than the limit is refused, not waited on."""
    # A microsecond: no thread parses 50 addresses that fast, however idle the machine.
    gw = gateway_factory({"limits": {"header_check_timeout": 0.000001}}, start=False)
    assert run_cli(gw.config, "user", "sender", "add", USER, "@example.net").returncode == 0
    gw.start()
    d = session(gw)
    names = [f'"Mitglied {i} der Abteilung" <m{i}@example.net>'.encode() for i in range(50)]
    reply = send_message(d, b"From: " + b",\r\n ".join(names) + b"\r\n" + SUBJECT)
    assert reply.lines == ["554 5.6.0 Header section too complex to check in time"]
    refused_once(gw, reply)
    assert d.cmd("NOOP").code == 250
    assert smarthost.messages() == []
    # The common shapes are read on the event loop, without the parser's thread and its limit.
    simple = send_message(d, b'From: "Mitglied 1" <m1@example.net>\r\n' + SUBJECT)
    assert simple.code == 250, simple
    assert len(smarthost.wait_for_messages(1)) == 1


# --- DATA -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "cpu_limit"),
    [(b"\r\n", 2), (b"a.\r\n", 2), (b"..\r\n", 2)],
    ids=["empty", "ending-in-dot", "stuffed-dot"],
)
def test_four_mib_of_short_lines_is_read_cheaply(
    gateway_factory: Any, line: bytes, cpu_limit: float
) -> None:
    """Line-by-line reading took ~40 s of CPU and ~280 MiB for 4 MiB of empty lines.

    The From: header is refused, so what is measured is reading, decoding and
    checking the message, not relaying it.
    """
    gateway = gateway_factory(process=True)
    d = session(gateway, timeout=60)
    peak_before = memory_kib(gateway, "VmHWM")
    cpu_before = cpu_seconds(gateway)
    with GreetingProbe(gateway) as probe:
        data = b"From: eve@evil.test\r\n\r\n" + line * ((4 << 20) // len(line))
        reply = send_message(d, data)
    cpu = cpu_seconds(gateway) - cpu_before
    growth = memory_kib(gateway, "VmHWM") - peak_before
    print(f"4 MiB of {line!r}: {cpu:.2f} s CPU, peak RSS +{growth} KiB")
    assert reply.lines[0].startswith("550 5.7.1"), reply
    assert cpu < cpu_limit, f"the gateway spent {cpu:.2f} s of CPU"
    assert growth < 40 * 1024, f"peak RSS grew by {growth} KiB"
    assert max(probe.waits) < 1, probe.waits
    assert d.cmd("NOOP").code == 250


def test_the_costliest_line_pattern_stays_linear(gateway_factory: Any) -> None:
    """A message that starts with empty lines alternating with lines ending in "." makes
    the reader stop every few bytes (it may not read past the final dot, and cannot look
    ahead); the cost per byte stays bounded and other sessions keep being served.
    """
    gw = gateway_factory({"limits": {"max_message_size": 1 << 20}}, process=True)
    d = session(gw, timeout=60)
    peak_before = memory_kib(gw, "VmHWM")
    cpu_before = cpu_seconds(gw)
    with GreetingProbe(gw) as probe:
        reply = send_message(d, b"\r\na.\r\n" * ((4 << 20) // 6))
    cpu = cpu_seconds(gw) - cpu_before
    growth = memory_kib(gw, "VmHWM") - peak_before
    print(f"4 MiB of the costliest pattern: {cpu:.2f} s CPU, peak RSS +{growth} KiB")
    assert reply.lines == ["552 5.3.4 Message too big; the limit is 1048576 bytes"]
    assert cpu < 10, f"the gateway spent {cpu:.2f} s of CPU"
    assert growth < 20 * 1024, f"peak RSS grew by {growth} KiB"
    assert max(probe.waits) < 1, probe.waits
    assert d.cmd("NOOP").code == 250


def test_four_mib_of_empty_lines_is_relayed(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gateway = gateway_factory(process=True)
    d = session(gateway, timeout=60)
    cpu_before = cpu_seconds(gateway)
    reply = send_message(d, b"From: " + USER.encode() + b"\r\n\r\n" + b"\r\n" * (2 << 20))
    cpu = cpu_seconds(gateway) - cpu_before
    assert reply.code == 250, reply
    assert cpu < 4, f"the gateway spent {cpu:.2f} s of CPU"
    (msg,) = smarthost.wait_for_messages(1, timeout=30)
    assert msg.raw.count(b"\r\n") >= 2 << 20


def test_commands_pipelined_after_the_final_dot_are_answered(
    gateway: GatewayProcess, smarthost: CaptureSmarthost
) -> None:
    d = session(gateway)
    for command in (f"MAIL FROM:<{USER}>", "RCPT TO:<bob@example.net>", "DATA"):
        assert d.cmd(command).code < 400
    body = b"From: " + USER.encode() + b"\r\n\r\n" + b"..dots.\r\n" * 3000
    d.send(body + b".\r\nMAIL FROM:<" + USER.encode() + b">\r\nRSET\r\nNOOP\r\n")
    assert [d.read().code for _ in range(4)] == [250, 250, 250, 250]
    (msg,) = smarthost.wait_for_messages(1)
    assert msg.raw.endswith(b"\r\n.dots.\r\n")


def test_dripping_data_cannot_outlive_the_session(gateway_factory: Any) -> None:
    """Data keeps arriving well within idle_timeout, but the session's lifetime still ends it."""
    gw = gateway_factory({"limits": {"idle_timeout": 2.0, "max_session_seconds": 3.0}})
    d = session(gw)
    for command in (f"MAIL FROM:<{USER}>", "RCPT TO:<bob@example.net>", "DATA"):
        assert d.cmd(command).code < 400
    started = time.monotonic()
    d.sock.settimeout(0.3)
    reply = None
    while reply is None and time.monotonic() - started < 10:
        try:
            d.send((b"x" * 78 + b"\r\n") * 100)
            reply = d.read()
        except TimeoutError:
            continue
        except (ConnectionError, OSError):
            break
    assert reply is not None and reply.lines[0].startswith("421 4.4.2"), reply
    assert "Session too long" in reply.lines[0]
    assert time.monotonic() - started < 5
