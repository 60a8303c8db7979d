"""A real gateway process for tests: `submitgw init` once per run, `submitgw serve` per test.

Tests talk to it over loopback sockets with real TLS, exactly as a mail client would.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import pki
from submitgw import config as config_mod
from submitgw.store import CertificateStore, Database
from tests.support.smarthost import CaptureSmarthost, free_port

SUBMITGW = [sys.executable, "-m", "submitgw"]
USER = "alice@example.org"
PASSWORD = "correct horse battery staple"
# Cheap argon2 for speed; the production defaults are exercised by the benchmark.
TEST_AUTH = {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1}


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
) -> subprocess.CompletedProcess:
    cmd = [*SUBMITGW]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run(
        [*cmd, *args], input=input, capture_output=True, text=True, timeout=60, check=False
    )


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


class GatewayProcess:
    def __init__(self, setup: Path, smarthost: str) -> None:
        self.dir = setup
        self.config = setup / "submitgw.toml"
        self.ca_file = setup / "ca" / "ca.crt"
        self.smarthost = smarthost
        self.port = free_port()
        self.tls_port = free_port()
        self.web_port = free_port()
        # True: `start` also runs the self-service site on web_port.
        self.selfservice = False
        self.log_path = setup / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None

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

    def start(self, *extra: str) -> None:
        args = [
            *SUBMITGW,
            "--config",
            str(self.config),
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--listen-tls",
            f"127.0.0.1:{self.tls_port}",
            "--smarthost",
            self.smarthost,
            *(["--listen-selfservice", f"127.0.0.1:{self.web_port}"] if self.selfservice else []),
            *extra,
        ]
        listeners = 3 if self.selfservice else 2
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log_text()}")
            if self.log_text().count('"event": "listening"') >= listeners:
                return
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start:\n{self.log_text()}")

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

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, kind: str) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
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


@pytest.fixture(scope="session")
def gateway_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `submitgw init` per test run; each test gets a copy."""
    target = tmp_path_factory.mktemp("template") / "setup"
    result = run_cli(None, "init", "--dir", str(target), "--hostname", "gw.test")
    assert result.returncode == 0, result.stderr
    config = target / "submitgw.toml"
    config.write_text(set_options(config.read_text(), {"auth": TEST_AUTH}))
    return target


@pytest.fixture
def gateway_factory(
    gateway_template: Path, tmp_path: Path, smarthost: CaptureSmarthost
) -> Iterator[Any]:
    started: list[GatewayProcess] = []

    def make(
        options: dict[str, dict[str, Any]] | None = None,
        *,
        smarthost_address: str | None = None,
        users: bool = True,
        start: bool = True,
        name: str = "gw",
        selfservice: bool = False,
    ) -> GatewayProcess:
        setup = tmp_path / name
        shutil.copytree(gateway_template, setup)
        gw = GatewayProcess(setup, smarthost_address or smarthost.address)
        gw.selfservice = selfservice
        if options:
            gw.configure(options)
        if users:
            gw.add_user()
        if start:
            gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait(5)


@pytest.fixture
def gateway(gateway_factory: Any) -> GatewayProcess:
    return gateway_factory()
