"""Readiness for systemd's Type=notify, over a real unix datagram socket.

Rules proven here: `serve` sends READY=1 only once every listener is bound (its STATUS
names the ports the kernel gave), RELOADING=1 then READY=1 around a SIGHUP's reload,
STOPPING=1 on SIGTERM; without $NOTIFY_SOCKET nothing
is sent, and a manager that cannot be reached never stops the gateway.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from submitgw.services import notify as notify_mod
from submitgw.services.notify import notify, socket_address


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A stand-in for systemd's notification socket, bound at a path."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    yield sock, path
    sock.close()


def fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


def test_sends_the_state_to_the_socket_path(manager: tuple[socket.socket, str]) -> None:
    sock, path = manager

    assert notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": path})

    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "ok"}


def test_abstract_socket_name() -> None:
    name = f"submitgw-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)

        assert notify("READY=1", {"NOTIFY_SOCKET": f"@{name}"})

        assert sock.recv(4096) == b"READY=1"


def test_without_a_manager_nothing_is_sent() -> None:
    assert socket_address({}) is None
    assert socket_address({"NOTIFY_SOCKET": ""}) is None
    assert not notify("READY=1", {})


def test_an_unreachable_manager_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=notify_mod.__name__):
        sent = notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})

    assert not sent
    assert "cannot notify the service manager (READY=1)" in caplog.text


def test_serve_is_ready_after_binding_and_says_stopping(
    gateway_factory: Any,
    manager: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sock, path = manager
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    gw = gateway_factory(process=True)
    ready = fields(sock.recv(4096))

    assert ready["READY"] == "1"
    # The ports port 0 became: known only once the sockets are bound.
    assert f"submission 127.0.0.1:{gw.port}" in ready["STATUS"]
    assert f"submissions 127.0.0.1:{gw.tls_port}" in ready["STATUS"]
    socket.create_connection(("127.0.0.1", gw.port), timeout=5).close()

    # `systemctl reload`: systemd hears that it started, and that it is over.
    gw.proc.send_signal(signal.SIGHUP)
    reloading = fields(sock.recv(4096))
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert fields(sock.recv(4096)) == ready
    assert gw.log_events("reload")[-1]["result"] == "ok"

    assert gw.stop(signal.SIGTERM) == 0
    assert sock.recv(4096) == b"STOPPING=1"
