#!/usr/bin/env python3
"""Hostile-network test: do legitimate users still get their mail through while the gateway
is under attack, and does the gateway give back what an attack made it hold?

A benchmark measures a gateway that is left alone; a gateway on the Internet never is. This
script starts its own capture smarthost and `submitgw serve` (`submitgw init` in a temporary
folder, password users and certificate users), then runs each attack in turn for --seconds,
alongside a small legitimate population:

* password users: a new connection per message, STARTTLS, AUTH PLAIN, one message, QUIT;
* certificate users: implicit TLS on the 465-style listener with a client certificate of the
  gateway's CA, one message, QUIT;

--clients of them at a time (half of each kind), each pausing --pause seconds between messages.
The attacks (each from its own block of loopback source addresses 127.0.K.x, so that what the
gateway counts per address, such as login lockouts, never spills from one attack or from the
legitimate users, who connect from 127.0.0.1, into another):

  handshake   failed TLS handshakes: TLS 1.1-only clients (on 465 and after STARTTLS), a TCP
              connect and close on 465, STARTTLS then close, a client certificate from a
              foreign CA; from rotating addresses
  slow        one byte a second: a command on 587, a TLS ClientHello on 465; 5 connections
              from each of --attackers addresses
  idle        connections that stay silent after the greeting, up to the per-address cap from
              each of --attackers addresses (127.0.3.1 ... 127.0.3.N)
  guess       AUTH PLAIN with wrong passwords for made-up names from rotating addresses
  login       one attacker with a correct password logging in again and again from one
              address, on --attackers connections at a time (at most the per-address cap)
  frombomb    an authenticated attacker sending messages with a ~400 KB folded From: header
              and with 400 nested comments in From:
  shortlines  an authenticated attacker sending 4 MiB of empty lines as DATA

plus `baseline` (no attack). Every phase gets a freshly started gateway (same setup and
database), so one attack's leftovers cannot spoil the next one's figures. For each phase it
prints a Markdown table row: the legitimate users' success rate, p50/p95 latency (connect to
the 250 after DATA), the gateway's RSS and open descriptors before the phase, at their peak and
--settle seconds after the attack stopped (does the gateway give back what it held?), and
whether a message that got 250 is missing at the smarthost (checked by a per-message header).
Below the table: why legitimate messages failed (which reply or exception at which step) and
what the attackers got.

Legitimate clients and attackers run in separate processes, so that the attackers cannot take
the CPU the legitimate clients need inside this script (the machine shares its cores with the
gateway anyway: figures from a busy machine are worse). Loopback only; every loop stops at
its phase's deadline and after a fixed number of operations; the script stops by itself.
Exit status 1 when a message that got 250 was lost or the gateway died or stopped badly.
Run it with the project's venv: `.venv/bin/python scripts/hostile.py [--seconds 20]`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import (
    CHEAP_ARGON2,
    HOST,
    TLS_NAME,
    Gateway,
    Sink,
    cpu_seconds,
    machine_context,
    run_cli,
    set_toml_keys,
    status_kib,
)
from peers import PostfixInstance

ATTACKS = ("handshake", "slow", "idle", "guess", "login", "frombomb", "shortlines")
PHASES = ("baseline", *ATTACKS)
DOMAIN = "example.org"
RECIPIENT = "sink@example.net"
CLIENT_NAME = "client.hostile.test"
ATTACKER = f"mallory@{DOMAIN}"
SENDING_LIMIT = 10_000_000
SHUTDOWN_GRACE = 5.0
SETUP_WORKERS = 4
MAX_ATTACK_OPS = 100_000
MAX_LEGIT_PER_CLIENT = 10_000
SLOW_PER_ADDRESS = 5
ROTATING_ADDRESSES = 254
HANDSHAKE_TIMEOUT = 10.0
CHILD_MARGIN = 20.0  # a child process is stopped this long after its phase's deadline
STARTUP_TIMEOUT = 60.0  # seconds the child processes may take to start
SAMPLE_INTERVAL = 0.25
FROM_BOMB_BYTES = 400 * 1024
NESTED_COMMENTS = 400
SHORT_LINE_BYTES = 4 * 1024 * 1024
CUT_OFF = "still waiting when the phase ended"
HOSTILE_HEADER = re.compile(rb"^X-Hostile: (\S+)\r?$", re.MULTILINE)
MAX_REASONS_SHOWN = 6
MAX_REPLY_LINES = 100


def say(text: str) -> None:
    print(f"hostile: {text}", file=sys.stderr, flush=True)


def source_address(block: int, index: int) -> str:
    """The index-th loopback address of an attack's block 127.0.<block>.1-254."""
    return f"127.0.{block}.{index % ROTATING_ADDRESSES + 1}"


# --- what the child processes are told and tell back --------------------------------------------


@dataclass(frozen=True)
class Account:
    email: str
    password: str = ""
    cert: str = ""
    key: str = ""


@dataclass(frozen=True)
class Target:
    """Where the gateway listens and whom to trust; picklable, for the child processes."""

    port: int
    tls_port: int
    ca_file: str
    io_timeout: float
    seconds: float
    deadline: float = 0.0  # time.monotonic(), which all processes share on Linux


def begin(target: Target, barrier: Any) -> Target:
    """Clients, attackers and the sampling parent begin the phase together, however long each
    process took to start (spawning one takes a while)."""
    barrier.wait(STARTUP_TIMEOUT)
    return replace(target, deadline=time.monotonic() + target.seconds)


