#!/usr/bin/env python3
"""Benchmark: messages per second through a real gateway process, per connection and batched.

Starts its own capture smarthost and `submitgw serve` on free loopback ports in a temporary
folder (`submitgw init` + `user add`), then drives them with an asyncio SMTP client:

* per-connection: every message on a new connection (connect, EHLO, STARTTLS, EHLO,
  AUTH PLAIN, MAIL, RCPT, DATA, QUIT), as a mail client does;
* batched: --batch-size messages per connection, STARTTLS and AUTH once.

Both use the submission listener (STARTTLS); the implicit-TLS one is not measured. With
--certificate every session presents a client certificate the gateway's CA issued
(`submitgw pki issue`) and logs in with AUTH EXTERNAL, as a user of policy "certificate".

Every message must get its 250 and the smarthost must have stored exactly the messages that
got one (checked by a per-message header), else the run is reported with errors. Prints each
run, the median msgs/s per scenario, the batched/per-connection ratio, and the gateway's peak
RSS and CPU time per message. Argon2 uses the production defaults unless --cheap-argon2 is
given (time_cost=1, 8 MiB, parallelism=1: isolates the protocol and TLS cost).

--gateway-src PATH runs the gateway (its CLI and `serve`) from another source tree, with
PYTHONPATH=PATH and this interpreter. --compare OLD_SRC runs two builds side by side, each with
its own setup and smarthost, alternating new, old, new, old, ... so that load from elsewhere on
the machine falls on both; it reports each build's medians and the ratios new/old.

--peer (root only) compares the gateway with reference servers (scripts/peers.py), per kind of
traffic: mail-client (a message per connection, STARTTLS + AUTH PLAIN) and persistent
(--batch-size messages per connection) against Postfix + Dovecot (the same password as an
{ARGON2ID} hash with the gateway's argon2 parameters), certificate (a message per connection,
AUTH EXTERNAL) against a bare aiosmtpd that checks nothing and keeps nothing. Postfix's
smtp-sink is the smarthost of the gateway and of Postfix; runs alternate submitgw, reference,
submitgw, ..., and the report gives each side's medians and the ratio submitgw/reference.

Every run stops after --messages or --max-seconds, whichever comes first. This is not a test:
it prints figures; the exit status is 1 when a run had errors or the gateway stopped badly.
Run it with the project's venv: `.venv/bin/python scripts/bench.py [--cheap-argon2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import argon2
import peers  # scripts/peers.py: this folder is on sys.path when a script here runs

REPO_ROOT = Path(__file__).resolve().parents[1]
SINK_SCRIPT = REPO_ROOT / "scripts" / "capture_smarthost.py"
HOST = "127.0.0.1"
TLS_NAME = "localhost"  # in the certificate `submitgw init` issues
USER = "bench@example.org"
RECIPIENT = "sink@example.net"
CLIENT_NAME = "bench.client.test"
CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "argon2_parallelism": 1}
SCENARIOS = ("per-connection", "batched")
BUILDS = ("new", "old")  # with --compare: this tree (or --gateway-src) and OLD_SRC
DEFAULT_MESSAGES = {"per-connection": 200, "batched": 2000}
START_TIMEOUT = 20.0
STOP_TIMEOUT = 45.0  # the gateway's shutdown_grace (30 s) plus margin
CANCEL_MARGIN = 5.0  # a run is cancelled this long after --max-seconds
MAX_ERRORS_SHOWN = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_HEADER = re.compile(rb"^X-Bench: (\S+) (\d+)\r?$", re.MULTILINE)
NO_SINK = "none (discards)"  # the check of a server that keeps nothing


class SmtpFailure(Exception):
    """An unexpected reply or a broken connection, for one message."""


# --- processes --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status, such as VmHWM (peak RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def set_toml_keys(text: str, section: str, values: dict[str, Any]) -> str:
    """Replace `key = value` lines of one section of the generated config."""
    out, current, left = [], "", dict(values)
    for line in text.splitlines():
        header = re.fullmatch(r"\s*\[([A-Za-z0-9_.]+)\]\s*", line)
        if header:
            current = header.group(1)
        else:
            key = line.split("=", 1)[0].strip()
            if current == section and "=" in line and key in left:
                line = f"{key} = {json.dumps(left.pop(key))}"
        out.append(line)
    if left:
        raise KeyError(f"[{section}] has no key(s) {sorted(left)} in the generated config")
    return "\n".join(out) + "\n"


def gateway_env(src: Path) -> dict[str, str]:
    """The environment that makes `python -P -m submitgw` the build in `src`: PYTHONPATH comes
    before the venv's editable install, whichever tree that points at. (Without -P, `-m`
    would put the current folder first, and from inside a checkout run that one.)"""
    return {**os.environ, "PYTHONPATH": str(src)}


def check_source(src: Path) -> None:
    """Refuse to measure a build other than the one asked for."""
    result = subprocess.run(
        [sys.executable, "-P", "-c", "import submitgw; print(submitgw.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=gateway_env(src),
    )
    found = Path(result.stdout.strip() or "?").resolve()
    if not found.is_relative_to(src.resolve()):
        raise RuntimeError(f"submitgw imports from {found}, not from {src}:\n{result.stderr}")


def revision(src: Path) -> str:
    """`git describe` of a source tree, for the report; "?" outside git."""
    result = subprocess.run(
        ["git", "-C", str(src), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip() or "?"


def run_cli(*args: str, stdin: str | None = None, src: Path = REPO_ROOT) -> str:
    cmd = [sys.executable, "-P", "-m", "submitgw", *args]
    result = subprocess.run(
        cmd,
        input=stdin or "",  # never the terminal: a prompt would hang the bench
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=gateway_env(src),
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


@dataclass
class Sink:
    """The capture smarthost, on a port it picks itself."""

    directory: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, str(SINK_SCRIPT), "--listen", f"{HOST}:0", "--dir"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*args, str(self.directory)],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        assert self.proc.stdout is not None
        # The sink prints one line once it listens; a dead sink closes stdout (EOF).
        line = self.proc.stdout.readline().decode(errors="replace")
        match = re.search(r"listening on \S+:(\d+)", line)
        if not match:
            raise RuntimeError(f"capture smarthost did not start:\n{self.log_text()}")
        self.port = int(match.group(1))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def take_messages(self) -> list[bytes]:
        """Every message stored so far (empty for a record without its message); the files
        are deleted."""
        messages = []
        for meta in self.directory.glob("*.json"):
            eml = meta.with_suffix(".eml")
            messages.append(eml.read_bytes() if eml.exists() else b"")
            meta.unlink()
            eml.unlink(missing_ok=True)
        return messages

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@dataclass
class Gateway:
    setup: Path
    smarthost: str
    log_path: Path
    src: Path = REPO_ROOT  # the source tree whose `submitgw serve` runs
    workers: int = 1  # `serve --workers`; 1 passes nothing, for older trees
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    tls_port: int = 0

    @property
    def config(self) -> Path:
        return self.setup / "submitgw.toml"

    @property
    def ca_file(self) -> Path:
        return self.setup / "ca" / "ca.crt"

    def start(self, attempts: int = 3) -> None:
        """Start on two free ports; another attempt if a port was taken in between."""
        for attempt in range(1, attempts + 1):
            self.port, self.tls_port = peers.free_port(), peers.free_port()
            args = [sys.executable, "-P", "-m", "submitgw", "--config", str(self.config)]
            args += ["serve"] + (["--workers", str(self.workers)] if self.workers != 1 else [])
            args += ["--listen", f"{HOST}:{self.port}", "--listen-tls", f"{HOST}:{self.tls_port}"]
            args += ["--smarthost", self.smarthost]
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    args,
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                    env=gateway_env(self.src),
                )
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.log_text()[offset:].count('"event": "listening"') >= 2:
                    return
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            if attempt == attempts or "address already in use" not in self.log_text()[offset:]:
                raise RuntimeError(f"gateway did not start:\n{self.log_text()[offset:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit code (0 is a clean stop), None if never started."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return -9
        return self.proc.returncode

    def log_problems(self) -> dict[str, int]:
        """Warning and error log lines of the gateway, counted by message."""
        counts: dict[str, int] = {}
        for line in self.log_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                key = f"(not JSON) {line[:120]}"
            else:
                if entry.get("level") not in {"warning", "error", "critical"}:
                    continue
                key = f"{entry['level']}: {entry.get('msg') or entry.get('event')}"[:160]
            counts[key] = counts.get(key, 0) + 1
        return counts


# --- the SMTP client ----------------------------------------------------------------------


class Client:
    """A minimal SMTP client on asyncio streams: one command, one reply, no pipelining."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    @classmethod
    async def connect(cls, port: int, timeout: float) -> Client:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        client = cls(reader, writer, timeout)
        await client.expect(220, "greeting")
        return client

    async def expect(self, code: int, what: str) -> None:
        lines: list[bytes] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not line:
                raise SmtpFailure(f"{what}: connection closed after {lines!r}")
            lines.append(line)
            if line[3:4] != b"-":
                break
        if not lines[-1][:3].isdigit() or int(lines[-1][:3]) != code:
            text = b" | ".join(x.rstrip() for x in lines).decode(errors="replace")
            raise SmtpFailure(f"{what}: {text[:200]}")

    async def command(self, line: bytes, code: int) -> None:
        self.writer.write(line + b"\r\n")
        await self.expect(code, line.split(b" ", 1)[0].decode(errors="replace"))

    async def login(self, tls: ssl.SSLContext, password: str | None) -> None:
        """STARTTLS, then AUTH PLAIN with `password`, or with None AUTH EXTERNAL: the client
        certificate `tls` presents is the credential."""
        await self.command(b"EHLO " + CLIENT_NAME.encode(), 250)
        await self.command(b"STARTTLS", 220)
        await asyncio.wait_for(self.writer.start_tls(tls, server_hostname=TLS_NAME), self.timeout)
        await self.command(b"EHLO " + CLIENT_NAME.encode(), 250)
        if password is None:
            await self.command(b"AUTH EXTERNAL =", 235)
            return
        token = base64.b64encode(b"\0" + USER.encode() + b"\0" + password.encode())
        await self.command(b"AUTH PLAIN " + token, 235)

    async def send(self, payload: bytes) -> None:
        """One transaction; `payload` is dot-stuffed and ends with CRLF.CRLF."""
        await self.command(f"MAIL FROM:<{USER}> SIZE={len(payload)}".encode(), 250)
        await self.command(f"RCPT TO:<{RECIPIENT}>".encode(), 250)
        await self.command(b"DATA", 354)
        self.writer.write(payload)
        await self.expect(250, "end of DATA")

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            await self.command(b"QUIT", 221)
        self.close()

    def close(self) -> None:
        """Drop the connection at once (also when cancelled): a session left open in the middle
        of a transaction would hold up the gateway's graceful stop for its whole grace period."""
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


