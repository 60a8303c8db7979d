"""Real gateways for tests: `submitgw init` once per run, a gateway per test.

Tests talk to it over loopback sockets with real TLS, exactly as a mail client would. By
default the gateway runs in this process (`submitgw.app.gateway.App` on its own event loop in a
thread), which saves a Python start-up per test; `gateway_factory(process=True)` runs
`submitgw serve` as a process where signals, exit codes, memory or CPU figures matter.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import secrets
import shutil
import signal
import smtplib
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import pki
from submitgw import config as config_mod
from submitgw.app.gateway import App
from submitgw.cli.serve import apply_flags
from submitgw.config import Config
from submitgw.services.audit import JsonFormatter, TextFormatter
from submitgw.store import CertificateStore, Database
from tests.support import cli
from tests.support.smarthost import CaptureSmarthost

SUBMITGW = cli.SUBMITGW
USER = "alice@example.org"
PASSWORD = "correct horse battery staple"
# Cheap argon2 for speed; the production defaults are exercised by the benchmark.
TEST_AUTH = {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1}
# Failed logins slow the next attempt down by 0.5 s, doubling, by default: tests of those
# delays set their own.
QUIET_AUTH = {"auth_delay": 0.01, "auth_max_delay": 0.02}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def set_options(text: str, options: dict[str, dict[str, Any]]) -> str:
    """Change `key = value` lines of the generated config, section by section."""
    lines = text.splitlines()
    section = ""
    pending = {s: dict(kv) for s, kv in options.items()}
    for i, line in enumerate(lines):
        header = re.fullmatch(r"\[([a-z_.]+)\]", line.strip())
        if header:
            section = header.group(1)
            continue
        m = re.match(r"([a-z_0-9]+) = ", line)
        if m and m.group(1) in pending.get(section, {}):
            lines[i] = f"{m.group(1)} = {toml_value(pending[section].pop(m.group(1)))}"
    missing = {s: kv for s, kv in pending.items() if kv}
    if missing:
        raise KeyError(f"options not in the generated config: {missing}")
    return "\n".join(lines) + "\n"


def run_cli(
    config: Path | None, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A `submitgw` command on this setup, run in this process (see `tests.support.cli`)."""
    return cli.run(*(["--config", str(config)] if config is not None else []), *args, input=input)


@dataclass(frozen=True)
class ClientCert:
    cert_path: Path
    key_path: Path
    serial: str
    fingerprint: str

    @classmethod
    def write(cls, folder: Path, name: str, cert: x509.Certificate, key: Any) -> ClientCert:
        folder.mkdir(exist_ok=True)
        stem = f"{name}-{secrets.token_hex(4)}"
        cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return cls(
            cert_path, key_path, pki.format_serial(cert.serial_number), pki.fingerprint_sha256(cert)
        )

    def context(self, ca_file: Path) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx


class _Gateway:
    """What every test gateway offers: its files, its users and certificates, its clients."""

    def __init__(self, setup: Path, smarthost: str) -> None:
        self.dir = setup
        self.config = setup / "submitgw.toml"
        self.ca_file = setup / "ca" / "ca.crt"
        self.smarthost = smarthost
        # 0 until started: the listeners bind port 0 and the gateway reports what it got.
        self.port = 0
        self.tls_port = 0
        self.web_port = 0
        # The admin port ([metrics] listen), 0 when off.
        self.metrics_port = 0
        # True: `start` also runs the self-service site.
        self.selfservice = False
        self.log_path = setup / "gateway.log"

    def configure(self, options: dict[str, dict[str, Any]]) -> None:
        self.config.write_text(set_options(self.config.read_text(), options))

    def add_user(self, email: str = USER, password: str = PASSWORD) -> None:
        result = run_cli(self.config, "user", "add", email, "--password-stdin", input=password)
        assert result.returncode == 0, result.stderr

    def issue_cert(self, email: str = USER, *, days: int = 365) -> ClientCert:
        """A client certificate from this setup's CA, recorded in its inventory."""
        ca = pki.CA.load(self.dir / "ca" / "ca.crt", self.dir / "ca" / "ca.key")
        issued = ca.issue_client_cert(email, days=days)
        db = Database(config_mod.load(self.config).database.url)
        try:
            CertificateStore(db).add(email, issued)
        finally:
            db.dispose()
        return ClientCert.write(self.dir / "client-certs", email, issued.cert, issued.key)

    def serve_args(self, *extra: str) -> list[str]:
        """`submitgw serve` flags: ports the kernel picks, this test's smarthost."""
        site = ["--listen-selfservice", f"127.0.0.1:{self.web_port}"] if self.selfservice else []
        return [
            "--listen",
            f"127.0.0.1:{self.port}",
            "--listen-tls",
            f"127.0.0.1:{self.tls_port}",
            "--smarthost",
            self.smarthost,
            *site,
            *extra,
        ]

    def _take_ports(self, listening: list[dict[str, Any]]) -> None:
        ports = {event["listener"]: int(event["port"]) for event in listening}
        self.port = ports.get("submission", self.port)
        self.tls_port = ports.get("submissions", self.tls_port)
        self.web_port = ports.get("selfservice", self.web_port)
        self.metrics_port = ports.get("metrics", self.metrics_port)

    def start(self, *extra: str) -> None:
        raise NotImplementedError

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, kind: str) -> list[dict[str, Any]]:
        events = []
        text = self.log_text()
        # A running gateway may be half-way through writing its last line.
        lines = text.split("\n")[:-1]
        for line in lines:
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == kind:
                    events.append(entry)
        return events

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def web_url(self) -> str:
        return f"https://127.0.0.1:{self.web_port}/"

    def smtp(
        self, *, login: bool = True, timeout: float = 10, context: ssl.SSLContext | None = None
    ) -> smtplib.SMTP:
        """A client on the STARTTLS port, after STARTTLS and (by default) AUTH."""
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)
        client.starttls(context=context or self.ssl_context())
        client.ehlo("client.test")
        if login:
            client.login(USER, PASSWORD)
        return client

    def smtps(
        self, *, login: bool = True, timeout: float = 10, context: ssl.SSLContext | None = None
    ) -> smtplib.SMTP_SSL:
        client = smtplib.SMTP_SSL(
            "127.0.0.1", self.tls_port, context=context or self.ssl_context(), timeout=timeout
        )
        client.ehlo("client.test")
        if login:
            client.login(USER, PASSWORD)
        return client


