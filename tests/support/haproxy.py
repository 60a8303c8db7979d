"""Debian's HAProxy in front of test gateways: a private instance on loopback.

Its configuration is the shipped contrib/haproxy/haproxy.cfg with only what cannot work in
a test changed: the `global` section (no chroot, no user switch, no daemon; the log on
stderr and the admin socket in the test's folder), each frontend's `bind` address and each
server's address. Balancing, PROXY headers, health checks, retries and timeouts are the
shipped ones, so the file users copy is the file the tests run.

Facts found while building this (HAProxy 2.6 on Debian 12):

* `haproxy -db` stays in the foreground and is our child; SIGTERM stops it at once.
* Listeners and the admin socket are bound before the first event loop turn, so an
  answer on the admin socket means the frontends are listening. A port taken meanwhile
  makes haproxy exit at start ("cannot bind socket"): it is started again on new ports.
* Servers count as UP from the start; `show stat` on the admin socket gives each one's state.
* A TCP health check without `check-send-proxy` still reaches the gateway as a connection
  from the balancer that closes (with a reset) before its header; with it, the gateway
  reads a v2 LOCAL header, the balancer's own connection.
"""

from __future__ import annotations

import csv
import io
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.support.smarthost import REPO_ROOT, free_port, require_tool

CONTRIB = REPO_ROOT / "contrib" / "haproxy" / "haproxy.cfg"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
BIND_ATTEMPTS = 3
SECTION = re.compile(r"(global|defaults|frontend|backend|listen|peers|resolvers)\b\s*(\S*)")

TEST_GLOBAL = """\
global
    log stderr format raw local0
    stats socket {socket} mode 600 level admin
    stats timeout 10s
"""


def require_haproxy() -> str:
    """The haproxy binary; missing, the test skips (fails in CI: scripts/test.sh installs it)."""
    return require_tool("haproxy")


def frontends(template: str) -> list[str]:
    """The names of the template's frontends, in order."""
    return [
        m.group(2)
        for m in map(SECTION.match, template.splitlines())
        if m and m.group(1) == "frontend"
    ]


def render(
    template: str,
    *,
    admin_socket: Path,
    binds: Mapping[str, str],
    servers: Mapping[tuple[str, str], str],
    check_ports: Mapping[tuple[str, str], int],
) -> str:
    """The template with the test's global section, `binds` (frontend -> "HOST:PORT"),
    `servers` ((backend, server) -> "HOST:PORT") and the health checks' `port N`
    ((backend, server) -> the instance's admin port); nothing else changes.

    Every frontend and server of the template must be mapped, and every mapping used, so a
    changed template fails here instead of testing something else than it ships.
    """
    out: list[str] = []
    section, name = "", ""
    used_binds: set[str] = set()
    used_servers: set[tuple[str, str]] = set()
    for line in template.splitlines():
        header = SECTION.match(line)
        if header:
            section, name = header.group(1), header.group(2)
            if section == "global":
                out.append(TEST_GLOBAL.format(socket=admin_socket).rstrip("\n"))
                continue
        if section == "global":
            continue
        words = line.split()
        if section == "frontend" and words[:1] == ["bind"]:
            if name not in binds or name in used_binds:
                raise ValueError(f"frontend {name}: unexpected bind line {line.strip()!r}")
            used_binds.add(name)
            line = line.replace(words[1], binds[name], 1)
        elif section == "backend" and words[:1] == ["server"]:
            key = (name, words[1])
            if key not in servers:
                raise ValueError(f"backend {name}: server {words[1]} not mapped by the test")
            used_servers.add(key)
            line = line.replace(words[2], servers[key], 1)
            if "port" in words:
                if key not in check_ports:
                    raise ValueError(f"backend {name}: no admin port for server {words[1]}")
                checked = words[words.index("port") + 1]
                line = line.replace(f" port {checked} ", f" port {check_ports[key]} ", 1)
        out.append(line)
    if used_binds != set(binds) or used_servers != set(servers):
        raise ValueError(
            f"not in the template: binds {set(binds) - used_binds}, "
            f"servers {set(servers) - used_servers}"
        )
    return "\n".join(out) + "\n"


class Haproxy:
    """A private haproxy on 127.0.0.1, run from a rendered copy of the shipped file."""

    def __init__(self, base: Path, template: Path = CONTRIB) -> None:
        self.base = base
        self.template = template
        self.config = base / "haproxy.cfg"
        self.admin_socket = base / "admin.sock"
        self.log_path = base / "haproxy.log"
        self.host = "127.0.0.1"
        # frontend name -> port, once started
        self.ports: dict[str, int] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._binary = ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(
        self,
        servers: Mapping[tuple[str, str], str],
        check_ports: Mapping[tuple[str, str], int],
    ) -> Haproxy:
        """Start in front of `servers`, health-checked on `check_ports`; returns once every
        frontend listens and every server is UP. A port taken between choosing and binding
        means new ports."""
        self._binary = require_haproxy()
        self.base.mkdir(parents=True, exist_ok=True)
        names = frontends(self.template.read_text(encoding="utf-8"))
        for attempt in range(1, BIND_ATTEMPTS + 1):
            ports = {name: free_port(self.host) for name in names}
            self._write(ports, servers, check_ports)
            if self._run():
                self.ports = ports
                self.wait_for(lambda states: all(s == "UP" for s in states.values()))
                return self
            if "cannot bind" not in self.log_text() or attempt == BIND_ATTEMPTS:
                raise RuntimeError(f"haproxy did not start:\n{self.log_text()}")
        raise AssertionError("unreachable")

    def _write(
        self,
        ports: Mapping[str, int],
        servers: Mapping[tuple[str, str], str],
        check_ports: Mapping[tuple[str, str], int],
    ) -> None:
        text = render(
            self.template.read_text(encoding="utf-8"),
            admin_socket=self.admin_socket,
            binds={name: f"{self.host}:{port}" for name, port in ports.items()},
            servers=servers,
            check_ports=check_ports,
        )
        self.config.write_text(text, encoding="utf-8")
        check = subprocess.run(
            [self._binary, "-c", "-q", "-f", str(self.config)],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refuses the rendered configuration:\n{check.stderr}")

    def _run(self) -> bool:
        """True once the admin socket answers; False if haproxy exited at start."""
        self.admin_socket.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self._binary, "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                self.command("show info")
                return True
            except OSError:
                time.sleep(POLL_INTERVAL)
        self.stop()
        raise RuntimeError(f"haproxy did not answer in {START_TIMEOUT}s:\n{self.log_text()}")

    def command(self, line: str, timeout: float = 5.0) -> str:
        """One admin socket command (`show stat`, `disable server B/S`, …) and its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.admin_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def server_states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> UP, DOWN, MAINT, … as `show stat` reports them."""
        table = self.command("show stat").lstrip("# ")
        states = {}
        for row in csv.DictReader(io.StringIO(table)):
            if row["svname"] not in ("FRONTEND", "BACKEND"):
                states[(row["pxname"], row["svname"])] = row["status"].split()[0]
        return states

    def wait_for(
        self,
        condition: Callable[[dict[tuple[str, str], str]], bool],
        timeout: float = START_TIMEOUT,
    ) -> dict[tuple[str, str], str]:
        """The server states once `condition` holds for them; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.server_states()
            if condition(states):
                return states
            if time.monotonic() >= deadline:
                raise AssertionError(f"haproxy servers stayed {states}:\n{self.log_text()}")
            time.sleep(POLL_INTERVAL)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it will not go; returns the exit status."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        return proc.returncode

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> Haproxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