def make_body(size: int) -> bytes:
    """Printable body lines; no line starts with a dot, so no stuffing is needed."""
    line = (b"The quick brown fox jumps over the lazy dog 0123456789 " * 2)[:76] + b"\r\n"
    return (line * (size // len(line) + 1))[: max(size, 2)].rstrip(b"\r\n") + b"\r\n"


def make_payload(run_id: str, index: int, body: bytes, now: str) -> bytes:
    headers = (
        f"From: Bench <{USER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench {run_id} #{index}\r\n"
        f"Date: {now}\r\nMessage-ID: <{run_id}.{index}@bench.test>\r\n"
        f"X-Bench: {run_id} {index}\r\n\r\n"
    ).encode()
    return headers + body + b".\r\n"


# --- one run --------------------------------------------------------------------------------


@dataclass
class RunResult:
    scenario: str
    run: int
    planned: int
    build: str = "new"
    ok: int = 0
    failed: int = 0
    not_sent: int = 0
    connections: int = 0
    seconds: float = 0.0
    msgs_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    gateway_cpu_ms_per_msg: float = 0.0
    sink_cpu_ms_per_msg: float = 0.0
    client_cpu_ms_per_msg: float = 0.0
    gateway_cpu_s: float = 0.0
    gateway_peak_rss_kib: int = 0
    sink_stored: int = 0
    sink_check: str = ""
    after_s: float = 0.0
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return (
            self.ok == self.planned and not self.failed and self.sink_check in ("ok", NO_SINK)
        ) and not self.timed_out


@dataclass
class Load:
    """Shared state of the workers of one run."""

    scenario: str
    run_id: str
    gateway_port: int
    tls: ssl.SSLContext
    password: str | None
    body: bytes
    batches: Iterator[list[int]]
    deadline: float
    io_timeout: float
    ok: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    connections: int = 0


async def one_connection(load: Load, indexes: list[int]) -> None:
    """A session: log in once, send each message of `indexes` (until the deadline), QUIT."""
    started = time.perf_counter()
    load.connections += 1
    client: Client | None = None
    now = format_datetime(datetime.now(UTC))
    pending = list(indexes)
    try:
        client = await Client.connect(load.gateway_port, load.io_timeout)
        await client.login(load.tls, load.password)
        while pending and time.monotonic() < load.deadline:
            index = pending[0]
            message_start = started if load.scenario == "per-connection" else time.perf_counter()
            await client.send(make_payload(load.run_id, index, load.body, now))
            load.latencies.append(time.perf_counter() - message_start)
            load.ok.add(index)
            pending.pop(0)
        await client.quit()
    except (SmtpFailure, OSError, ssl.SSLError, TimeoutError) as exc:
        text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SmtpFailure) else str(exc)
        if pending:
            load.failed[pending[0]] = text
    finally:
        if client is not None:
            client.close()


async def worker(load: Load) -> None:
    for batch in load.batches:
        if time.monotonic() >= load.deadline:
            return
        await one_connection(load, batch)


def batches_of(count: int, size: int) -> Iterator[list[int]]:
    for start in range(0, count, size):
        yield list(range(start, min(start + size, count)))


async def drive(load: Load, concurrency: int, hard_limit: float) -> bool:
    """Run the workers; False if they had to be cancelled at the hard time limit."""
    tasks = [asyncio.create_task(worker(load)) for _ in range(concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=hard_limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        error = task.exception()
        if error is not None:
            raise error
    return not pending


def check_sink(messages: Iterable[bytes], run_id: str, ok: set[int]) -> tuple[int, str]:
    """Compare what the sink stored (each message found by its X-Bench header) with what got
    250."""
    seen: dict[int, int] = {}
    strays = 0
    for raw in messages:
        matches = list(BENCH_HEADER.finditer(raw))  # more than one: two messages in one file
        strays += not matches
        for match in matches:
            if match.group(1).decode() == run_id:
                index = int(match.group(2))
                seen[index] = seen.get(index, 0) + 1
            else:
                strays += 1
    stored = sum(seen.values())
    problems = []
    if missing := ok - set(seen):
        problems.append(f"{len(missing)} accepted but not stored")
    if extra := set(seen) - ok:
        problems.append(f"{len(extra)} stored without a 250")
    if dups := [i for i, n in seen.items() if n > 1]:
        problems.append(f"{len(dups)} stored more than once")
    if strays:
        problems.append(f"{strays} unknown message(s)")
    return stored, "; ".join(problems) or "ok"


class Target(Protocol):
    """What a run drives: a gateway build, or a reference server, with the sink behind it."""

    @property
    def name(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def tls(self) -> ssl.SSLContext | None: ...

    @property
    def password(self) -> str | None: ...  # None: log in with the client certificate

    def server_cpu(self) -> float: ...

    def sink_cpu(self) -> float: ...

    def peak_rss_kib(self) -> int: ...

    def collect(self, run_id: str, ok: set[int], unsettled: bool) -> Collected: ...


@dataclass
class Collected:
    """What the sink holds after a run, compared with what got 250."""

    stored: int
    check: str
    after_s: float = 0.0  # how long the server took to hand everything on after the run


def run_once(
    scenario: str,
    run: int,
    count: int,
    args: argparse.Namespace,
    target: Target,
    label: str | None = None,
) -> RunResult:
    """One run of `scenario` against `target`, reported under `label` (default: scenario)."""
    assert target.tls is not None
    batch = 1 if scenario == "per-connection" else args.batch_size
    run_id = secrets.token_hex(4)
    start = time.monotonic()
    load = Load(
        scenario=scenario,
        run_id=run_id,
        gateway_port=target.port,
        tls=target.tls,
        password=target.password,
        body=make_body(args.size),
        batches=batches_of(count, batch),
        deadline=start + args.max_seconds,
        io_timeout=args.io_timeout,
    )
    server_cpu, sink_cpu, own_cpu = target.server_cpu(), target.sink_cpu(), own_cpu_seconds()
    t0 = time.perf_counter()
    finished = asyncio.run(drive(load, args.concurrency, args.max_seconds + CANCEL_MARGIN))
    elapsed = time.perf_counter() - t0
    own_cpu = own_cpu_seconds() - own_cpu
    collected = target.collect(run_id, load.ok, unsettled=bool(load.failed) or not finished)
    # After collect: a server that queues spends CPU on handing the run's messages on too.
    server_cpu = target.server_cpu() - server_cpu
    sink_cpu = target.sink_cpu() - sink_cpu

    ok = len(load.ok)
    per_msg = 1000.0 / ok if ok else 0.0
    lat = sorted(load.latencies)
    result = RunResult(
        scenario=label or scenario,
        run=run,
        planned=count,
        build=target.name,
        ok=ok,
        failed=len(load.failed),
        not_sent=count - ok - len(load.failed),
        connections=load.connections,
        seconds=elapsed,
        msgs_per_s=ok / elapsed if elapsed > 0 else 0.0,
        p50_ms=1000 * lat[len(lat) // 2] if lat else 0.0,
        p95_ms=1000 * lat[min(len(lat) - 1, int(len(lat) * 0.95))] if lat else 0.0,
        gateway_cpu_ms_per_msg=server_cpu * per_msg,
        sink_cpu_ms_per_msg=sink_cpu * per_msg,
        client_cpu_ms_per_msg=own_cpu * per_msg,
        gateway_cpu_s=server_cpu,
        gateway_peak_rss_kib=target.peak_rss_kib(),
        sink_stored=collected.stored,
        sink_check=collected.check,
        after_s=collected.after_s,
        timed_out=not finished
        or (ok + len(load.failed) < count and time.monotonic() >= load.deadline),
    )
    reasons: dict[str, int] = {}
    for text in load.failed.values():
        reasons[text] = reasons.get(text, 0) + 1
    result.errors = [f"{n} x {text}" for text, n in sorted(reasons.items(), key=lambda x: -x[1])]
    if result.timed_out:
        result.errors.append(f"stopped by --max-seconds {args.max_seconds:g}")
    return result


# --- setup, report ------------------------------------------------------------------------------


def machine_context() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        argon2_version = version("argon2-cffi")
    except PackageNotFoundError:
        argon2_version = "?"
    return {
        "cpu_model": model or platform.processor() or "?",
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "argon2_cffi": argon2_version,
        "platform": platform.platform(),
    }


def argon2_verify_ms(auth: dict[str, Any], rounds: int = 5) -> float:
    """CPU milliseconds of one argon2id verification with these parameters, in this process:
    what each per-connection login costs the gateway before any protocol work."""
    hasher = argon2.PasswordHasher(
        time_cost=auth["argon2_time_cost"],
        memory_cost=auth["argon2_memory_kib"],
        parallelism=auth["argon2_parallelism"],
        type=argon2.Type.ID,
    )
    digest = hasher.hash("bench")
    costs = []
    for _ in range(rounds):
        start = time.process_time()
        hasher.verify(digest, "bench")
        costs.append(1000 * (time.process_time() - start))
    return statistics.median(costs)


@dataclass
class Setup:
    """A gateway folder from `submitgw init`, with the bench user in it."""

    directory: Path
    settings: dict[str, Any]
    password: str | None  # None: the user logs in with its client certificate
    client_cert: tuple[Path, Path] | None = None  # certificate and key files


def prepare_setup(src: Path, base: Path, args: argparse.Namespace) -> Setup:
    """Everything through the CLI of the build in `src`, so each build writes the config,
    database and certificates it reads itself."""
    setup = base / "setup"
    run_cli("init", "--dir", str(setup), "--hostname", "bench.test", src=src)
    config = setup / "submitgw.toml"
    # One user on one address sends every message: lift the limits out of the way (the
    # counters still run, so their cost is part of the figures).
    limits = ["messages_per_user", "recipients_per_user", "messages_per_ip", "recipients_per_ip"]
    # And the successful logins: one per message, every run, all within one auth_window.
    # Older builds have no such keys.
    present = tomllib.loads(config.read_text())["limits"]
    logins = ("auth_successes_per_account", "auth_successes_per_ip")
    limits += [key for key in logins if key in present]
    config.write_text(
        set_toml_keys(config.read_text(), "limits", dict.fromkeys(limits, args.sending_limit))
    )
    # One process unless asked (`--workers`): the caps of several are divided among them.
    server = tomllib.loads(config.read_text()).get("server", {})
    if "workers" in server:
        workers = args.workers
        config.write_text(set_toml_keys(config.read_text(), "server", {"workers": workers}))
    # Every session logs in as the same user from the same address: let --concurrency logins
    # wait at once (the login limiter still runs), in any one worker (the caps are divided
    # among them, and the kernel may hand one worker most of the connections).
    auth = tomllib.loads(config.read_text())["auth"]
    pending = {
        key: max(auth[key], args.concurrency * args.workers)
        for key in ("max_pending", "max_pending_per_ip", "max_pending_per_account")
    }
    config.write_text(set_toml_keys(config.read_text(), "auth", pending))
    if args.cheap_argon2:
        # Before `user add`: the stored hash uses these parameters, so no rehash at login.
        config.write_text(set_toml_keys(config.read_text(), "auth", CHEAP_ARGON2))
    if args.certificate:
        # Older builds default to "off": set it, so that both builds ask for a certificate.
        for section in ("submission", "submissions"):
            config.write_text(
                set_toml_keys(config.read_text(), section, {"client_certificates": "optional"})
            )
    settings = tomllib.loads(config.read_text())
    cli = ("--config", str(config))
    if args.certificate:
        # A user of policy "certificate" from the start: no password, and a CLI start-up
        # fewer (every build with `set-auth` also has `user add --auth`).
        run_cli(*cli, "user", "add", USER, "--auth", "certificate", src=src)
        folder = base / "client"
        folder.mkdir()
        run_cli(*cli, "pki", "issue", USER, "--out", str(folder), src=src)
        files = (folder / f"{USER}.crt", folder / f"{USER}.key")
        return Setup(setup, settings, None, files)
    password = secrets.token_urlsafe(16)
    run_cli(*cli, "user", "add", USER, "--password-stdin", stdin=password, src=src)
    if args.app_password:
        # The CLI prints the new app password alone on its last line.
        added = run_cli(*cli, "user", "app-password", "add", USER, "--label", "bench", src=src)
        password = added.splitlines()[-1]
    return Setup(setup, settings, password)


@dataclass
class Build:
    """One gateway build under test: its source tree and its own setup, smarthost and
    process, so that two builds share nothing but the machine."""

    name: str
    src: Path
    base: Path
    smtp_sink: bool = False  # Postfix's smtp-sink as the smarthost, not the capture sink
    setup: Setup | None = None
    sink: Sink | peers.SmtpSink | None = None
    gateway: Gateway | None = None
    tls: ssl.SSLContext | None = None
    stats: dict[str, Any] = field(
        default_factory=lambda: {
            "peak_rss_kib": 0,
            "rss_kib": 0,
            "cpu_seconds": 0.0,
            "exit_code": None,
            "log_problems": {},
        }
    )

    def start(self, args: argparse.Namespace, label: str) -> None:
        say(f"{label}setting up {self.src} in {self.base}")
        check_source(self.src)
        self.setup = prepare_setup(self.src, self.base, args)
        limits = self.setup.settings["limits"]
        if args.batch_size > limits["max_messages_per_session"]:
            raise RuntimeError(
                f"--batch-size {args.batch_size} exceeds [limits] max_messages_per_session "
                f"{limits['max_messages_per_session']}"
            )
        if self.smtp_sink:
            self.sink = peers.SmtpSink(keep_in=self.base).start()
        else:
            self.sink = Sink(self.base / "mail", self.base / "sink.log")
            self.sink.start()
        smarthost = f"{HOST}:{self.sink.port}"
        self.gateway = Gateway(
            self.setup.directory,
            smarthost,
            self.base / "gateway.log",
            src=self.src,
            workers=args.workers,
        )
        self.gateway.start()
        assert self.gateway.proc is not None
        say(
            f"{label}gateway pid {self.gateway.proc.pid} on {HOST}:{self.gateway.port}, "
            f"sink on {self.sink.port}"
        )
        self.tls = client_tls(self.gateway.ca_file, self.setup)
        warm_up(self, args, label)

    @property
    def port(self) -> int:
        assert self.gateway is not None
        return self.gateway.port

    @property
    def password(self) -> str | None:
        assert self.setup is not None
        return self.setup.password

    def server_cpu(self) -> float:
        assert self.gateway is not None and self.gateway.proc is not None
        # With --workers, the workers are its children.
        return peers.tree_cpu_seconds(self.gateway.proc.pid)

    def sink_cpu(self) -> float:
        assert self.sink is not None and self.sink.pid is not None
        return cpu_seconds(self.sink.pid)

    def peak_rss_kib(self) -> int:
        assert self.gateway is not None and self.gateway.proc is not None
        return status_kib(self.gateway.proc.pid, "VmHWM")

    def collect(self, run_id: str, ok: set[int], unsettled: bool) -> Collected:
        """The gateway says 250 only after the smarthost did: the sink has every message
        at once, unless a run was cut short while the gateway was still relaying."""
        assert self.sink is not None
        if unsettled:
            time.sleep(1.0)
        return Collected(*check_sink(self.sink.take_messages(), run_id, ok))

    def measure(self) -> None:
        assert self.gateway is not None and self.gateway.proc is not None
        pid = self.gateway.proc.pid
        self.stats["peak_rss_kib"] = status_kib(pid, "VmHWM")
        self.stats["rss_kib"] = status_kib(pid, "VmRSS")
        self.stats["cpu_seconds"] = peers.tree_cpu_seconds(pid)

    def stop(self, label: str) -> None:
        if self.gateway is not None:
            code = self.gateway.stop()
            self.stats["exit_code"] = code
            self.stats["log_problems"] = self.gateway.log_problems()
            if code != 0:
                say(f"{label}gateway exit code {code}; end of its log:")
                say(self.gateway.log_text()[-2000:])
        if self.sink is not None:
            self.sink.stop()


# --- reference servers (--peer) -------------------------------------------------------------

PEER_KINDS = ("mail-client", "persistent", "certificate")
KIND_SCENARIO = {
    "mail-client": "per-connection",
    "persistent": "batched",
    "certificate": "per-connection",
}
DEFAULT_PEER_MESSAGES = {"mail-client": 100, "persistent": 2000, "certificate": 500}
DRAIN_TIMEOUT = 120.0  # seconds Postfix may take to hand a run's messages to its sink


def client_tls(ca_file: Path, setup: Setup) -> ssl.SSLContext:
    """The client side: trust the gateway's CA, present the user's certificate if it has one."""
    context = ssl.create_default_context(cafile=str(ca_file))
    if setup.client_cert is not None:
        context.load_cert_chain(*setup.client_cert)
    return context


def server_files(setup: Setup) -> tuple[Path, Path, Path]:
    """The gateway's server certificate, key and CA certificate, for a reference server."""
    tls = setup.settings["tls"]
    folder = setup.directory
    return folder / tls["cert"], folder / tls["key"], folder / tls["ca_cert"]


@dataclass
class PostfixPeer:
    """Postfix for submission (STARTTLS, AUTH through Dovecot, relay only after AUTH) with
    Dovecot's auth service holding the bench user's password as an {ARGON2ID} hash made with
    the gateway's argon2 parameters, relaying to its own smtp-sink."""

    base: Path
    name: str = "postfix+dovecot"
    tls: ssl.SSLContext | None = None
    password: str | None = None
    dovecot: peers.DovecotAuth | None = None
    postfix: peers.PostfixInstance | None = None
    sink: peers.SmtpSink | None = None
    detail: str = ""

    def start(self, setup: Setup, args: argparse.Namespace, label: str) -> None:
        assert setup.password is not None
        auth = setup.settings["auth"]
        hasher = argon2.PasswordHasher(
            time_cost=auth["argon2_time_cost"],
            memory_cost=auth["argon2_memory_kib"],
            parallelism=auth["argon2_parallelism"],
            type=argon2.Type.ID,
        )
        self.password = setup.password
        self.dovecot = peers.DovecotAuth({USER: "{ARGON2ID}" + hasher.hash(self.password)})
        self.dovecot.start()
        if not self.dovecot.authenticate(USER, self.password) or self.dovecot.authenticate(
            USER, self.password + "-wrong"
        ):
            raise RuntimeError(f"{label}Dovecot does not verify the {{ARGON2ID}} hash as it should")
        self.sink = peers.SmtpSink(keep_in=self.base).start()
        cert, key, ca = server_files(setup)
        self.postfix = peers.PostfixInstance(HOST, self.sink.port, myhostname="peer.bench.test")
        self.postfix.start(peers.submission_settings(cert, key, self.dovecot.port))
        self.tls = client_tls(ca, setup)
        self.detail = (
            f"Postfix {peers.postfix_version()}, Dovecot {peers.dovecot_version()} (SQL passdb, "
            f"{{ARGON2ID}} t={auth['argon2_time_cost']} m={auth['argon2_memory_kib']} "
            f"p={auth['argon2_parallelism']}, {self.dovecot.workers} auth workers, no auth "
            "cache), smtp-sink"
        )
        say(f"{label}{self.detail}: Postfix on {HOST}:{self.port}, smtp-sink on {self.sink.port}")
        warm_up(self, args, label)

    @property
    def port(self) -> int:
        assert self.postfix is not None
        return self.postfix.port

    def server_cpu(self) -> float:
        assert self.postfix is not None and self.dovecot is not None
        assert self.postfix.pid is not None and self.dovecot.pid is not None
        return peers.tree_cpu_seconds(self.postfix.pid) + peers.tree_cpu_seconds(self.dovecot.pid)

    def sink_cpu(self) -> float:
        assert self.sink is not None and self.sink.pid is not None
        return peers.tree_cpu_seconds(self.sink.pid)

    def peak_rss_kib(self) -> int:
        return 0  # many processes, coming and going

    def collect(self, run_id: str, ok: set[int], unsettled: bool) -> Collected:
        """Postfix says 250 once the message is in its queue; wait (bounded) until the queue
        is empty, then check what reached the sink."""
        assert self.postfix is not None and self.sink is not None
        start = time.monotonic()
        held = self.postfix.wait_until_delivered(DRAIN_TIMEOUT)
        after = time.monotonic() - start
        stored, check = check_sink(self.sink.take_messages(), run_id, ok)
        if held:
            check = f"{held} still queued after {DRAIN_TIMEOUT:g} s; {check}"
        return Collected(stored, check, after)

    def stop(self) -> None:
        for part in (self.postfix, self.dovecot, self.sink):
            if part is not None:
                part.stop()


@dataclass
class BarePeer:
    """The ceiling for certificate logins: aiosmtpd with STARTTLS (asking for and verifying a
    client certificate of the gateway's CA in the handshake) that accepts any AUTH EXTERNAL
    and every message and keeps nothing."""

    base: Path
    name: str = "bare aiosmtpd"
    tls: ssl.SSLContext | None = None
    password: str | None = None
    server: peers.BareSmtpd | None = None
    detail: str = ""

    def start(self, setup: Setup, args: argparse.Namespace, label: str) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        cert, key, ca = server_files(setup)
        self.server = peers.BareSmtpd(cert, key, ca, self.base / "bare.log").start()
        self.tls = client_tls(ca, setup)
        self.detail = f"aiosmtpd {version('aiosmtpd')}, STARTTLS, client certificate verified"
        say(f"{label}{self.detail}, on {HOST}:{self.port}")
        warm_up(self, args, label)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def server_cpu(self) -> float:
        assert self.server is not None and self.server.pid is not None
        return peers.tree_cpu_seconds(self.server.pid)

    def sink_cpu(self) -> float:
        return 0.0

    def peak_rss_kib(self) -> int:
        assert self.server is not None and self.server.pid is not None
        return status_kib(self.server.pid, "VmHWM")

    def collect(self, run_id: str, ok: set[int], unsettled: bool) -> Collected:
        return Collected(0, NO_SINK)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def warm_up(target: Target, args: argparse.Namespace, label: str) -> None:
    """A few unreported messages: processes, caches and pools get started, and a server that
    does not work fails here instead of in the first run."""
    if args.warmup:
        warm = run_once("per-connection", 0, args.warmup, args, target)
        if not warm.clean:
            raise RuntimeError(f"{label}warm-up failed: {warm.errors or warm.sink_check}")


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def summarise(results: list[RunResult]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for scenario in SCENARIOS:
        runs = [r for r in results if r.scenario == scenario]
        if not runs:
            continue
        msgs = sum(r.ok for r in runs)
        summary[scenario] = {
            "median_msgs_per_s": statistics.median(r.msgs_per_s for r in runs),
            "min_msgs_per_s": min(r.msgs_per_s for r in runs),
            "max_msgs_per_s": max(r.msgs_per_s for r in runs),
            "gateway_cpu_ms_per_msg": 1000 * sum(r.gateway_cpu_s for r in runs) / msgs
            if msgs
            else 0.0,
            "median_gateway_cpu_ms_per_msg": statistics.median(
                r.gateway_cpu_ms_per_msg for r in runs
            ),
            "clean_runs": sum(r.clean for r in runs),
            "runs": len(runs),
        }
    if "per-connection" in summary and "batched" in summary:
        base = summary["per-connection"]["median_msgs_per_s"]
        summary["ratio_batched_per_connection"] = (
            summary["batched"]["median_msgs_per_s"] / base if base else None
        )
    return summary


def compare_summary(results: list[RunResult]) -> dict[str, Any]:
    """Each build's summary, and per scenario the ratios new/old of the medians: above 1 for
    throughput and below 1 for CPU per message mean the new build does better."""
    summary: dict[str, Any] = {
        name: summarise([r for r in results if r.build == name]) for name in BUILDS
    }
    ratios: dict[str, dict[str, float | None]] = {}
    for scenario in SCENARIOS:
        if scenario not in summary["new"] or scenario not in summary["old"]:
            continue
        new, old = summary["new"][scenario], summary["old"][scenario]
        ratios[scenario] = {
            key: new[key] / old[key] if old[key] else None
            for key in ("median_msgs_per_s", "median_gateway_cpu_ms_per_msg")
        }
    summary["ratio_new_old"] = ratios
    return summary


def print_header(report: dict[str, Any], out: Any) -> None:
    m, s = report["machine"], report["settings"]
    print("submitgw benchmark", file=out)
    print(
        f"  machine:  {m['cpu_model']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"load average {m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end",
        file=out,
    )
    print(
        f"  software: Python {m['python']}, {m['openssl']}, argon2-cffi {m['argon2_cffi']}",
        file=out,
    )
    print(
        f"  argon2:   time_cost={s['argon2_time_cost']} memory={s['argon2_memory_kib']} KiB "
        f"parallelism={s['argon2_parallelism']} ({s['argon2_label']}), "
        f"auth workers={s['auth_workers']}; logins with the {s['credential']}; "
        f"one verify costs {s['argon2_verify_cpu_ms']:.1f} ms CPU",
        file=out,
    )
    print(
        f"  load:     concurrency {s['concurrency']}, message {s['size']} bytes body, "
        f"batch {s['batch_size']}, max {s['max_seconds']:g} s per run, {s['repeats']} run(s)",
        file=out,
    )
    builds = report["builds"]
    if len(builds) > 1 or Path(builds["new"]["src"]) != REPO_ROOT:
        for name, b in builds.items():
            print(f"  {name + ':':<9} {b['src']} ({b['revision']})", file=out)
    for text in report.get("setting_differences", []):
        print(f"  differs:  {text}", file=out)
    for kind, info in report.get("kinds", {}).items():
        detail = info.get("reference_detail", "")
        print(f"  {kind + ':':<12} submitgw vs {info['reference']} ({detail})", file=out)
    print(file=out)


def print_runs(report: dict[str, Any], out: Any) -> None:
    peer = "kinds" in report
    compare = len(report["builds"]) > 1 or peer
    header = (["server"] if peer else ["build"]) if compare else []
    header += ["traffic" if peer else "scenario", "run", "ok", "not ok", "conns", "seconds"]
    header += ["msgs/s", "p50 ms", "p95 ms", "server cpu ms/msg" if peer else "gw cpu ms/msg"]
    header += ["sink cpu", "client cpu", "VmHWM" if peer else "gw VmHWM", "sink check"]
    header += ["after s"] if peer else []
    rows = [
        ([r["build"]] if compare else [])
        + [
            r["scenario"],
            str(r["run"]),
            f"{r['ok']}/{r['planned']}",
            str(r["failed"] + r["not_sent"]),
            str(r["connections"]),
            f"{r['seconds']:.2f}",
            f"{r['msgs_per_s']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{r['gateway_cpu_ms_per_msg']:.2f}",
            f"{r['sink_cpu_ms_per_msg']:.2f}",
            f"{r['client_cpu_ms_per_msg']:.2f}",
            f"{r['gateway_peak_rss_kib'] / 1024:.1f} MiB" if r["gateway_peak_rss_kib"] else "-",
            r["sink_check"],
        ]
        + ([f"{r['after_s']:.1f}"] if peer else [])
        for r in report["runs"]
    ]
    print(format_table(rows, header), file=out)
    if peer:
        print(
            "  p50/p95: a message per connection from connect to the 250 after DATA, persistent"
            " from MAIL to it; cpu: ms per message (server: every process of it, Postfix and"
            " Dovecot together; the reference servers' handing on after the run included);"
            " VmHWM: peak RSS so far (-: many processes); after: seconds Postfix took after the"
            " run to hand the last messages to its sink",
            file=out,
        )
    else:
        print(
            "  p50/p95: per-connection from connect to the 250 after DATA, batched from MAIL to"
            " it; cpu: ms per message; VmHWM: gateway peak RSS so far",
            file=out,
        )
    for r in report["runs"]:
        label = f"{r['build']} " if compare else ""
        for text in r["errors"][:MAX_ERRORS_SHOWN]:
            print(f"  {label}{r['scenario']} run {r['run']}: {text}", file=out)
    print(file=out)


def print_gateway(name: str, g: dict[str, Any], out: Any) -> None:
    print(
        f"{name:>15}: peak RSS (VmHWM) {g['peak_rss_kib'] / 1024:.1f} MiB, "
        f"RSS at the end {g['rss_kib'] / 1024:.1f} MiB, "
        f"{g['cpu_seconds']:.2f} CPU s in all, exit code {g['exit_code']}",
        file=out,
    )
    for text, n in list(g["log_problems"].items())[:MAX_ERRORS_SHOWN]:
        print(f"{'':>15}  log: {n} x {text}", file=out)


def print_report(report: dict[str, Any], out: Any) -> None:
    print_header(report, out)
    print_runs(report, out)
    summary = report["summary"]
    for scenario in SCENARIOS:
        if scenario in summary:
            x = summary[scenario]
            print(
                f"{scenario:>15}: median {x['median_msgs_per_s']:8.1f} msgs/s "
                f"(min {x['min_msgs_per_s']:.1f}, max {x['max_msgs_per_s']:.1f}), "
                f"gateway CPU {x['gateway_cpu_ms_per_msg']:.2f} ms/msg, "
                f"{x['clean_runs']}/{x['runs']} clean run(s)",
                file=out,
            )
    if summary.get("ratio_batched_per_connection") is not None:
        print(f"{'batched/per-conn':>15}: {summary['ratio_batched_per_connection']:.1f}x", file=out)
    print_gateway("gateway", report["gateway"], out)


def peer_summary(results: list[RunResult], kinds: dict[str, Any]) -> dict[str, Any]:
    """Per traffic kind, the medians of each server's runs and the ratio submitgw/reference of
    the median throughputs (above 1: submitgw is faster)."""
    summary: dict[str, Any] = {}
    for kind, info in kinds.items():
        sides: dict[str, dict[str, Any]] = {}
        for role, name in (("submitgw", "submitgw"), ("reference", info["reference"])):
            runs = [r for r in results if r.scenario == kind and r.build == name]
            if not runs:
                continue
            sides[role] = {
                "server": name,
                "median_msgs_per_s": statistics.median(r.msgs_per_s for r in runs),
                "min_msgs_per_s": min(r.msgs_per_s for r in runs),
                "max_msgs_per_s": max(r.msgs_per_s for r in runs),
                "median_p50_ms": statistics.median(r.p50_ms for r in runs),
                "median_p95_ms": statistics.median(r.p95_ms for r in runs),
                "median_server_cpu_ms_per_msg": statistics.median(
                    r.gateway_cpu_ms_per_msg for r in runs
                ),
                "clean_runs": sum(r.clean for r in runs),
                "runs": len(runs),
            }
        if len(sides) == 2:
            reference = sides["reference"]["median_msgs_per_s"]
            ratio = sides["submitgw"]["median_msgs_per_s"] / reference if reference else None
            summary[kind] = {**sides, "ratio": ratio}
    return summary


def print_peer_report(report: dict[str, Any], out: Any) -> None:
    print_header(report, out)
    print_runs(report, out)
    print(
        "| traffic | submitgw msgs/s | reference | reference msgs/s | submitgw/reference "
        "| submitgw p50 / p95 ms | reference p50 / p95 ms | server CPU ms/msg, submitgw / "
        "reference | clean runs |",
        file=out,
    )
    print("| --- " * 9 + "|", file=out)
    for kind, x in report["summary"].items():
        gw, ref = x["submitgw"], x["reference"]
        ratio = "n/a" if x["ratio"] is None else f"{x['ratio']:.2f}"
        print(
            f"| {kind} | {gw['median_msgs_per_s']:.1f} | {ref['server']} "
            f"| {ref['median_msgs_per_s']:.1f} | {ratio} "
            f"| {gw['median_p50_ms']:.0f} / {gw['median_p95_ms']:.0f} "
            f"| {ref['median_p50_ms']:.0f} / {ref['median_p95_ms']:.0f} "
            f"| {gw['median_server_cpu_ms_per_msg']:.1f} / "
            f"{ref['median_server_cpu_ms_per_msg']:.1f} "
            f"| {gw['clean_runs'] + ref['clean_runs']}/{gw['runs'] + ref['runs']} |",
            file=out,
        )
    print(
        "  medians of each server's runs; submitgw/reference: of the median throughputs "
        "(above 1: submitgw is faster)",
        file=out,
    )
    print(file=out)
    for kind, info in report["kinds"].items():
        print_gateway(f"gateway {kind}", info["gateway"], out)
    print(f"{'took':>15}: {report['seconds']:.0f} s in all", file=out)


def print_comparison(report: dict[str, Any], out: Any) -> None:
    print_header(report, out)
    print_runs(report, out)
    summary = report["summary"]

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}x"

    for scenario, ratios in summary["ratio_new_old"].items():
        for name in BUILDS:
            x = summary[name][scenario]
            print(
                f"{scenario + ' ' + name:>18}: median {x['median_msgs_per_s']:8.1f} msgs/s "
                f"(min {x['min_msgs_per_s']:.1f}, max {x['max_msgs_per_s']:.1f}), "
                f"gateway CPU median {x['median_gateway_cpu_ms_per_msg']:.2f} ms/msg, "
                f"{x['clean_runs']}/{x['runs']} clean run(s)",
                file=out,
            )
        print(
            f"{scenario + ' new/old':>18}: throughput {ratio(ratios['median_msgs_per_s'])}, "
            f"gateway CPU per message {ratio(ratios['median_gateway_cpu_ms_per_msg'])}",
            file=out,
        )
    for name, b in report["builds"].items():
        print_gateway(f"gateway {name}", b["gateway"], out)
    print(f"{'took':>15}: {report['seconds']:.0f} s in all", file=out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Messages per second through a real submitgw process (loopback only).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--concurrency", type=int, default=4, help="simultaneous client sessions")
    p.add_argument(
        "--messages",
        type=int,
        help="messages per run and scenario (default: 200 per-connection, 2000 batched; with "
        "--peer 100 mail-client, 2000 persistent, 500 certificate)",
    )
    p.add_argument("--batch-size", type=int, default=100, help="messages per batched session")
    p.add_argument("--repeats", type=int, default=3, help="runs per scenario (and build)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="time cap of one run")
    p.add_argument("--size", type=int, default=2048, help="message body bytes")
    p.add_argument("--io-timeout", type=float, default=30.0, help="seconds per SMTP reply")
    p.add_argument("--scenario", choices=[*SCENARIOS, "both"], default="both")
    p.add_argument(
        "--cheap-argon2",
        action="store_true",
        help="argon2 time_cost=1, 8 MiB, parallelism=1 instead of the production defaults",
    )
    p.add_argument(
        "--sending-limit",
        type=int,
        default=10_000_000,
        help="[limits] messages/recipients per user and per IP, and successful logins, for the run",
    )
    credential = p.add_mutually_exclusive_group()
    credential.add_argument(
        "--app-password",
        action="store_true",
        help="log in with an app password of the user instead of the account password",
    )
    credential.add_argument(
        "--certificate",
        action="store_true",
        help="present a client certificate from the gateway's CA and log in with AUTH EXTERNAL "
        '(user policy "certificate", listeners with client_certificates = "optional")',
    )
    p.add_argument(
        "--gateway-src",
        type=Path,
        help="source tree of the gateway to run (its CLI and `serve`, with PYTHONPATH set to "
        "it; same interpreter) instead of this script's tree",
    )
    p.add_argument(
        "--compare",
        type=Path,
        metavar="OLD_SRC",
        help="also run the gateway from OLD_SRC, with its own setup and smarthost: runs "
        "alternate new, old, new, old, ... and the report gives the ratios new/old of the "
        "medians",
    )
    p.add_argument(
        "--peer",
        action="store_true",
        help="compare with reference servers (root only): Postfix + Dovecot for password "
        "logins, a bare aiosmtpd for certificate logins, each kind of traffic against a fresh "
        "gateway; runs alternate submitgw, reference, submitgw, ...; smtp-sink is the "
        "smarthost of both",
    )
    p.add_argument(
        "--kinds",
        default=",".join(PEER_KINDS),
        help="with --peer: comma-separated traffic kinds: mail-client (a message per "
        "connection, AUTH PLAIN), persistent (--batch-size messages per connection), "
        "certificate (a message per connection, AUTH EXTERNAL)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="`serve --workers N` (gateway CPU and memory then count the workers too)",
    )
    p.add_argument("--warmup", type=int, default=4, help="unreported messages before the runs")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    for name in ("concurrency", "batch_size", "repeats", "size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.messages is not None and args.messages < 1:
        p.error("--messages must be at least 1")
    if args.max_seconds <= 0 or args.io_timeout <= 0 or args.warmup < 0:
        p.error("--max-seconds and --io-timeout must be positive, --warmup not negative")
    args.kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(args.kinds) - set(PEER_KINDS))
    if unknown or not args.kinds:
        known = ", ".join(PEER_KINDS)
        p.error(f"--kinds: {', '.join(unknown) or 'none given'}; choose from {known}")
    if args.peer and (args.compare or args.certificate or args.app_password):
        p.error(
            "--peer chooses the credential per kind; it goes without --compare, "
            "--certificate and --app-password"
        )
    for name in ("gateway_src", "compare"):
        src = getattr(args, name)
        if src is not None:
            if not (src / "submitgw" / "__main__.py").is_file():
                p.error(f"--{name.replace('_', '-')} {src}: no submitgw/__main__.py there")
            setattr(args, name, src.resolve())
    return args


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def describe_settings(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    auth = settings["auth"]
    if args.certificate:
        credential = "client certificate (AUTH EXTERNAL)"
    else:
        credential = "app password" if args.app_password else "account password"
    return {
        "argon2_time_cost": auth["argon2_time_cost"],
        "argon2_memory_kib": auth["argon2_memory_kib"],
        "argon2_parallelism": auth["argon2_parallelism"],
        "argon2_label": "cheap" if args.cheap_argon2 else "production defaults",
        "credential": credential,
        "auth_workers": auth["workers"],
        "concurrency": args.concurrency,
        "size": args.size,
        "batch_size": args.batch_size,
        "max_seconds": args.max_seconds,
        "repeats": args.repeats,
        "argon2_verify_cpu_ms": argon2_verify_ms(auth),
    }


def setting_differences(builds: list[Build]) -> list[str]:
    """Config values of the sections that shape the figures where the builds' generated
    configs differ (each build runs with its own defaults)."""
    texts = []
    first = builds[0].setup
    assert first is not None
    for other in builds[1:]:
        assert other.setup is not None
        for section in ("submission", "auth", "limits", "tls"):
            a, b = first.settings.get(section, {}), other.setup.settings.get(section, {})
            for key in sorted(a.keys() | b.keys()):
                if a.get(key) != b.get(key):
                    texts.append(
                        f"[{section}] {key}: {builds[0].name} {a.get(key, '(none)')!r}, "
                        f"{other.name} {b.get(key, '(none)')!r}"
                    )
    return texts


def benchmark(args: argparse.Namespace, base: Path, report: dict[str, Any]) -> None:
    """Set up, run every scenario, and stop everything, filling `report` as it goes."""
    src = args.gateway_src or REPO_ROOT
    if args.compare is None:
        builds = [Build("new", src, base)]
    else:
        builds = [Build("new", src, base / "new"), Build("old", args.compare, base / "old")]
    compare = len(builds) > 1
    results: list[RunResult] = []
    report["runs"] = results
    report["builds"] = {
        b.name: {"src": str(b.src), "revision": revision(b.src), "gateway": b.stats} for b in builds
    }
    if not compare:
        report["gateway"] = builds[0].stats
    try:
        for build in builds:
            build.start(args, f"{build.name}: " if compare else "")
        first = builds[0].setup
        assert first is not None
        report["settings"] = describe_settings(args, first.settings)
        report["setting_differences"] = setting_differences(builds)
        scenarios = SCENARIOS if args.scenario == "both" else (args.scenario,)
        for scenario in scenarios:
            count = args.messages or DEFAULT_MESSAGES[scenario]
            for run in range(1, args.repeats + 1):
                for build in builds:
                    label = f"{build.name} " if compare else ""
                    say(f"{label}{scenario} run {run}/{args.repeats}: {count} messages")
                    result = run_once(scenario, run, count, args, build)
                    say(
                        f"  {result.ok}/{count} ok in {result.seconds:.2f} s: "
                        f"{result.msgs_per_s:.1f} msgs/s, sink {result.sink_check}"
                    )
                    results.append(result)
        for build in builds:
            build.measure()
    finally:
        for build in builds:
            build.stop(f"{build.name}: " if compare else "")


def benchmark_peers(args: argparse.Namespace, base: Path, report: dict[str, Any]) -> None:
    """Per traffic kind: a gateway (its own setup, smtp-sink as its smarthost) and the
    reference server, started together; runs alternate submitgw, reference, submitgw, ...;
    both are stopped before the next kind starts."""
    src = args.gateway_src or REPO_ROOT
    results: list[RunResult] = []
    report["runs"] = results
    report["builds"] = {"new": {"src": str(src), "revision": revision(src)}}
    report["kinds"] = {}
    check_source(src)
    for kind in args.kinds:
        kind_args = argparse.Namespace(**{**vars(args), "certificate": kind == "certificate"})
        gateway = Build("submitgw", src, base / kind / "submitgw", smtp_sink=True)
        reference: PostfixPeer | BarePeer = (
            BarePeer(base / kind / "reference")
            if kind == "certificate"
            else PostfixPeer(base / kind / "reference")
        )
        report["kinds"][kind] = {"reference": reference.name, "gateway": gateway.stats}
        try:
            gateway.start(kind_args, f"{kind} submitgw: ")
            assert gateway.setup is not None
            reference.start(gateway.setup, kind_args, f"{kind} {reference.name}: ")
            report["kinds"][kind]["reference_detail"] = reference.detail
            if "settings" not in report:
                report["settings"] = describe_settings(args, gateway.setup.settings)
                report["settings"]["credential"] = (
                    "account password (mail-client, persistent) or client certificate (certificate)"
                )
            count = args.messages or DEFAULT_PEER_MESSAGES[kind]
            for run in range(1, args.repeats + 1):
                for target in (gateway, reference):
                    say(f"{kind} run {run}/{args.repeats}, {target.name}: {count} messages")
                    result = run_once(KIND_SCENARIO[kind], run, count, kind_args, target, kind)
                    say(
                        f"  {result.ok}/{count} ok in {result.seconds:.2f} s: "
                        f"{result.msgs_per_s:.1f} msgs/s, sink {result.sink_check}"
                    )
                    results.append(result)
            gateway.measure()
        finally:
            reference.stop()
            gateway.stop(f"{kind} submitgw: ")


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends the benchmark like Ctrl-C does: through the `finally` that stops the
    gateway and the sink (Python's default would leave both running)."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    base = Path(tempfile.mkdtemp(prefix="submitgw-bench-"))
    report: dict[str, Any] = {"machine": machine_context()}
    started = time.monotonic()
    try:
        if args.peer:
            benchmark_peers(args, base, report)
        else:
            benchmark(args, base, report)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; the gateway and the sink were stopped")
        return 130
    finally:
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results: list[RunResult] = report["runs"]
    report["runs"] = [asdict(r) for r in results]
    compare = args.compare is not None
    if args.peer:
        report["summary"] = peer_summary(results, report["kinds"])
    else:
        report["summary"] = compare_summary(results) if compare else summarise(results)
    report["seconds"] = time.monotonic() - started
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.peer:
        print_peer_report(report, sys.stdout)
    elif compare:
        print_comparison(report, sys.stdout)
    else:
        print_report(report, sys.stdout)
    gateways = report["kinds"].values() if args.peer else report["builds"].values()
    gateways_ok = all(g["gateway"]["exit_code"] == 0 for g in gateways)
    return 0 if gateways_ok and all(r.clean for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
