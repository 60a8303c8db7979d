#!/usr/bin/env python3
"""A stand-in for the internal MTA: an SMTP server that stores every accepted message as files.

The quick start uses it so that mail can be seen flowing without installing a real MTA, and the
test suite uses it as "the smarthost" whose behaviour can be bent (rejections, temporary
failures, slowness, dropped connections, STARTTLS, AUTH) to exercise the gateway's relay paths.

Each accepted message becomes ``DIR/<seq>.eml`` (the exact bytes received, after dot-unstuffing)
followed by ``DIR/<seq>.json`` (the envelope), the latter renamed into place so that a reader
that sees the ``.json`` file can rely on both files being complete. ``<seq>`` is a 20-digit,
zero-padded nanosecond timestamp: unique, and sortable as text, across restarts too. A message
is stored only when it is accepted, so a rejected, dropped or interrupted transaction leaves no
files behind.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hmac
import json
import logging
import os
import signal
import ssl
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import (
    SMTP,
    AuthenticatorType,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
)

LOG = logging.getLogger("capture-smarthost")
DEFAULT_LISTEN = "127.0.0.1:2525"
DEFAULT_HOSTNAME = "capture-smarthost.test"
DEFAULT_MAX_SIZE = 32 * 1024 * 1024
SEQ_WIDTH = 20
MAX_SEQ_ATTEMPTS = 1000


@dataclass(frozen=True)
class Behaviour:
    """What the sink does besides accepting mail; every field defaults to "behave normally"."""

    reject_rcpt: tuple[str, ...] = ()
    tempfail_rcpt: tuple[str, ...] = ()
    reject_data: bool = False
    data_delay: float = 0.0
    drop_after_data: bool = False
    auth: tuple[bytes, bytes] | None = None


class MessageStore:
    """Writes messages so that a poller never sees a half-written one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._last_ns = 0

    def _claim_seq(self) -> tuple[str, int]:
        """Create the .eml file exclusively, so that even two sinks sharing a directory never
        overwrite each other's messages."""
        for _ in range(MAX_SEQ_ATTEMPTS):
            ns = max(time.time_ns(), self._last_ns + 1)
            self._last_ns = ns
            seq = f"{ns:0{SEQ_WIDTH}d}"
            try:
                fd = os.open(
                    self.directory / f"{seq}.eml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
                )
            except FileExistsError:
                continue
            return seq, fd
        raise RuntimeError(f"no free message name in {self.directory}")

    def save(self, raw: bytes, envelope: dict[str, Any]) -> str:
        seq, fd = self._claim_seq()
        with os.fdopen(fd, "wb") as eml:
            eml.write(raw)
        record = {"seq": seq, **envelope}
        tmp = self.directory / f".{seq}.json.tmp"
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.directory / f"{seq}.json")
        return seq


def _peer(peer: Any) -> list[Any] | None:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return [peer[0], peer[1]]
    return None


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