@dataclass
class LegitResult:
    attempts: int = 0
    ok: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


@dataclass
class AttackResult:
    ops: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    open_now: int = 0
    peak_open: int = 0


# --- a small SMTP client ---------------------------------------------------------------------


class SmtpFailure(Exception):
    """An unexpected reply, or a connection that broke, at a named step of a session."""

    def __init__(self, step: str, what: str) -> None:
        super().__init__(f"{step}: {what}")
        self.step = step
        self.what = what


def reply_category(line: str) -> str:
    """A reply without what varies between occurrences (times, counts, addresses), so that
    equal refusals are counted together."""
    parts = line.split(" ", 2)
    if len(parts) >= 2 and re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", parts[1]):
        head, rest = " ".join(parts[:2]), parts[2] if len(parts) > 2 else ""
    else:
        head, rest = parts[0], " ".join(parts[1:])
    rest = re.sub(r"\d+(\.\d+)*", "N", rest)
    return f"{head} {rest[:70]}".strip()


def failure(exc: BaseException, step: str, timeout: float) -> SmtpFailure:
    """An exception as a failure at `step`, named so that equal ones are counted together."""
    if isinstance(exc, SmtpFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return SmtpFailure(step, f"no answer within {timeout:g} s")
    if isinstance(exc, ssl.SSLError):
        return SmtpFailure(step, f"TLS error {exc.reason or type(exc).__name__}")
    return SmtpFailure(step, type(exc).__name__)


class Smtp:
    """One connection on asyncio streams: one command, one reply. It remembers the step it is
    at, so that a failure can say which reply or exception came where."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.step = "connect"

    @classmethod
    async def open(
        cls,
        port: int,
        timeout: float,
        *,
        source: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Smtp:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    HOST,
                    port,
                    ssl=tls,
                    server_hostname=TLS_NAME if tls else None,
                    local_addr=(source, 0) if source else None,
                    ssl_handshake_timeout=timeout if tls else None,
                ),
                timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            refused = isinstance(exc, ConnectionRefusedError)
            step = "TLS handshake" if tls and not refused else "connect"
            raise failure(exc, step, timeout) from exc
        return cls(reader, writer, timeout)

    async def read_reply(self) -> str:
        """The last line of the next reply (continuation lines are skipped)."""
        for _ in range(MAX_REPLY_LINES):
            try:
                line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
                raise failure(exc, self.step, self.timeout) from exc
            if not line:
                raise SmtpFailure(self.step, "connection closed")
            if line[3:4] != b"-":
                return line.rstrip(b"\r\n").decode(errors="replace")
        raise SmtpFailure(self.step, f"a reply of more than {MAX_REPLY_LINES} lines")

    async def expect(self, code: int, step: str) -> str:
        self.step = step
        line = await self.read_reply()
        if not line[:3].isdigit() or int(line[:3]) != code:
            raise SmtpFailure(step, reply_category(line))
        return line

    async def command(self, line: bytes, code: int, step: str | None = None) -> str:
        self.writer.write(line + b"\r\n")
        return await self.expect(code, step or line.split(b" ", 1)[0].decode(errors="replace"))

    async def starttls(self, tls: ssl.SSLContext) -> None:
        await self.command(b"STARTTLS", 220)
        self.step = "TLS handshake after STARTTLS"
        try:
            await asyncio.wait_for(
                self.writer.start_tls(tls, server_hostname=TLS_NAME), self.timeout
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise failure(exc, self.step, self.timeout) from exc

    async def login(self, tls: ssl.SSLContext, email: str, password: str) -> str:
        """Greeting, EHLO, STARTTLS, EHLO, AUTH PLAIN; the reply to AUTH, whatever it is."""
        await self.expect(220, "greeting")
        await self.command(b"EHLO " + CLIENT_NAME.encode(), 250)
        await self.starttls(tls)
        await self.command(b"EHLO " + CLIENT_NAME.encode(), 250, "EHLO after STARTTLS")
        token = base64.b64encode(f"\0{email}\0{password}".encode())
        self.writer.write(b"AUTH PLAIN " + token + b"\r\n")
        self.step = "AUTH"
        return await self.read_reply()

    async def send(self, sender: str, payload: bytes) -> str:
        """MAIL, RCPT, DATA; `payload` is dot-stuffed and ends with CRLF.CRLF."""
        await self.command(f"MAIL FROM:<{sender}>".encode(), 250)
        await self.command(f"RCPT TO:<{RECIPIENT}>".encode(), 250)
        await self.command(b"DATA", 354)
        self.step = "sending DATA"
        try:
            for start in range(0, len(payload), 65536):
                self.writer.write(payload[start : start + 65536])
                await asyncio.wait_for(self.writer.drain(), self.timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise failure(exc, self.step, self.timeout) from exc
        return await self.expect(250, "end of DATA")

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            await self.command(b"QUIT", 221)
        self.abort()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


def client_context(ca_file: str, account: Account | None = None) -> ssl.SSLContext:
    tls = ssl.create_default_context(cafile=ca_file)
    if account is not None and account.cert:
        tls.load_cert_chain(account.cert, account.key)
    return tls


def tls11_context() -> ssl.SSLContext:
    """A client that speaks TLS 1.1 only, as an old or scanning client does."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    tls.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tls.minimum_version = ssl.TLSVersion.TLSv1_1
        tls.maximum_version = ssl.TLSVersion.TLSv1_1
    return tls


def client_hello() -> bytes:
    """The first flight of a TLS client, to be dribbled byte by byte."""
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    obj = tls.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), server_hostname=TLS_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# --- the legitimate population -----------------------------------------------------------------


