"""The capture smarthost as a pytest resource: a real SMTP server process on loopback.

Tests need a smarthost they can inspect and misconfigure at will; running the same script as the
quick start (in its own process, over a real socket) means the gateway is tested against exactly
what a newcomer sees, and a hung or crashed sink cannot take the test process down with it.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest

# The tests take free_port from here; it lives with the servers that need it.
from scripts.peers import MissingTool, find_tool
from scripts.peers import free_port as free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "capture_smarthost.py"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
LISTENING = re.compile(rb"capture-smarthost listening on (\S+):(\d+)")

# Option name -> how it becomes command-line arguments.
FLAGS = {"reject_data", "drop_after_data", "smtputf8", "verbose"}
REPEATED = {"reject_rcpt", "tempfail_rcpt"}
VALUED = {"data_delay", "tls_cert", "tls_key", "auth", "hostname", "max_size", "idle_timeout"}


def require_tool(name: str) -> str:
    """Path of an external program; a missing one skips the test locally but fails it in CI,
    where scripts/test.sh must have installed everything."""
    try:
        return find_tool(name)  # PATH, then the sbin folders
    except MissingTool as exc:
        missing = str(exc)
    if os.environ.get("CI") == "true":
        pytest.fail(missing, pytrace=False)
    pytest.skip(missing)


def require_root(what: str) -> None:
    """Skip (locally) or fail (in CI, which runs as root) a test that must start `what` as
    root."""
    if os.geteuid() == 0:
        return
    message = f"{what} must be started by root"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass(frozen=True)
class CapturedMessage:
    """One message as the smarthost received it."""

    seq: str
    envelope: dict[str, Any]
    raw: bytes

    @property
    def mail_from(self) -> str:
        return cast(str, self.envelope["mail_from"])

    @property
    def rcpt_tos(self) -> list[str]:
        return cast(list[str], self.envelope["rcpt_tos"])

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)


def behaviour_args(behaviour: dict[str, Any]) -> list[str]:
    """Translate keyword behaviours (``reject_rcpt=["bad"]``) into the script's options, refusing
    unknown ones so that a typo cannot silently produce a well-behaved sink."""
    args: list[str] = []
    for key, value in behaviour.items():
        option = "--" + key.replace("_", "-")
        if key in FLAGS:
            if value:
                args.append(option)
        elif key in REPEATED:
            items = [value] if isinstance(value, str) else list(value)
            for item in items:
                args += [option, str(item)]
        elif key in VALUED:
            if value is None:
                continue
            if key == "auth" and not isinstance(value, str):
                value = ":".join(value)
            args += [option, str(value)]
        else:
            raise TypeError(f"unknown capture smarthost behaviour: {key}")
    return args


class CaptureSmarthost:
    """Runs scripts/capture_smarthost.py and reads what it stored."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.dir = base_dir / "mail"
        self.log_path = base_dir / "smarthost.log"
        self.host = "127.0.0.1"
        self.port = 0
        self.returncode: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # Messages stored up to this sequence number are not this user's (see `SharedView`).
        self.since = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, port: int = 0, **behaviour: Any) -> CaptureSmarthost:
        """Start on `port` or one the OS picks; may be called again after stop() (same mail dir).

        Restarting on the old port plays a smarthost that restarted under the gateway.
        """
        if self.running:
            raise RuntimeError("capture smarthost already running")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [
            sys.executable,
            str(SCRIPT),
            "--listen",
            f"{self.host}:{port}",
            "--dir",
            str(self.dir),
        ]
        cmd += behaviour_args(behaviour)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self.returncode = None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log_path.read_bytes()[offset:])
            if found:
                self.port = int(found.group(2))
                return self
            if self._proc.poll() is not None:
                raise RuntimeError(f"capture smarthost exited at start:\n{self.log_text()}")
            time.sleep(POLL_INTERVAL)
        self.stop()
        raise RuntimeError(
            f"capture smarthost did not start in {START_TIMEOUT}s:\n{self.log_text()}"
        )

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it will not go; returns the exit status."""
        proc = self._proc
        if proc is None:
            return self.returncode
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        self.returncode = proc.returncode
        self._proc = None
        return self.returncode

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def connections(self) -> int:
        """Connections the sink accepted (since this view began, for a shared one)."""
        return self.log_text().count("capture-smarthost: connection accepted")

    def quits(self) -> int:
        """QUIT commands the sink received."""
        return self.log_text().count("capture-smarthost: quit from")

    def messages(self) -> list[CapturedMessage]:
        """Every stored message, oldest first; only complete ones (those with a .json)."""
        if not self.dir.is_dir():
            return []
        found = []
        for meta in sorted(self.dir.glob("*.json")):
            if meta.stem <= self.since:
                continue
            envelope = json.loads(meta.read_text(encoding="utf-8"))
            raw = meta.with_suffix(".eml").read_bytes()
            found.append(CapturedMessage(seq=meta.stem, envelope=envelope, raw=raw))
        return found

    def wait_for_messages(self, n: int, timeout: float = 10.0) -> list[CapturedMessage]:
        """All stored messages once there are at least ``n``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= n:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"expected {n} message(s) at the capture smarthost within {timeout}s, "
                    f"got {len(found)}; its log:\n{self.log_text()}"
                )
            time.sleep(POLL_INTERVAL)

    def __enter__(self) -> CaptureSmarthost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SharedView(CaptureSmarthost):
    """One test's view of the sink shared by the whole run: only what arrived since.

    Starting a sink per test costs a Python start-up; most tests only need one that
    accepts. A test that stops, restarts or bends its sink takes its own from
    `smarthost_factory`.
    """

    def __init__(self, sink: CaptureSmarthost) -> None:
        super().__init__(sink.base_dir)
        self.sink = sink
        self.port = sink.port
        stored = sorted(sink.dir.glob("*.json")) if sink.dir.is_dir() else []
        self.since = stored[-1].stem if stored else ""
        self._log_offset = sink.log_path.stat().st_size if sink.log_path.exists() else 0

    @property
    def running(self) -> bool:
        return self.sink.running

    def start(self, port: int = 0, **behaviour: Any) -> CaptureSmarthost:
        raise RuntimeError("the shared smarthost cannot be restarted; use smarthost_factory")

    def stop(self) -> int | None:
        raise RuntimeError("the shared smarthost cannot be stopped; use smarthost_factory")

    def log_text(self) -> str:
        with self.sink.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return log.read().decode("utf-8", errors="replace")

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture(scope="session")
def shared_smarthost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaptureSmarthost]:
    """One accepting capture smarthost for the whole run."""
    with CaptureSmarthost(tmp_path_factory.mktemp("smarthost")) as sink:
        yield sink.start()


@pytest.fixture
def smarthost(shared_smarthost: CaptureSmarthost) -> CaptureSmarthost:
    """A capture smarthost that accepts everything; sees only this test's messages."""
    if not shared_smarthost.running:
        shared_smarthost.start(port=shared_smarthost.port)
    return SharedView(shared_smarthost)


@pytest.fixture
def smarthost_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., CaptureSmarthost]]:
    """Call with behaviours (``reject_rcpt=["bad"]``, ``tls_cert=...``) for a started sink."""
    started: list[CaptureSmarthost] = []

    def make(**behaviour: Any) -> CaptureSmarthost:
        sink = CaptureSmarthost(tmp_path_factory.mktemp("smarthost"))
        started.append(sink)
        return sink.start(**behaviour)

    yield make
    for sink in started:
        sink.stop()