@dataclass
class CaptureHandler:
    """aiosmtpd handler implementing the test behaviours and storing accepted messages."""

    behaviour: Behaviour
    store: MessageStore
    stored: int = 0

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd offers AUTH after STARTTLS even with no credentials configured; a sink that
        was not asked for AUTH must not advertise it, or clients would try (and fail) to log in."""
        session.host_name = hostname
        if self.behaviour.auth is None:
            return [r for r in responses if not r[4:].upper().startswith("AUTH")]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if any(s in address for s in self.behaviour.reject_rcpt):
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        if any(s in address for s in self.behaviour.tempfail_rcpt):
            return f"450 4.2.0 <{address}>: Recipient address temporarily rejected, try later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        LOG.info("quit from %s", session.peer)
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.behaviour.data_delay > 0:
            await asyncio.sleep(self.behaviour.data_delay)
        if self.behaviour.drop_after_data:
            LOG.info("dropping the connection from %s without a reply", session.peer)
            if isinstance(server.transport, asyncio.Transport):
                server.transport.abort()
            # aiosmtpd's own reply is swallowed by the aborted transport.
            return "421 4.3.0 Connection dropped by test"
        if self.behaviour.reject_data:
            return "554 5.6.0 Rejected by test"
        raw = envelope.original_content or b""
        mail_from = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
        record = {
            "mail_from": mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "mail_options": list(envelope.mail_options),
            "peer": _peer(session.peer),
            "received_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds"),
            "size": len(raw),
            "helo": session.host_name,
            "tls": session.ssl is not None,
            "auth_user": _text(session.login_data) if session.authenticated else None,
        }
        seq = self.store.save(raw, record)
        self.stored += 1
        LOG.info("stored %s: <%s> -> %s, %d bytes", seq, mail_from, envelope.rcpt_tos, len(raw))
        return f"250 2.0.0 Ok: queued as {seq}"


def make_authenticator(user: bytes, password: bytes) -> AuthenticatorType:
    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and hmac.compare_digest(auth_data.login, user)
            and hmac.compare_digest(auth_data.password, password)
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return authenticate


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_auth(value: str) -> tuple[bytes, bytes]:
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected USER:PASSWORD")
    return user.encode(), password.encode()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=parse_listen, default=parse_listen(DEFAULT_LISTEN))
    p.add_argument("--dir", type=Path, default=Path("captured-mail"))
    p.add_argument("--hostname", default=DEFAULT_HOSTNAME, help="name in banner and EHLO reply")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, help="SIZE limit in bytes")
    p.add_argument("--reject-rcpt", action="append", default=[], metavar="SUBSTRING")
    p.add_argument("--tempfail-rcpt", action="append", default=[], metavar="SUBSTRING")
    p.add_argument("--reject-data", action="store_true")
    p.add_argument("--data-delay", type=float, default=0.0, metavar="SECONDS")
    p.add_argument("--drop-after-data", action="store_true")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close a client silent this long (421, as MTAs do with idle clients)",
    )
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--auth", type=parse_auth, metavar="USER:PASSWORD")
    p.add_argument("--smtputf8", action="store_true")
    p.add_argument("--verbose", action="store_true", help="log the SMTP dialogue to stderr")
    return p


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    except (OSError, ssl.SSLError) as exc:
        LOG.error("cannot load the TLS certificate or key: %s", exc)
        return 1
    behaviour = Behaviour(
        reject_rcpt=tuple(args.reject_rcpt),
        tempfail_rcpt=tuple(args.tempfail_rcpt),
        reject_data=args.reject_data,
        data_delay=args.data_delay,
        drop_after_data=args.drop_after_data,
        auth=args.auth,
    )
    handler = CaptureHandler(behaviour, MessageStore(args.dir))
    authenticator = make_authenticator(*args.auth) if args.auth else None
    sessions: list[SMTP] = []

    def factory() -> SMTP:
        smtp = SMTP(
            handler,
            hostname=args.hostname,
            ident="capture-smarthost",
            data_size_limit=args.max_size,
            enable_SMTPUTF8=args.smtputf8,
            tls_context=tls,
            auth_required=args.auth is not None,
            auth_require_tls=tls is not None,
            authenticator=authenticator,
            timeout=args.idle_timeout,
            loop=loop,
        )
        LOG.info("connection accepted")
        sessions[:] = [s for s in sessions if s.transport is not None]
        sessions.append(smtp)
        return smtp

    host, port = args.listen
    try:
        server = await loop.create_server(factory, host=host, port=port)
    except OSError as exc:
        LOG.error("cannot listen on %s:%d: %s", host, port, exc)
        return 1
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"capture-smarthost listening on {shown}:{bound[1]}", flush=True)
    LOG.info("storing messages in %s", args.dir.resolve())

    await stop.wait()
    server.close()
    for smtp in sessions:
        if smtp.transport is not None:
            smtp.transport.close()
    await server.wait_closed()
    LOG.info("stopped after storing %d message(s)", handler.stored)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.INFO if args.verbose else logging.ERROR)
    # AUTH without TLS is exactly what a plain-text test of smarthost credentials needs.
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