def legit_payload(sender: str, token: str) -> bytes:
    now = format_datetime(datetime.now(UTC))
    return (
        f"From: <{sender}>\r\nTo: <{RECIPIENT}>\r\nSubject: hostile {token}\r\nDate: {now}\r\n"
        f"Message-ID: <{token}@hostile.test>\r\nX-Hostile: {token}\r\n\r\n"
        "A legitimate message, sent while the gateway is under attack.\r\n.\r\n"
    ).encode()


async def legit_message(target: Target, account: Account, tls: ssl.SSLContext, token: str) -> float:
    """One message on a new connection; seconds from connect to the 250 after DATA."""
    start = time.perf_counter()
    client: Smtp | None = None
    try:
        if account.cert:
            client = await Smtp.open(target.tls_port, target.io_timeout, tls=tls)
            await client.expect(220, "greeting on 465")
            await client.command(b"EHLO " + CLIENT_NAME.encode(), 250)
        else:
            client = await Smtp.open(target.port, target.io_timeout)
            reply = await client.login(tls, account.email, account.password)
            if not reply.startswith("235"):
                raise SmtpFailure("AUTH", reply_category(reply))
        await client.send(account.email, legit_payload(account.email, token))
        latency = time.perf_counter() - start
        await client.quit()
        return latency
    finally:
        if client is not None:
            client.abort()


async def legit_client(
    target: Target,
    accounts: list[Account],
    index: int,
    pause: float,
    label: str,
    result: LegitResult,
) -> None:
    contexts = [client_context(target.ca_file, a) for a in accounts]
    for n in range(MAX_LEGIT_PER_CLIENT):
        if time.monotonic() >= target.deadline:
            return
        which = n % len(accounts)
        token = f"{label}.{index}.{n}"
        result.attempts += 1
        try:
            latency = await legit_message(target, accounts[which], contexts[which], token)
        except (SmtpFailure, OSError, ssl.SSLError, TimeoutError) as exc:
            result.failures[str(failure(exc, "unexpected", target.io_timeout))] += 1
        else:
            result.ok.append(token)
            result.latencies.append(latency)
        await asyncio.sleep(pause)


async def legit_population(
    target: Target,
    password_users: list[Account],
    cert_users: list[Account],
    clients: int,
    pause: float,
    label: str,
) -> LegitResult:
    """`clients` at a time, even ones with passwords, odd ones with certificates."""
    result = LegitResult()
    tasks = []
    for i in range(clients):
        accounts = cert_users if i % 2 and cert_users else password_users
        tasks.append(legit_client(target, accounts, i, pause, label, result))
    hard_limit = target.deadline - time.monotonic() + CHILD_MARGIN / 2
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), max(hard_limit, 1.0))
    if unanswered := result.attempts - len(result.ok) - result.failures.total():
        result.failures[CUT_OFF] += unanswered
    return result


def legit_process(
    target: Target,
    password_users: list[Account],
    cert_users: list[Account],
    clients: int,
    pause: float,
    label: str,
    barrier: Any,
    out: Connection,
) -> None:
    target = begin(target, barrier)
    result = asyncio.run(
        legit_population(target, password_users, cert_users, clients, pause, label)
    )
    out.send(result)
    out.close()


# --- the attacks ---------------------------------------------------------------------------------


