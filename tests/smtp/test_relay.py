"""The relay: the wire form of a message (line ends, dot-stuffing, the end, at C speed,
whole or piece by piece), and the pool of smarthost connections the gateway's sessions share."""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from submitgw.smtp.relay import WireForm, wire_form
from tests.support.gateway import USER, InProcessGateway
from tests.support.metrics import scrape
from tests.support.smarthost import CaptureSmarthost

# RFC 5321 4.5.2 and the line-end rule, written the slow, obvious way.
_LINE_END = re.compile(rb"\r\n|\r|\n")


def reference(content: bytes) -> bytes:
    lines = _LINE_END.split(content)
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


@given(st.binary(max_size=200) | st.text(alphabet="a.\r\n", max_size=60).map(str.encode))
def test_wire_form_is_the_rfc_transparency_with_crlf_line_ends(content: bytes) -> None:
    assert wire_form(content) == reference(content)


def test_no_lone_line_end_reaches_the_smarthost() -> None:
    """Bare LF or CR before a dot must not end DATA upstream (SMTP smuggling)."""
    sent = wire_form(b"a\n.\nMAIL FROM:<x@evil>\r.\rb")
    assert sent == b"a\r\n..\r\nMAIL FROM:<x@evil>\r\n..\r\nb\r\n.\r\n"
    assert sent.count(b"\r\n.\r\n") == 1 and sent.endswith(b"\r\n.\r\n")


# --- the pool of smarthost connections, against a real gateway and capture smarthost ------

MSG = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: pool\r\n\r\nHello.\r\n"