class GatewayProcess(_Gateway):
    """`submitgw serve` as its own process: for signals, exit codes, memory and CPU figures."""

    def __init__(self, setup: Path, smarthost: str) -> None:
        super().__init__(setup, smarthost)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        args = [*SUBMITGW, "--config", str(self.config), "serve", *self.serve_args(*extra)]
        listeners = 3 if self.selfservice else 2
        if config_mod.load(self.config).metrics.listen is not None:
            listeners += 1
        offset = len(self._listening())
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log_text()}")
            listening = self._listening()[offset:]
            if len(listening) >= listeners:
                self._take_ports(listening)
                return
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start:\n{self.log_text()}")

    def _listening(self) -> list[dict[str, Any]]:
        """The `listening` events so far, whichever log format the config chose."""
        found = self.log_events("listening")
        for line in self.log_text().splitlines():
            if not line.startswith("{") and " event=listening" in line:
                found.append(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line)))
        return found

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)


class InProcessGateway(_Gateway):
    """The same gateway (`submitgw.app.gateway.App`) on an event loop in a test thread.

    Real sockets, TLS and smarthost as with the process, without a Python start-up per
    test. Log lines emitted on behalf of this gateway go to its own log file.
    """

    def __init__(self, setup: Path, smarthost: str) -> None:
        super().__init__(setup, smarthost)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._handler: logging.Handler | None = None
        self._grace: float | None = None
        self.app: App | None = None

    def _config(self, extra: tuple[str, ...]) -> Config:
        options = dict.fromkeys(("listen", "listen_tls", "listen_selfservice"))
        smarthosts: list[str] = []
        args = self.serve_args(*extra)
        flags = {
            "--listen": "listen",
            "--listen-tls": "listen_tls",
            "--listen-selfservice": "listen_selfservice",
        }
        for flag, value in zip(args[::2], args[1::2], strict=True):
            if flag == "--smarthost":
                smarthosts.append(value)
            elif flag in flags:
                options[flags[flag]] = value
            else:
                raise ValueError(f"in-process gateway: unknown serve flag {flag}")
        return apply_flags(
            config_mod.load(self.config),
            options["listen"],
            options["listen_tls"],
            tuple(smarthosts),
            options["listen_selfservice"],
        )

    def start(self, *extra: str) -> None:
        cfg = self._config(extra)
        self._handler = _route_logs(self, cfg)
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(
            target=self._run, args=(cfg,), name=f"gateway-{self.dir.name}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError(f"gateway did not start:\n{self.log_text()}")
        if self._failure is not None:
            self._thread.join(5)
            _unroute_logs(self._handler)
            raise RuntimeError(f"gateway could not start: {self._failure!r}\n{self.log_text()}")
        assert self.app is not None
        bound = self.app.bound
        self.port = bound["submission"].port if "submission" in bound else 0
        self.tls_port = bound["submissions"].port if "submissions" in bound else 0
        self.web_port = bound["selfservice"].port if "selfservice" in bound else 0
        self.metrics_port = bound["metrics"].port if "metrics" in bound else 0

    def _run(self, cfg: Config) -> None:
        _OWNER.set(self)
        try:
            asyncio.run(self._main(cfg))
        except BaseException as exc:  # reported to the test thread, not lost in this one
            self._failure = self._failure or exc
        finally:
            self._ready.set()

    async def _main(self, cfg: Config) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        db = Database(cfg.database.url)
        try:
            db.check_current()
            self.app = App(cfg, db)
            try:
                await self.app.start()
            except BaseException:
                self.app.services.close()
                raise
            self._ready.set()
            await self._stop.wait()
            await self.app.stop(self._grace)
        finally:
            db.dispose()

    def reload(self, load: Callable[[], Config]) -> None:
        """Apply the configuration `load` gives, as SIGHUP applies the file's."""
        assert self._loop is not None and self.app is not None
        asyncio.run_coroutine_threadsafe(self.app.reload(load), self._loop).result(20)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        """Stops as SIGTERM would; other signals have no in-process meaning."""
        if sig != signal.SIGTERM:
            raise ValueError("signals other than SIGTERM need gateway_factory(process=True)")
        return self._halt(None, timeout)

    def _halt(self, grace: float | None, timeout: float) -> int:
        self._grace = grace
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or not thread.is_alive() or loop is None or stop is None:
            return 0
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"gateway did not stop in {timeout}s:\n{self.log_text()}")
        _unroute_logs(self._handler)
        self._handler = None
        if self._failure is not None:
            raise RuntimeError(f"gateway failed: {self._failure!r}\n{self.log_text()}")
        return 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def kill(self) -> None:
        """The end of a test: sessions still open are cut at once, like SIGKILL would."""
        self._halt(0.0, 10)


