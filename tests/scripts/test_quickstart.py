"""scripts/quickstart.sh's ports: changed with SUBMITGW_QS_*_PORT, checked before anything starts.

Rules proven here: a port that is taken, not a number or given twice stops the script
at once (before it installs or starts anything) with one line naming the variable to set.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.smarthost import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "quickstart.sh"
VARIABLES = (
    "SUBMITGW_QS_SMTP_PORT",
    "SUBMITGW_QS_TLS_PORT",
    "SUBMITGW_QS_WEB_PORT",
    "SUBMITGW_QS_SINK_PORT",
)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def quickstart(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The script with `env`; every port it does not name is a free one, so that a
    quick start already running on the default ports changes no outcome here."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SUBMITGW_QS_")}
    ports: set[int] = set()
    while len(ports) < len(VARIABLES):
        ports.add(free_port())
    free = {variable: str(port) for variable, port in zip(VARIABLES, ports, strict=True)}
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env={**base, **free, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""  # nothing was set up or started
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ERROR: ")
    return lines[0]


@pytest.mark.parametrize("variable", VARIABLES)
def test_a_taken_port_names_the_variable_to_change(variable: str, taken_port: int) -> None:
    line = error_line(quickstart({variable: str(taken_port)}))

    assert f"127.0.0.1:{taken_port} is in use" in line
    assert f"{variable}=" in line


@pytest.mark.parametrize("value", ["abc", "0", "70000", ""])
def test_a_port_that_is_no_number_is_refused(value: str) -> None:
    line = error_line(quickstart({"SUBMITGW_QS_WEB_PORT": value or " "}))

    assert "SUBMITGW_QS_WEB_PORT" in line and "not a port number" in line


def test_the_same_port_twice_is_refused() -> None:
    line = error_line(quickstart({"SUBMITGW_QS_SMTP_PORT": "3587", "SUBMITGW_QS_TLS_PORT": "3587"}))

    assert "3587 is given twice" in line and "SUBMITGW_QS_TLS_PORT" in line


def test_the_quick_start_relays_a_message_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The first of README's two commands, run as a new user would (in a folder of its
    own and on free ports): a message sent as the demo user lands in the mail folder."""
    qs_dir = tmp_path / "qs"
    ports = {variable: free_port() for variable in VARIABLES}
    while len(set(ports.values())) < len(ports):
        ports = {variable: free_port() for variable in VARIABLES}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SUBMITGW_QS_")},
        **{variable: str(port) for variable, port in ports.items()},
        "SUBMITGW_QS_DIR": str(qs_dir),
    }
    log = tmp_path / "quickstart.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(SCRIPT)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while log.read_text(errors="replace").count('"event": "listening"') < 3:
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        password = (qs_dir / "demo-password.txt").read_text().strip()
        context = ssl.create_default_context(cafile=str(qs_dir / "setup" / "ca" / "ca.crt"))
        with smtplib.SMTP("127.0.0.1", ports["SUBMITGW_QS_SMTP_PORT"], timeout=20) as client:
            client.starttls(context=context)
            client.login("demo@example.org", password)
            client.sendmail(
                "demo@example.org",
                ["someone@example.net"],
                b"Subject: quick start\r\n\r\nHello from the quick start.\r\n",
            )
        while not list((qs_dir / "mail").glob("*.json")):
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)
        (stored,) = (qs_dir / "mail").glob("*.eml")
        assert b"Hello from the quick start." in stored.read_bytes()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        status = proc.wait(30)
    # Ctrl-C reaches the script and its children at once: the script either runs its
    # trap (130) or sees the gateway end cleanly first (0); both stop everything.
    assert status in (0, 130), log.read_text(errors="replace")
    assert "stopped" in log.read_text(errors="replace")
