"""Behind a load balancer: the PROXY header's client is the client, everywhere.

The test plays the balancer: it connects from 127.0.0.1, sends a header naming
192.0.2.7, then speaks SMTP (or TLS) for that client over the same socket. Access
rules, connection caps, the Received: header and the log must all see 192.0.2.7;
anyone but a trusted balancer, and a balancer that does not speak first, must be
cut off without a word.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import struct
import time
from typing import Any

import pytest

from tests.support.client import Dialog, Reply
from tests.support.gateway import PASSWORD, USER, InProcessGateway, run_cli
from tests.support.smarthost import CaptureSmarthost

CLIENT = "192.0.2.7"
BALANCER = "127.0.0.1"
STRANGER = "127.0.0.2"
MSG = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: proxied\r\n\r\nHello.\r\n.\r\n"


def behind(*listeners: str, timeout: float = 10.0, **sections: Any) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {
        name: {"proxy_protocol": True, "trusted_proxies": [BALANCER]}
        for name in listeners or ("submission", "submissions")
    }
    options["limits"] = {"tls_handshake_timeout": timeout, **sections.pop("limits", {})}
    return {**options, **sections}


def v1(client: str = CLIENT, port: int = 40000) -> bytes:
    family = "TCP6" if ":" in client else "TCP4"
    other = "::1" if ":" in client else "10.0.0.1"
    return f"PROXY {family} {client} {other} {port} 587\r\n".encode()


def v2(client: str | None = CLIENT, port: int = 40000, *, tlvs: bytes = b"") -> bytes:
    """A v2 PROXY header; without a client, a LOCAL one (the balancer's health check)."""
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    if client is None:
        return signature + b"\x20\x00\x00\x00"
    source = ipaddress.ip_address(client).packed
    family = 0x11 if len(source) == 4 else 0x21
    payload = source + bytes(len(source)) + struct.pack("!HH", port, 465) + tlvs
    return signature + bytes([0x21, family]) + struct.pack("!H", len(payload)) + payload


def connect(port: int, source: str = BALANCER) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


class TlsOverSocket:
    """A TLS client whose ClientHello leaves in one write with `preamble` (the header),
    as a balancer forwards it: the gateway must hand what follows the header to TLS."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, preamble: bytes) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        pending = preamble
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(pending + self.outgoing.read())
                pending = b""
                self._fill()
        self.sock.sendall(self.outgoing.read())

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                if not self._fill():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def settimeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()


class Proxied(Dialog):
    """A dialog the test, as the balancer, opened and prefixed with a PROXY header."""

    def __init__(
        self,
        port: int,
        header: bytes,
        *,
        source: str = BALANCER,
        tls: ssl.SSLContext | None = None,
        split: bool = False,
        then: bytes = b"",
    ) -> None:
        sock = connect(port, source)
        if split:  # one byte a segment: the header may arrive in any pieces
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in header:
                sock.sendall(bytes([byte]))
                time.sleep(0.002)
            header = b""
        self.sock: Any = TlsOverSocket(sock, tls, header) if tls else sock
        if not tls:
            sock.sendall(header + then)
        self.buffer = b""
        self.greeting = self.read()


def send_message(d: Dialog, *, ehlo: bool = True) -> None:
    if ehlo:
        assert d.cmd("EHLO client.test").code == 250
    assert d.login(USER, PASSWORD).code == 235
    assert d.cmd(f"MAIL FROM:<{USER}>").code == 250
    assert d.cmd("RCPT TO:<bob@example.net>").code == 250
    assert d.cmd("DATA").code == 354
    d.send(MSG)
    assert d.read().code == 250
    assert d.cmd("QUIT").code == 221
    d.close()


def events(gw: InProcessGateway, kind: str, n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(gw.log_events(kind)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    found = gw.log_events(kind)
    assert len(found) >= n, f"no {kind!r} event:\n{gw.log_text()}"
    return found


def refused(gw: InProcessGateway, n: int = 1) -> list[dict[str, Any]]:
    return [e for e in events(gw, "connection", n) if e["result"] == "refused"]


def settled(gw: InProcessGateway) -> None:
    """Every connection was released, each once: nothing counted is left behind."""
    assert gw.app is not None
    table = gw.app.gateway.connections
    deadline = time.monotonic() + 10
    while (table.total or table.per_client) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (table.total, dict(table.per_client)) == (0, {})


def assert_cut_without_a_word(sock: socket.socket) -> None:
    sock.settimeout(10)
    try:
        assert sock.recv(1024) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()


# --- the real client, everywhere -------------------------------------------------------


@pytest.mark.parametrize(("header", "split"), [(v1(), False), (v2(), True)], ids=["v1", "v2"])
def test_starttls_listener_sees_the_client_named_by_the_header(
    gateway_factory: Any, smarthost: CaptureSmarthost, header: bytes, split: bool
) -> None:
    gw = gateway_factory(behind("submission"))
    # Commands may follow the header in the same segment: they are the client's.
    d = Proxied(gw.port, header, split=split, then=b"EHLO client.test\r\n")
    assert d.greeting.code == 220
    assert d.read().code == 250
    assert d.starttls(gw.ssl_context()).code == 220
    send_message(d)

    (msg,) = smarthost.wait_for_messages(1)
    assert msg.message["Received"].startswith(f"from client.test ([{CLIENT}])")
    assert [e["client"] for e in events(gw, "access")] == [CLIENT]
    (session,) = events(gw, "session")
    assert (session["client"], session["listener"]) == (CLIENT, "submission")
    assert events(gw, "message")[0]["client"] == CLIENT
    settled(gw)


@pytest.mark.parametrize("header", [v1("2001:db8::7"), v2(tlvs=b"\x04\x00\x02id")], ids=str)
def test_implicit_tls_gets_the_client_hello_that_follows_the_header(
    gateway_factory: Any, smarthost: CaptureSmarthost, header: bytes
) -> None:
    gw = gateway_factory(behind("submissions"))
    client = "2001:db8::7" if header.startswith(b"PROXY") else CLIENT
    d = Proxied(gw.tls_port, header, tls=gw.ssl_context())
    assert d.greeting.code == 220
    send_message(d)

    (msg,) = smarthost.wait_for_messages(1)
    assert f"([{client}])" in msg.message["Received"].split("\n")[0]
    (session,) = events(gw, "session")
    assert (session["client"], session["listener"], session["tls"] is not None) == (
        client,
        "submissions",
        True,
    )
    settled(gw)


def test_a_local_header_is_the_balancers_own_connection(gateway_factory: Any) -> None:
    gw = gateway_factory(behind())
    d = Proxied(gw.port, v2(None))
    assert d.greeting.code == 220
    assert d.cmd("QUIT").code == 221
    d.close()
    (session,) = events(gw, "session")
    assert session["client"] == BALANCER
    settled(gw)


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_access_rules_judge_the_client_not_the_balancer(
    gateway_factory: Any, listener: str
) -> None:
    gw = gateway_factory(behind(listener), start=False)
    result = run_cli(gw.config, "access", "deny", CLIENT)
    assert result.returncode == 0, result.stderr
    gw.start()
    tls = gw.ssl_context() if listener == "submissions" else None
    port = gw.tls_port if listener == "submissions" else gw.port

    denied = Proxied(port, v2(), tls=tls)
    allowed = Proxied(port, v1("192.0.2.8"), tls=tls)

    assert (denied.greeting.code, denied.greeting.status) == (554, "5.7.1")
    assert denied.closed()
    assert allowed.greeting.code == 220
    allowed.close()
    decisions = {e["client"]: e["decision"] for e in events(gw, "access", 2)}
    assert decisions == {CLIENT: "deny", "192.0.2.8": "allow"}


def test_connection_caps_count_the_client_not_the_balancer(gateway_factory: Any) -> None:
    gw = gateway_factory(behind(limits={"max_connections_per_ip": 2}))
    first, second = Proxied(gw.port, v1()), Proxied(gw.tls_port, v2(), tls=gw.ssl_context())
    assert first.greeting.code == second.greeting.code == 220

    third = Proxied(gw.port, v1(port=40001))

    assert (third.greeting.code, third.greeting.status) == (421, "4.7.0")
    assert third.closed()
    (refusal,) = refused(gw)
    assert (refusal["client"], refusal["reason"]) == (CLIENT, "too-many-connections-from-client")
    # The balancer holds three connections and more: other clients are not its.
    others = [Proxied(gw.port, v1(f"192.0.2.{n}")) for n in (8, 9)]
    assert [d.greeting.code for d in others] == [220, 220]
    for d in (first, second, *others):
        d.close()
    settled(gw)


# --- anyone else is cut off ------------------------------------------------------------


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_a_header_from_an_untrusted_address_is_cut_off(gateway_factory: Any, listener: str) -> None:
    gw = gateway_factory(behind())
    sock = connect(gw.port if listener == "submission" else gw.tls_port, STRANGER)
    sock.sendall(v1())
    assert_cut_without_a_word(sock)
    (refusal,) = refused(gw)
    assert (refusal["client"], refusal["listener"], refusal["reason"]) == (
        STRANGER,
        listener,
        "proxy-untrusted",
    )
    assert not gw.log_events("session")
    settled(gw)


@pytest.mark.parametrize(
    ("listener", "first", "reason"),
    [
        ("submission", b"EHLO client.test\r\n", "proxy-header-missing"),
        ("submissions", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "proxy-header-missing"),
        ("submission", b"PROXY TCP4 192.0.2.7 10.0.0.1 40000\r\n", "proxy-header-malformed"),
        ("submission", b"PROXY UNKNOWN " + b"x" * 200, "proxy-header-too-long"),
        ("submissions", v2()[:14] + b"\xff\xff", "proxy-header-too-long"),
        ("submission", v2()[:20], "proxy-header-truncated"),
        ("submission", b"", "proxy-header-missing"),
    ],
    ids=["smtp", "tls", "malformed", "long-v1", "long-v2", "truncated", "closed"],
)
def test_a_trusted_balancer_must_speak_first_with_a_header(
    gateway_factory: Any, listener: str, first: bytes, reason: str
) -> None:
    gw = gateway_factory(behind())
    sock = connect(gw.port if listener == "submission" else gw.tls_port)
    sock.sendall(first)
    if reason in ("proxy-header-truncated", "proxy-header-missing") and first[:1] in (b"", b"\r"):
        sock.shutdown(socket.SHUT_WR)
    assert_cut_without_a_word(sock)
    (refusal,) = refused(gw)
    assert (refusal["client"], refusal["reason"]) == (BALANCER, reason)
    assert not gw.log_events("session")
    settled(gw)


def test_a_header_that_never_comes_is_cut_off_in_time(gateway_factory: Any) -> None:
    gw = gateway_factory(behind(timeout=1.0))
    sock = connect(gw.port)
    sock.sendall(v1()[:10])
    started = time.monotonic()
    assert_cut_without_a_word(sock)
    assert 0.8 < time.monotonic() - started < 5
    (refusal,) = refused(gw)
    assert refusal["reason"] == "proxy-header-timeout"
    settled(gw)


def test_without_proxy_protocol_a_proxy_line_is_just_a_bad_command(
    gateway_factory: Any,
) -> None:
    gw = gateway_factory()
    d = Dialog(gw.port)
    assert d.greeting.code == 220
    reply: Reply = d.cmd(v1().rstrip(b"\r\n"))
    assert (reply.code, reply.status) == (500, "5.5.1")
    assert d.cmd("QUIT").code == 221
    d.close()
    (session,) = events(gw, "session")
    assert session["client"] == BALANCER
    assert json.dumps(gw.log_events("connection")).count("refused") == 0