def send(gw: InProcessGateway, recipient: str = "bob@example.net") -> None:
    """One client connection, one message, QUIT."""
    client = gw.smtp()
    client.sendmail(USER, [recipient], MSG)
    client.quit()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """The sink logs from its own process: wait a little for what it will say."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.02)


def test_sequential_sessions_share_one_smarthost_connection(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory()
    for n in range(5):
        send(gw, f"r{n}@example.net")
    assert [m.rcpt_tos for m in smarthost.wait_for_messages(5)] == [
        [f"r{n}@example.net"] for n in range(5)
    ]
    assert smarthost.connections() == 1


def test_pool_size_0_opens_one_connection_per_session(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory({"smarthost": {"pool_size": 0}})
    for _ in range(3):
        send(gw)
    smarthost.wait_for_messages(3)
    assert smarthost.connections() == 3
    eventually(lambda: smarthost.quits() == 3)


def test_a_connection_carries_pool_max_messages_then_quits(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory({"smarthost": {"pool_max_messages": 2}})
    for _ in range(3):
        send(gw)
    smarthost.wait_for_messages(3)
    assert smarthost.connections() == 2
    eventually(lambda: smarthost.quits() == 1)


def test_an_idle_connection_is_closed_after_pool_idle_seconds(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory({"smarthost": {"pool_idle_seconds": 0.3}})
    send(gw)
    eventually(lambda: smarthost.quits() == 1)
    send(gw)
    smarthost.wait_for_messages(2)
    assert smarthost.connections() == 2


def test_a_pooled_connection_the_smarthost_closed_is_replaced_unseen(
    gateway_factory: Any, smarthost_factory: Callable[..., CaptureSmarthost]
) -> None:
    """The smarthost drops idle clients (421, then close) sooner than the pool would."""
    sink = smarthost_factory(idle_timeout=0.3)
    gw = gateway_factory(smarthost_address=sink.address)
    send(gw, "first@example.net")
    time.sleep(0.6)
    send(gw, "second@example.net")
    port = sink.port
    sink.stop()
    sink.start(port=port)
    send(gw, "third@example.net")
    messages = sink.wait_for_messages(3)
    assert [m.rcpt_tos for m in messages] == [
        ["first@example.net"],
        ["second@example.net"],
        ["third@example.net"],
    ]
    assert sink.connections() == 3
    assert not gw.log_events("smarthost"), "a closed idle connection is no trouble"


def test_a_transaction_left_half_way_does_not_return_its_connection(
    gateway_factory: Any, smarthost: CaptureSmarthost
) -> None:
    gw = gateway_factory()
    send(gw, "first@example.net")
    client = gw.smtp()
    assert client.mail(USER)[0] == 250
    assert client.rcpt("left@example.net")[0] == 250
    client.close()  # gone without RSET or QUIT: the smarthost holds a transaction
    send(gw, "next@example.net")
    messages = smarthost.wait_for_messages(2)
    assert [m.rcpt_tos for m in messages] == [["first@example.net"], ["next@example.net"]]
    assert smarthost.connections() == 2


def test_a_rset_cleans_the_connection_for_the_next_session(
    gateway_factory: Any, smarthost_factory: Callable[..., CaptureSmarthost]
) -> None:
    sink = smarthost_factory(reject_rcpt=["nobody"], reject_data=True)
    gw = gateway_factory(smarthost_address=sink.address)
    client = gw.smtp()
    assert client.mail(USER)[0] == 250
    assert client.rcpt("nobody@example.net")[0] == 550
    assert client.rset()[0] == 250
    assert client.mail(USER)[0] == 250
    assert client.rcpt("bob@example.net")[0] == 250
    assert client.data(MSG)[0] == 554
    client.quit()
    client = gw.smtp()
    assert client.mail(USER)[0] == 250
    assert client.rcpt("carol@example.net")[0] == 250
    client.quit()
    assert sink.connections() == 1


def test_a_reload_to_another_smarthost_drains_the_pool(
    gateway_factory: Any, smarthost_factory: Callable[..., CaptureSmarthost]
) -> None:
    old, new = smarthost_factory(), smarthost_factory()
    gw = gateway_factory(smarthost_address=old.address)
    send(gw, "before@example.net")
    old.wait_for_messages(1)
    assert gw.app is not None
    cfg = gw.app.cfg
    servers = (dataclasses.replace(cfg.smarthost.servers[0], port=new.port),)
    gw.reload(lambda: cfg.replace(smarthost=dataclasses.replace(cfg.smarthost, servers=servers)))
    eventually(lambda: old.quits() == 1)
    send(gw, "after@example.net")
    assert [m.rcpt_tos for m in new.wait_for_messages(1)] == [["after@example.net"]]
    assert len(old.messages()) == 1


def test_shutdown_quits_pooled_connections(
    gateway_factory: Any, smarthost_factory: Callable[..., CaptureSmarthost]
) -> None:
    sink = smarthost_factory()
    gw = gateway_factory(smarthost_address=sink.address)
    send(gw)
    sink.wait_for_messages(1)
    assert sink.quits() == 0
    gw.stop()
    eventually(lambda: sink.quits() == 1)


def test_the_pool_is_seen_in_the_metrics(gateway_factory: Any, smarthost: CaptureSmarthost) -> None:
    gw = gateway_factory({"metrics": {"listen": "127.0.0.1:0"}})
    for _ in range(3):
        send(gw)
    m = scrape(gw.metrics_port)
    assert m("submitgw_smarthost_pool_idle") == 1
    assert m("submitgw_smarthost_connections_total", how="fresh") == 1
    assert m("submitgw_smarthost_connections_total", how="reused") == 2


def wire_in_pieces(pieces: list[bytes]) -> bytes:
    wire = WireForm()
    return b"".join(wire.feed(piece) for piece in pieces) + wire.end()


@given(
    st.text(alphabet="a.\r\n", max_size=80).map(str.encode),
    st.lists(st.integers(0, 80), max_size=10),
)
def test_wire_form_in_pieces_is_the_wire_form_of_the_whole(
    content: bytes, points: list[int]
) -> None:
    bounds = [0, *sorted(min(p, len(content)) for p in points), len(content)]
    pieces = [content[a:b] for a, b in itertools.pairwise(bounds)]
    assert wire_in_pieces(pieces) == wire_form(content) == reference(content)


@pytest.mark.parametrize(
    "pieces",
    [
        [b"a\r", b"\n.b"],  # CRLF cut in two, then a dot that starts a line
        [b"a\r", b".b"],  # a lone CR, then a dot at the start of the next piece
        [b"a\n", b".", b"\r", b"\n"],  # the end of DATA spelt across four pieces
        [b".\r", b"\r", b"\r\n"],
        [b"a\r"],
        [b"", b".", b""],
    ],
)
def test_cuts_at_line_ends_and_dots(pieces: list[bytes]) -> None:
    whole = b"".join(pieces)
    sent = wire_in_pieces(pieces)
    assert sent == wire_form(whole) == reference(whole)
    assert sent.count(b"\r\n.\r\n") + sent.startswith(b".\r\n") == 1