@dataclass
class Attack:
    """What every attack needs; built inside the attacker process (SSL contexts do not pickle)."""

    target: Target
    attackers: int
    per_ip_cap: int
    attacker: Account
    foreign: Account
    result: AttackResult = field(default_factory=AttackResult)

    def __post_init__(self) -> None:
        self.trusting = client_context(self.target.ca_file)
        self.tls11 = tls11_context()
        self.foreign_tls = client_context(self.target.ca_file, self.foreign)

    def remaining(self) -> float:
        return self.target.deadline - time.monotonic()

    async def loops(
        self, count: int, op: Callable[[int, int], Awaitable[str]], pause: float = 0.0
    ) -> None:
        """`count` concurrent loops running `op(loop, n)` again and again, until the deadline
        or MAX_ATTACK_OPS operations in all; each outcome is counted."""

        async def loop(index: int) -> None:
            while self.remaining() > 0 and self.result.ops < MAX_ATTACK_OPS:
                n = self.result.ops
                self.result.ops += 1
                try:
                    outcome = await asyncio.wait_for(op(index, n), self.remaining() + 2.0)
                except TimeoutError:
                    outcome = CUT_OFF
                except (SmtpFailure, OSError, ssl.SSLError) as exc:
                    outcome = str(failure(exc, "unexpected", self.target.io_timeout))
                self.result.outcomes[outcome] += 1
                if pause:
                    await asyncio.sleep(min(pause, max(self.remaining(), 0)))

        await asyncio.gather(*(loop(i) for i in range(count)))

    async def hold(self, client: Smtp, dribble: bytes = b"") -> str:
        """Keep a connection until the deadline, sending `dribble` one byte a second; says who
        ended it."""
        opened = time.monotonic()
        if self.remaining() <= 0:
            client.abort()
            return "connected only after the attack ended"
        self.result.open_now += 1
        self.result.peak_open = max(self.result.peak_open, self.result.open_now)
        try:
            sent = 0
            while self.remaining() > 0:
                if sent < len(dribble):
                    client.writer.write(dribble[sent : sent + 1])
                    sent += 1
                try:
                    data = await asyncio.wait_for(
                        client.reader.read(4096), min(1.0, self.remaining())
                    )
                except TimeoutError:
                    continue
                if not data:
                    held = time.monotonic() - opened
                    when = (
                        "within 1 s" if held < 1 else "after 1-10 s" if held < 10 else "after >10 s"
                    )
                    return f"closed by the gateway {when}"
            return "held until the end of the attack"
        finally:
            self.result.open_now -= 1
            client.abort()

    async def authenticated(self, source: str) -> Smtp:
        client = await Smtp.open(self.target.port, self.target.io_timeout, source=source)
        reply = await client.login(self.trusting, self.attacker.email, self.attacker.password)
        if not reply.startswith("235"):
            client.abort()
            raise SmtpFailure("AUTH", reply_category(reply))
        return client

    # 1. failed TLS handshakes

    async def handshake(self) -> None:
        variants = (
            ("TLS 1.1 on 465", self.tls11_on_465),
            ("TCP connect+close on 465", self.tcp_close_465),
            ("STARTTLS then close", self.starttls_close),
            ("TLS 1.1 after STARTTLS", self.tls11_after_starttls),
            ("foreign CA certificate on 465", self.foreign_cert_465),
        )

        async def op(index: int, n: int) -> str:
            name, variant = variants[n % len(variants)]
            try:
                return f"{name}: {await variant(source_address(1, n))}"
            except (SmtpFailure, OSError, ssl.SSLError, TimeoutError) as exc:
                return f"{name}: {failure(exc, 'unexpected', HANDSHAKE_TIMEOUT)}"

        await self.loops(self.attackers, op)

    async def tls11_on_465(self, source: str) -> str:
        client = await Smtp.open(
            self.target.tls_port, HANDSHAKE_TIMEOUT, source=source, tls=self.tls11
        )
        client.abort()
        return "handshake succeeded (it should not)"

    async def tcp_close_465(self, source: str) -> str:
        client = await Smtp.open(self.target.tls_port, HANDSHAKE_TIMEOUT, source=source)
        client.writer.close()
        return "closed"

    async def starttls_close(self, source: str) -> str:
        client = await Smtp.open(self.target.port, HANDSHAKE_TIMEOUT, source=source)
        try:
            await client.expect(220, "greeting")
            await client.command(b"EHLO " + CLIENT_NAME.encode(), 250)
            await client.command(b"STARTTLS", 220)
        finally:
            client.abort()
        return "closed after 220"

    async def tls11_after_starttls(self, source: str) -> str:
        client = await Smtp.open(self.target.port, HANDSHAKE_TIMEOUT, source=source)
        try:
            await client.expect(220, "greeting")
            await client.command(b"EHLO " + CLIENT_NAME.encode(), 250)
            await client.starttls(self.tls11)
        finally:
            client.abort()
        return "handshake succeeded (it should not)"

    async def foreign_cert_465(self, source: str) -> str:
        """The handshake takes any certificate and the session judges it: the client is
        greeted, and its certificate identifies nobody (AUTH EXTERNAL says why)."""
        client = await Smtp.open(
            self.target.tls_port, HANDSHAKE_TIMEOUT, source=source, tls=self.foreign_tls
        )
        try:
            client.step = "after handshake"
            line = await client.read_reply()
            if not line.startswith("220"):
                return f"refused: {reply_category(line)}"
            await client.command(b"EHLO " + CLIENT_NAME.encode(), 250)
            client.step = "AUTH EXTERNAL"
            client.writer.write(b"AUTH EXTERNAL =\r\n")
            answer = await client.read_reply()
        finally:
            client.abort()
        return f"greeted; AUTH EXTERNAL: {reply_category(answer)}"

    # 2. slow clients

    async def slow(self) -> None:
        command = b"EHLO slow.example\r\n" + b"NOOP\r\n" * 100

        async def op(index: int, n: int) -> str:
            source = source_address(2, index // SLOW_PER_ADDRESS)
            if index % 2:
                client = await Smtp.open(self.target.tls_port, HANDSHAKE_TIMEOUT, source=source)
                return "ClientHello on 465: " + await self.hold(client, client_hello())
            client = await Smtp.open(self.target.port, HANDSHAKE_TIMEOUT, source=source)
            return "command on 587: " + await self.hold(client, command)

        await self.loops(self.attackers * SLOW_PER_ADDRESS, op, pause=1.0)

    # 3. idle connections

    async def idle(self) -> None:
        async def op(index: int, n: int) -> str:
            source = source_address(3, index // self.per_ip_cap)
            if index % 2:
                name = "465"
                client = await Smtp.open(
                    self.target.tls_port, HANDSHAKE_TIMEOUT, source=source, tls=self.trusting
                )
            else:
                name = "587"
                client = await Smtp.open(self.target.port, HANDSHAKE_TIMEOUT, source=source)
            try:
                greeting = await client.read_reply()
                if not greeting.startswith("220"):
                    return f"{name}: refused: {reply_category(greeting)}"
                return f"{name}: {await self.hold(client)}"
            finally:
                client.abort()

        await self.loops(self.attackers * self.per_ip_cap, op, pause=1.0)

    # 4. password guessing

    async def guess(self) -> None:
        async def op(index: int, n: int) -> str:
            client = await Smtp.open(
                self.target.port, self.target.io_timeout, source=source_address(4, n)
            )
            try:
                name = f"guess{n}.{secrets.token_hex(3)}@{DOMAIN}"
                reply = await client.login(self.trusting, name, secrets.token_urlsafe(12))
                await client.quit()
            finally:
                client.abort()
            return f"AUTH: {reply_category(reply)}"

        await self.loops(self.attackers, op)

    # 5. valid-credential login loop

    async def login(self) -> None:
        async def op(index: int, n: int) -> str:
            client = await Smtp.open(
                self.target.port, self.target.io_timeout, source=source_address(5, 0)
            )
            try:
                reply = await client.login(
                    self.trusting, self.attacker.email, self.attacker.password
                )
                await client.quit()
            finally:
                client.abort()
            return f"AUTH: {reply_category(reply)}"

        await self.loops(min(self.attackers, self.per_ip_cap), op)

    # 6. From: bombs

    async def frombomb(self) -> None:
        sender = self.attacker.email
        addresses: list[str] = []
        size = 0
        while size < FROM_BOMB_BYTES:
            address = f"<user{len(addresses)}@{DOMAIN}>"
            addresses.append(address)
            size += len(address) + 4
        folded = b"From: " + ",\r\n ".join(addresses).encode() + b"\r\n"
        nested = (
            b"From: "
            + b"(" * NESTED_COMMENTS
            + b"x"
            + b")" * NESTED_COMMENTS
            + f" <{sender}>\r\n".encode()
        )
        bombs = (("folded From:", folded), ("nested comments", nested))

        async def op(index: int, n: int) -> str:
            name, header = bombs[n % len(bombs)]
            client = await self.authenticated(source_address(6, 0))
            payload = header + f"To: <{RECIPIENT}>\r\nSubject: bomb\r\n\r\nbomb\r\n.\r\n".encode()
            try:
                return f"{name}: " + await self.final_reply(client, payload)
            finally:
                client.abort()

        await self.loops(min(self.attackers, 2), op)

    async def final_reply(self, client: Smtp, payload: bytes) -> str:
        try:
            reply = await client.send(self.attacker.email, payload)
        except SmtpFailure as refused:
            return str(refused)
        await client.quit()
        return reply_category(reply)

    # 7. short-line DATA

    async def shortlines(self) -> None:
        head = f"From: <{self.attacker.email}>\r\nTo: <{RECIPIENT}>\r\nSubject: short\r\n\r\n"
        payload = head.encode() + b"\r\n" * (SHORT_LINE_BYTES // 2) + b".\r\n"

        async def op(index: int, n: int) -> str:
            client = await self.authenticated(source_address(7, 0))
            try:
                return await self.final_reply(client, payload)
            finally:
                client.abort()

        await self.loops(min(self.attackers, 2), op)


def attack_process(
    name: str,
    target: Target,
    attackers: int,
    per_ip_cap: int,
    attacker: Account,
    foreign: Account,
    barrier: Any,
    out: Connection,
) -> None:
    target = begin(target, barrier)

    async def run() -> AttackResult:
        attack = Attack(target, attackers, per_ip_cap, attacker, foreign)
        hard_limit = attack.remaining() + CHILD_MARGIN / 2
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(getattr(attack, name)(), max(hard_limit, 1.0))
        return attack.result

    out.send(asyncio.run(run()))
    out.close()


# --- one phase -----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    attack_ops: int = 0
    attack_outcomes: dict[str, int] = field(default_factory=dict)
    attack_peak_open: int = 0
    legit_attempts: int = 0
    legit_ok: int = 0
    success_pct: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    legit_failures: dict[str, int] = field(default_factory=dict)
    rss_kib: list[int] = field(default_factory=list)  # before, peak, after
    fds: list[int] = field(default_factory=list)  # before, peak, after
    gateway_cpu_s: float = 0.0
    lost: int = 0
    stored: int = 0
    gateway_exit: int | None = None
    gateway_log_problems: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def check_sink(sink_dir: Path, accepted: list[str]) -> tuple[int, int]:
    """How many accepted legitimate messages the smarthost stored, and how many it lacks;
    then empty its folder (attack messages included) for the next phase."""
    seen: set[str] = set()
    for meta in sink_dir.glob("*.json"):
        eml = meta.with_suffix(".eml")
        if eml.exists():
            seen.update(m.decode() for m in HOSTILE_HEADER.findall(eml.read_bytes()))
    for path in sink_dir.iterdir():
        path.unlink(missing_ok=True)
    wanted = set(accepted)
    return len(wanted & seen), len(wanted - seen)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class Setup:
    base: Path
    config: Path
    ca_file: Path
    per_ip_cap: int
    workers: int  # [server] workers; 0: one per core
    argon2: dict[str, int]
    password_users: list[Account]
    cert_users: list[Account]
    attacker: Account
    foreign: Account


POSTFIX_DRAIN_SECONDS = 600.0


def run_phase(
    name: str,
    args: argparse.Namespace,
    setup: Setup,
    sink: Sink,
    run_id: str,
    smarthost: str,
    postfix: PostfixInstance | None = None,
) -> Phase:
    phase = Phase(name, args.seconds)
    gateway = Gateway(setup.config.parent, smarthost, setup.base / f"gw-{name}.log")
    gateway.start()
    assert gateway.proc is not None
    pid = gateway.proc.pid
    ctx = multiprocessing.get_context("spawn")
    children: list[tuple[Any, Connection]] = []
    try:
        target = Target(
            gateway.port, gateway.tls_port, str(setup.ca_file), args.io_timeout, args.seconds
        )
        warm_up(target, setup)
        rss, fds = [status_kib(pid, "VmRSS")], [open_fds(pid)]
        cpu_start = cpu_seconds(pid)
        barrier = ctx.Barrier(2 if name == "baseline" else 3)
        receive, send = ctx.Pipe(duplex=False)
        legit = ctx.Process(
            name="the legitimate clients",
            target=legit_process,
            args=(
                target,
                setup.password_users,
                setup.cert_users,
                args.clients,
                args.pause,
                f"{run_id}.{name}",
                barrier,
                send,
            ),
        )
        children.append((legit, receive))
        if name != "baseline":
            receive, send = ctx.Pipe(duplex=False)
            attacker = ctx.Process(
                name="the attacker",
                target=attack_process,
                args=(
                    name,
                    target,
                    args.attackers,
                    setup.per_ip_cap,
                    setup.attacker,
                    setup.foreign,
                    barrier,
                    send,
                ),
            )
            children.append((attacker, receive))
        for process, _ in children:
            process.start()
        try:
            target = begin(target, barrier)
        except threading.BrokenBarrierError:
            raise RuntimeError(f"{name}: the client processes did not start") from None
        results = collect(children, target.deadline + CHILD_MARGIN, pid, rss, fds, phase)
        if gateway.proc.poll() is None:
            time.sleep(args.settle)
        if gateway.proc.poll() is not None:
            phase.problems.append(f"the gateway died (exit code {gateway.proc.returncode})")
            rss.append(0)
            fds.append(0)
        else:
            phase.gateway_cpu_s = cpu_seconds(pid) - cpu_start
            rss.append(status_kib(pid, "VmRSS"))
            fds.append(open_fds(pid))
        phase.rss_kib, phase.fds = [rss[0], max(rss), rss[-1]], [fds[0], max(fds), fds[-1]]
        legit_result = results[0]
        if isinstance(legit_result, LegitResult):
            summarise_legit(phase, legit_result)
            if postfix is not None:
                # Postfix said 250: the message is at the smarthost. Its delivery to the
                # sink (slow with odd messages) is not the gateway's; wait for it, then
                # check that every message really arrived.
                held = postfix.wait_until_delivered(POSTFIX_DRAIN_SECONDS)
                if held:
                    phase.problems.append(f"Postfix still held {held} file(s) in its queue")
            phase.stored, phase.lost = check_sink(sink.directory, legit_result.ok)
        if len(results) > 1 and isinstance(results[1], AttackResult):
            phase.attack_ops = results[1].ops
            phase.attack_outcomes = dict(results[1].outcomes.most_common())
            phase.attack_peak_open = results[1].peak_open
    finally:
        for process, receive in children:
            if process.is_alive():
                process.terminate()
            process.join(5)
            receive.close()
        phase.gateway_exit = gateway.stop()
        problems: Counter[str] = Counter()
        for text, n in gateway.log_problems().items():
            problems[" ".join(text.split())[:160]] += n
        phase.gateway_log_problems = dict(problems.most_common())
        if phase.gateway_exit not in (0, None):
            phase.problems.append(f"the gateway stopped with exit code {phase.gateway_exit}")
    if phase.lost:
        phase.problems.append(f"{phase.lost} message(s) got 250 but never reached the smarthost")
    return phase


def collect(
    children: list[tuple[Any, Connection]],
    hard_deadline: float,
    pid: int,
    rss: list[int],
    fds: list[int],
    phase: Phase,
) -> list[object]:
    """Wait for every child's result, sampling the gateway's memory and descriptors meanwhile;
    a child that has not answered by `hard_deadline` is stopped."""
    results: list[object] = [None] * len(children)
    pending = set(range(len(children)))
    while pending and time.monotonic() < hard_deadline:
        for i in list(pending):
            process, receive = children[i]
            if receive.poll():
                with contextlib.suppress(EOFError):
                    results[i] = receive.recv()
                pending.discard(i)
            elif not process.is_alive():
                phase.problems.append(f"{process.name} ended without a result")
                pending.discard(i)
        with contextlib.suppress(OSError):
            rss.append(status_kib(pid, "VmRSS"))
            fds.append(open_fds(pid))
        time.sleep(SAMPLE_INTERVAL)
    for i in pending:
        phase.problems.append(f"{children[i][0].name} did not finish in time and was stopped")
    return results


def summarise_legit(phase: Phase, result: LegitResult) -> None:
    phase.legit_attempts = result.attempts
    phase.legit_ok = len(result.ok)
    phase.success_pct = 100.0 * len(result.ok) / result.attempts if result.attempts else 0.0
    phase.p50_ms = percentile(result.latencies, 0.5)
    phase.p95_ms = percentile(result.latencies, 0.95)
    phase.legit_failures = dict(result.failures.most_common())


def warm_up(target: Target, setup: Setup) -> None:
    """One message per kind of user before measuring: the first connection of a fresh gateway
    pays for imports and caches that are not the attack's doing."""

    async def run() -> None:
        for account in (setup.password_users[0], *setup.cert_users[:1]):
            tls = client_context(target.ca_file, account)
            try:
                await legit_message(target, account, tls, f"warmup.{secrets.token_hex(4)}")
            except (SmtpFailure, OSError, ssl.SSLError, TimeoutError) as exc:
                raise RuntimeError(f"warm-up message of {account.email} failed: {exc!r}") from exc

    asyncio.run(run())


# --- setup ---------------------------------------------------------------------------------------


def prepare(base: Path, args: argparse.Namespace, phases: list[str]) -> Setup:
    setup_dir = base / "setup"
    run_cli("init", "--dir", str(setup_dir), "--hostname", "hostile.test")
    config = setup_dir / "submitgw.toml"
    text = config.read_text()
    # Sending limits are not under test; every login and connection limit keeps its default.
    limits = ("messages_per_user", "recipients_per_user", "messages_per_ip", "recipients_per_ip")
    text = set_toml_keys(text, "limits", dict.fromkeys(limits, SENDING_LIMIT))
    text = set_toml_keys(text, "submissions", {"client_certificates": "optional"})
    server: dict[str, Any] = {"shutdown_grace": SHUTDOWN_GRACE}
    if args.workers is not None:
        server["workers"] = args.workers
    text = set_toml_keys(text, "server", server)
    if args.argon2 == "test":
        # Before `user add`: the stored hashes use these parameters, so no rehash at login.
        text = set_toml_keys(text, "auth", CHEAP_ARGON2)
    config.write_text(text)
    settings = tomllib.loads(text)
    certs = base / "certs"
    certs.mkdir()

    def add_password_user(email: str) -> Account:
        password = secrets.token_urlsafe(18)
        run_cli("--config", str(config), "user", "add", email, "--password-stdin", stdin=password)
        return Account(email, password=password)

    def add_cert_user(conf: Path, email: str, folder: Path) -> Account:
        run_cli("--config", str(conf), "user", "add", email, "--auth", "certificate")
        run_cli(
            "--config",
            str(conf),
            "pki",
            "issue",
            email,
            "--out",
            str(folder),
            "--p12-password-stdin",
            stdin=secrets.token_urlsafe(18),
        )
        return Account(email, cert=str(folder / f"{email}.crt"), key=str(folder / f"{email}.key"))

    def add_foreign_cert_user() -> Account:
        """A whole second setup, for a CA the gateway has never seen and a certificate from it."""
        foreign_dir, foreign_certs = base / "foreign", base / "foreign-certs"
        foreign_certs.mkdir()
        run_cli("init", "--dir", str(foreign_dir), "--hostname", "foreign.test")
        return add_cert_user(foreign_dir / "submitgw.toml", ATTACKER, foreign_certs)

    # Each CLI call starts an interpreter; independent ones run side by side (SQLite waits for
    # its lock) to keep the setup short.
    users = range(1, args.users + 1)
    with ThreadPoolExecutor(max_workers=SETUP_WORKERS) as pool:
        password_jobs = [pool.submit(add_password_user, f"pw{i}@{DOMAIN}") for i in users]
        cert_jobs = [pool.submit(add_cert_user, config, f"cert{i}@{DOMAIN}", certs) for i in users]
        attacker_job = (
            pool.submit(add_password_user, ATTACKER)
            if {"login", "frombomb", "shortlines"} & set(phases)
            else None
        )
        foreign_job = pool.submit(add_foreign_cert_user) if "handshake" in phases else None
        password_users = [job.result() for job in password_jobs]
        cert_users = [job.result() for job in cert_jobs]
        attacker = attacker_job.result() if attacker_job else Account(ATTACKER)
        foreign = foreign_job.result() if foreign_job else Account(ATTACKER)
    return Setup(
        base=base,
        config=config,
        ca_file=setup_dir / "ca" / "ca.crt",
        per_ip_cap=settings["limits"]["max_connections_per_ip"],
        workers=settings["server"]["workers"],
        argon2={k: settings["auth"][k] for k in CHEAP_ARGON2},
        password_users=password_users,
        cert_users=cert_users,
        attacker=attacker,
        foreign=foreign,
    )


# --- report --------------------------------------------------------------------------------------

TABLE_HEADER = (
    "| attack | attack ops | legit ok | success | p50 ms | p95 ms "
    "| gateway RSS MiB before / peak / after | open fds before / peak / after "
    "| gateway CPU s | lost |"
)


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def table_row(p: dict[str, Any]) -> str:
    rss = " / ".join(f"{k / 1024:.1f}" for k in p["rss_kib"]) if p["rss_kib"] else "–"
    fds = " / ".join(str(n) for n in p["fds"]) if p["fds"] else "–"
    ops = "–" if p["name"] == "baseline" else str(p["attack_ops"])
    return (
        f"| {p['name']} | {ops} | {p['legit_ok']}/{p['legit_attempts']} "
        f"| {p['success_pct']:.1f} % | {ms(p['p50_ms'])} | {ms(p['p95_ms'])} | {rss} | {fds} "
        f"| {p['gateway_cpu_s']:.1f} | {p['lost']} |"
    )


def print_report(report: dict[str, Any]) -> None:
    m, s = report["machine"], report["settings"]
    print(
        f"submitgw hostile-network test: {s['seconds']:g} s per phase, {s['clients']} legitimate "
        f"clients (pause {s['pause']:g} s), {s['attackers']} attackers; gateway workers "
        f"{s['workers']} (0: one per core); argon2 {s['argon2']} "
        f"({s['argon2_params']}); {m['cpu_model']}, {m['usable_cores']} usable cores, "
        f"load average {m['loadavg_at_start']} at start, {m['loadavg_at_end']} at end"
    )
    print()
    print(TABLE_HEADER)
    print("|" + " --- |" * TABLE_HEADER.count(" | ") + " --- |")
    for p in report["phases"]:
        print(table_row(p))
    print()
    print(
        "success: legitimate messages that got 250 / started; p50/p95: connect to the 250 "
        "after DATA; after: "
        f"{s['settle']:g} s after the attack stopped; lost: got 250 but not at the smarthost."
    )
    for p in report["phases"]:
        lines = []
        for text, n in list(p["legit_failures"].items())[:MAX_REASONS_SHOWN]:
            lines.append(f"  - legit failed {n} x {text}")
        for text, n in list(p["attack_outcomes"].items())[:MAX_REASONS_SHOWN]:
            lines.append(f"  - attack {n} x {text}")
        if p["attack_peak_open"]:
            lines.append(f"  - attack connections held at once: at most {p['attack_peak_open']}")
        for text, n in list(p["gateway_log_problems"].items())[:MAX_REASONS_SHOWN]:
            lines.append(f"  - gateway log {n} x {text}")
        lines += [f"  - PROBLEM: {text}" for text in p["problems"]]
        if lines:
            print(f"\n{p['name']}:")
            print("\n".join(lines))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Legitimate users' mail under attacks, against a real submitgw process "
        "(loopback only).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seconds", type=float, default=20.0, help="duration of each phase")
    p.add_argument(
        "--attacks",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, of: {', '.join(PHASES)}",
    )
    p.add_argument(
        "--argon2",
        choices=("production", "test"),
        default="production",
        help="production: the generated config's argon2 settings; test: time_cost=1, 8 MiB",
    )
    p.add_argument(
        "--attackers", type=int, default=8, help="attacker connections / source addresses"
    )
    p.add_argument("--clients", type=int, default=4, help="legitimate clients at a time")
    p.add_argument(
        "--users", type=int, default=2, help="password users, and certificate users, to create"
    )
    p.add_argument("--pause", type=float, default=0.3, help="seconds between a client's messages")
    p.add_argument(
        "--settle", type=float, default=3.0, help="seconds after an attack before 'after'"
    )
    p.add_argument("--io-timeout", type=float, default=15.0, help="seconds per reply")
    p.add_argument(
        "--workers",
        type=int,
        help="[server] workers of the gateway (default: the generated config's, one per core); "
        "1 starts one process instead of a supervisor and its workers",
    )
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the whole report as JSON to FILE"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    p.add_argument(
        "--postfix",
        action="store_true",
        help="put a private Postfix (root only) between the gateway and the capture sink, "
        "as a real smarthost would be: it queues at once, so the sink's own slowness with "
        "odd messages no longer holds up the gateway",
    )
    args = p.parse_args(argv)
    args.phases = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in args.phases if a not in PHASES]
    if unknown or not args.phases:
        p.error(f"--attacks: unknown {unknown}; choose from {', '.join(PHASES)}")
    if not 0 < args.seconds <= 600:
        p.error("--seconds must be more than 0 and at most 600")
    if not 1 <= args.attackers <= ROTATING_ADDRESSES:
        p.error(f"--attackers must be between 1 and {ROTATING_ADDRESSES}")
    if not 1 <= args.clients <= 64 or not 1 <= args.users <= 20:
        p.error("--clients must be between 1 and 64, --users between 1 and 20")
    if args.workers is not None and args.workers < 0:
        p.error("--workers must not be negative (0: one per core)")
    if args.pause < 0 or args.settle < 0 or args.io_timeout <= 0:
        p.error("--pause and --settle must not be negative, --io-timeout must be positive")
    return args


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM ends the run like Ctrl-C: through the `finally` that stops the gateway."""
    raise KeyboardInterrupt(f"signal {signum}")


def start_postfix(sink: Sink) -> PostfixInstance:
    """A private Postfix instance, relaying to `sink` (it needs root)."""
    return PostfixInstance(HOST, sink.port).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    base = Path(tempfile.mkdtemp(prefix="submitgw-hostile-"))
    report: dict[str, Any] = {"machine": machine_context(), "phases": []}
    sink = Sink(base / "mail", base / "sink.log")
    postfix: PostfixInstance | None = None
    run_id = secrets.token_hex(4)
    try:
        say(f"setting up in {base}")
        setup = prepare(base, args, args.phases)
        report["settings"] = {
            "seconds": args.seconds,
            "clients": args.clients,
            "pause": args.pause,
            "attackers": args.attackers,
            "settle": args.settle,
            "workers": setup.workers,
            "argon2": args.argon2,
            "argon2_params": ", ".join(f"{k}={v}" for k, v in setup.argon2.items()),
            "max_connections_per_ip": setup.per_ip_cap,
        }
        sink.start()
        smarthost = f"{HOST}:{sink.port}"
        if args.postfix:
            postfix = start_postfix(sink)
            smarthost = postfix.address
        for name in args.phases:
            say(f"{name}: {args.seconds:g} s")
            phase = run_phase(name, args, setup, sink, run_id, smarthost, postfix)
            say(
                f"  legit {phase.legit_ok}/{phase.legit_attempts} ok, attack ops "
                f"{phase.attack_ops}, problems: {phase.problems or 'none'}"
            )
            report["phases"].append(asdict(phase))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; the gateway and the sink were stopped")
        return 130
    finally:
        if postfix is not None:
            postfix.stop()
        sink.stop()
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    return 1 if any(p["problems"] for p in report["phases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