_OWNER: contextvars.ContextVar[InProcessGateway | None] = contextvars.ContextVar(
    "test_gateway", default=None
)
_ROUTES: dict[int, InProcessGateway] = {}


class _GatewayLog(logging.Handler):
    """Writes the records of one in-process gateway to its log file, as `serve` would.

    A record belongs to the gateway whose loop emitted it; one from a worker thread (which
    does not carry the loop's context) belongs to the only gateway running, if there is one.
    """

    def __init__(self, gateway: InProcessGateway, formatter: logging.Formatter) -> None:
        super().__init__(logging.INFO)
        self.gateway = gateway
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        owner = _OWNER.get()
        if owner is None and len(_ROUTES) == 1:
            owner = next(iter(_ROUTES.values()))
        if owner is not self.gateway:
            return
        try:
            line = self.format(record)
            with self.gateway.log_path.open("a", encoding="utf-8") as log:
                log.write(line + "\n")
        except Exception:
            self.handleError(record)


def _route_logs(gateway: InProcessGateway, cfg: Config) -> logging.Handler:
    formatter = JsonFormatter() if cfg.log.format == "json" else TextFormatter()
    handler = _GatewayLog(gateway, formatter)
    logger = logging.getLogger("submitgw")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    # aiosmtpd logs every command line (AUTH payloads included); `serve` silences it too.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    _ROUTES[id(handler)] = gateway
    return handler


def _unroute_logs(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("submitgw").removeHandler(handler)
        _ROUTES.pop(id(handler), None)


@pytest.fixture(scope="session")
def gateway_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `submitgw init` per test run; each test gets a copy."""
    target = tmp_path_factory.mktemp("template") / "setup"
    result = run_cli(None, "init", "--dir", str(target), "--hostname", "gw.test")
    assert result.returncode == 0, result.stderr
    config = target / "submitgw.toml"
    # One process, as most tests want; tests of `serve --workers` say --workers. A test
    # that takes its PostgreSQL database away before the gateway stops would otherwise
    # keep the trail's last write retrying for the full 10 s of every stop.
    options = {
        "auth": TEST_AUTH,
        "server": {"workers": 1},
        "audit": {"shutdown_timeout": 2.0},
        "limits": QUIET_AUTH,
    }
    config.write_text(set_options(config.read_text(), options))
    return target


# Fixtures whose teardown takes a database away (`tests.support.postgres`).
DATABASE_FIXTURES = ("pg_url", "db_url")


@pytest.fixture
def gateway_factory(
    gateway_template: Path,
    tmp_path: Path,
    smarthost: CaptureSmarthost,
    request: pytest.FixtureRequest,
) -> Iterator[Any]:
    # A database the test asks for is set up first, so it is dropped after the gateways
    # stop, whatever the order of the test's arguments: dropped under a running gateway,
    # its trail would retry the last write for the whole [audit] shutdown_timeout.
    for name in DATABASE_FIXTURES:
        if name in request.fixturenames:
            request.getfixturevalue(name)
    started: list[_Gateway] = []

    def make(
        options: dict[str, dict[str, Any]] | None = None,
        *,
        smarthost_address: str | None = None,
        users: bool = True,
        start: bool = True,
        name: str = "gw",
        selfservice: bool = False,
        process: bool = False,
    ) -> Any:
        setup = tmp_path / name
        shutil.copytree(gateway_template, setup)
        kind = GatewayProcess if process else InProcessGateway
        gw = kind(setup, smarthost_address or smarthost.address)
        gw.selfservice = selfservice
        if options:
            gw.configure(options)
        if users:
            gw.add_user()
        started.append(gw)
        if start:
            gw.start()
        return gw

    yield make
    for gw in started:
        gw.kill()


@pytest.fixture
def gateway(gateway_factory: Any) -> InProcessGateway:
    return cast(InProcessGateway, gateway_factory())
