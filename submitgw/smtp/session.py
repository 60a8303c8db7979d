"""The SMTP session: our own protocol and command loop over the socket or the TLS layer.

aiosmtpd's command loop answers without enhanced status codes, leaks exception
text, times out only between commands and reads AUTH synchronously, and its
STARTTLS needs private asyncio names; so the session is a plain asyncio protocol
that reads through a `StreamReader` and puts `tlslayer.TlsLayer` under itself.
This module is the only place where a `Refusal` becomes bytes on the wire,
worded by `replies`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import ClassVar

from OpenSSL import SSL

from submitgw.config import Config, ListenerConfig
from submitgw.errors import Kind, Refusal, RelayError
from submitgw.rules import certificates, message, policy, proxy
from submitgw.rules import session as rules
from submitgw.rules.address import MailParams, normalise_login, parse_mail_from, parse_rcpt_to
from submitgw.rules.binding import HeaderLimits, from_addresses, simple_from_addresses
from submitgw.rules.limits import Quota
from submitgw.services import audit
from submitgw.services.authn import (
    CertificateAuthenticator,
    PasswordAuthenticator,
    decode_sasl,
    split_plain,
)
from submitgw.services.limiter import Limiter
from submitgw.services.screening import ClientScreen
from submitgw.services.senders import Senders
from submitgw.smtp import replies
from submitgw.smtp.connections import CLOSE_GRACE, Connection, ConnectionTable, Intake
from submitgw.smtp.dataread import DataDecoder
from submitgw.smtp.relay import ConnectionPool, PoolCounts, Smarthost, as_client_reply
from submitgw.smtp.tlslayer import TlsLayer
from submitgw.tls import describe
from submitgw.types import CertificateUser, CertificateVerdict, Identity

log = logging.getLogger(__name__)

DATA_LINE_LIMIT = 1001  # RFC 5321 4.5.3.1.6: 998 + CRLF, plus one stuffed dot
# How often, at most, a DATA transfer that is making progress moves its idle timer.
_IDLE_SLACK = 1.0
# DATA reads between two turns of the event loop (data is often already buffered).
_READS_PER_TURN = 64
# Header sections up to this size are tried on the loop first: the simple reading is linear.
_SIMPLE_FROM_BYTES = 16 * 1024


class _Closed(Exception):
    """The client went away or the session must end now."""


class _LineTooLong(Exception):
    pass


@dataclass(frozen=True)
class Listener:
    """One listening socket's settings: its name, TLS context and certificate rules."""

    name: str
    implicit_tls: bool
    tls_context: SSL.Context
    settings: ListenerConfig


@dataclass
class Transaction:
    sender: str
    params: MailParams
    recipients: list[str] = field(default_factory=list)
    # The sending limits read at MAIL, checked again at each RCPT.
    quota: Quota | None = None


@dataclass(frozen=True)
class _Door:
    """What a listener's new connections take: its settings and its PROXY intake."""

    listener: Listener
    intake: Intake | None


@dataclass(frozen=True)
class _Sent:
    """What the log and the trail say of a message handed to the smarthost."""

    queue_id: str
    message_id: str | None
    size: int


class Gateway:
    """State shared by all sessions: configuration, services, and the live-session set.

    `cfg` and the listeners are what new connections take; a session keeps the
    configuration and listener (TLS context included) it was made with, so a live
    reload (`reconfigure`) never changes a conversation under way.
    """

    def __init__(
        self,
        cfg: Config,
        authenticator: PasswordAuthenticator,
        certificates: CertificateAuthenticator | None = None,
        screen: ClientScreen | None = None,
        *,
        senders: Senders | None = None,
        limiter: Limiter | None = None,
        recorder: audit.Recorder | None = None,
    ) -> None:
        self.cfg = cfg
        self.recorder = recorder or audit.Recorder()
        self.authenticator = authenticator
        self.certificates = certificates
        self.screen = screen
        # Who may send as what; without a store, users may use their own address only.
        self.senders = senders
        # Sending limits and login lockouts; None (tests) checks neither.
        self.limiter = limiter
        self.sessions: set[Session] = set()
        self.connections = ConnectionTable(
            cfg.limits.max_connections, cfg.limits.max_connections_per_ip
        )
        self._doors: dict[str, _Door] = {}
        self.stopping = False
        self._background: set[asyncio.Task[None]] = set()
        # Idle smarthost connections for the sessions made with `cfg` (see `pool_for`).
        self.pool = ConnectionPool(cfg.smarthost, cfg.server.hostname, PoolCounts())

    def spawn(self, work: Coroutine[object, object, None]) -> None:
        """Run clean-up work that must outlive the session that started it."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _door(self, listener: Listener) -> _Door:
        settings = listener.settings
        intake = (
            Intake(
                proxy.TrustedProxies(settings.trusted_proxies),
                self.cfg.limits.tls_handshake_timeout,
            )
            if settings.proxy_protocol
            else None
        )
        return _Door(listener, intake)

    def connection_factory(self, listener: Listener) -> Callable[[], Connection]:
        """Each accepted socket is counted (and maybe refused) before any TLS work."""
        self._doors[listener.name] = self._door(listener)
        return lambda: self._accept(listener.name)

    def _accept(self, name: str) -> Connection:
        """The listener's settings and the configuration of this moment, for the session's
        whole life (it is made later, after a PROXY header)."""
        door, cfg = self._doors[name], self.cfg
        return Connection(
            self.connections,
            name,
            lambda connection: Session(self, door.listener, connection, cfg),
            greet_refusals=not door.listener.implicit_tls,
            intake=door.intake,
            recorder=self.recorder,
        )

    def reconfigure(
        self,
        cfg: Config,
        listeners: list[Listener],
        certificates: CertificateAuthenticator | None,
    ) -> None:
        """Live reload: connections accepted from now on take `cfg` and these listeners
        (new TLS contexts, certificate and PROXY settings); the connection caps apply at
        once. Sessions under way keep what they were made with."""
        self.cfg = cfg
        self.certificates = certificates
        if not self.pool.serves(cfg.smarthost, cfg.server.hostname):
            # Connections to the old smarthost settings are closed, never reused.
            self.spawn(self.pool.close())
            self.pool = ConnectionPool(cfg.smarthost, cfg.server.hostname, self.pool.counts)
        self.connections.max_total = cfg.limits.max_connections
        self.connections.max_per_client = cfg.limits.max_connections_per_ip
        for listener in listeners:
            self._doors[listener.name] = self._door(listener)

    def pool_for(self, cfg: Config) -> ConnectionPool | None:
        """The pool of a session made with `cfg`: none if a reload changed the smarthost
        settings since (that session keeps its own connection, to its settings)."""
        return self.pool if self.pool.serves(cfg.smarthost, cfg.server.hostname) else None

    async def drain(self, grace: float) -> None:
        """Shutdown: idle sessions get 421 now, busy ones may finish within `grace`."""
        self.stopping = True
        self.connections.closed = True
        for session in list(self.sessions):
            session.request_stop()
        deadline = time.monotonic() + grace
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.abort(Refusal(Kind.SHUTTING_DOWN))
        await self.pool.close()
        if self._background:
            await asyncio.wait(self._background, timeout=5)


class Session(asyncio.Protocol):
    """One client, from its socket's accept to its close: reads commands, answers them.

    The session is the protocol above the socket (plain text), or above the TLS layer
    it puts in between (implicit TLS at once, or after STARTTLS); it reads through a
    `StreamReader` so that command lines and DATA blocks can be awaited.
    """

    def __init__(
        self, gateway: Gateway, listener: Listener, connection: Connection, cfg: Config
    ) -> None:
        self.line_length_limit = max(cfg.limits.max_auth_length, DATA_LINE_LIMIT) + 2
        self.hostname = cfg.server.hostname
        self.loop = asyncio.get_running_loop()
        # The socket's own transport; `transport` is what replies go to (it or TLS).
        self.raw: asyncio.Transport | None = None
        self.transport: asyncio.Transport | None = None
        self.reader = asyncio.StreamReader(limit=self.line_length_limit)
        self.tls: TlsLayer | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._task: asyncio.Task[None] | None = None
        self._backstop: asyncio.TimerHandle | None = None
        self.gw = gateway
        self.cfg = cfg
        self.listener = listener
        self.connection = connection
        self.lost = False
        self.id = secrets.token_hex(6)
        self.tls_info: str | None = None
        self.cert: CertificateUser | None = None
        # What the certificate the client offered came to (None: it offered none).
        self.verdict: CertificateVerdict | None = None
        self.helo: str | None = None
        self.esmtp = False
        self.identity: Identity | None = None
        self.allowed_senders: list[str] | None = None
        self.txn: Transaction | None = None
        self.messages = 0
        self.errors = 0
        self.junk = 0
        # The connection learnt the peer's address before it made the session.
        self.client_ip = connection.client_ip
        self.trail = audit.SessionTrail(gateway.recorder, self.id, listener.name, self.client_ip)
        self.smarthost = Smarthost(
            cfg.smarthost.servers, self.hostname, self.trail.smarthost, gateway.pool_for(cfg)
        )
        self.started = time.monotonic()
        self.deadline = self.started + cfg.limits.max_session_seconds
        self.login_deadline = self.started + cfg.limits.login_timeout
        self.waiting_for_command = False
        self.stop_requested = False
        self.end_reason = "disconnect"

    # --- connection lifecycle -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The socket's transport first; after a TLS handshake, the TLS layer's."""
        assert isinstance(transport, asyncio.Transport)
        if self.raw is not None:
            self._use(transport)
            return
        self.raw = transport
        self.gw.sessions.add(self)
        if self.listener.implicit_tls:
            # Before any byte arrives, so the ClientHello reaches the TLS layer.
            self._begin_tls(discard_pending=False)
        else:
            self._use(transport)
        # A backstop only: the command loop enforces idle and lifetime limits itself.
        limits = self.cfg.limits
        self._backstop = self.loop.call_later(
            limits.max_session_seconds + limits.idle_timeout, transport.abort
        )
        self._task = self.loop.create_task(self._converse())

    def _use(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reader.set_transport(transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed_data(data)

    def eof_received(self) -> bool:
        """The client sends no more: the command loop ends when it has read the rest."""
        self.reader.feed_eof()
        return True

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, error: Exception | None) -> None:
        """Called by the TLS layer, or by the connection when the layer did not."""
        if self.lost:
            return
        self.lost = True
        self.gw.sessions.discard(self)
        self.transport = None
        self._can_write.set()
        if self._backstop is not None:
            self._backstop.cancel()
        if self._task is not None:
            self._task.cancel()

    async def push(self, *lines: str) -> None:
        """Reply lines, in one write (one TLS record, one system call); waits while the
        client is not reading what we sent."""
        transport = self.transport
        if transport is None or self.lost:
            raise ConnectionResetError("connection lost")
        transport.write("".join(line + "\r\n" for line in lines).encode("ascii"))
        if not self._can_write.is_set():
            await self._can_write.wait()

    @property
    def identified(self) -> bool:
        """Logged in, or holding a certificate of a known user: no longer a stranger."""
        return self.identity is not None or self.cert is not None

    def evict(self) -> None:
        """Every slot is taken and a newcomer needs this stranger's."""
        self.end_reason = "evicted"
        self._say_goodbye(Refusal(Kind.EVICTED))

    def request_stop(self) -> None:
        self.stop_requested = True
        if self.waiting_for_command and self.txn is None:
            self.abort(Refusal(Kind.SHUTTING_DOWN))

    def abort(self, refusal: Refusal) -> None:
        """End the session from outside the command loop (shutdown)."""
        self.end_reason = "shutdown"
        self._say_goodbye(refusal)

    def _say_goodbye(self, refusal: Refusal) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(replies.line(refusal).encode("ascii") + b"\r\n")
            transport.close()
        # A TLS close waits for the client's close_notify (30 s in asyncio); a client
        # that does not answer must not hold the slot, or a shutdown, that long.
        self.connection.finished()

    async def reply(self, line: str) -> None:
        await self.push(line)

    async def _refuse(self, refusal: Refusal) -> None:
        """Say `refusal` and end the session (the command loop's own 421s)."""
        await self.push(replies.line(refusal))
        raise _Closed(refusal.kind.value)

    async def _error(self, err: Refusal) -> None:
        reply = replies.render(err)
        if reply.code >= 400:
            self.errors += 1
        await self.push(reply.line)
        if reply.close:
            if err.kind is Kind.TOO_MANY_COMMANDS:
                self.end_reason = "junk-commands"
            raise _Closed(err.kind.value)
        try:
            rules.check_error_count(self.errors, self.cfg.limits.max_errors)
        except Refusal as refusal:
            self.end_reason = "errors"
            await self._refuse(refusal)

    # --- reading --------------------------------------------------------------------

    async def _readline(self, limit: int) -> bytes:
        """One line including its LF; idle timeout and session lifetime both apply."""
        remaining, why = self._time_left()
        timeout = min(self.cfg.limits.idle_timeout, remaining)
        if timeout <= 0:
            await self._timeout(why)
        try:
            # A timeout scope rather than wait_for: no task of its own for every line.
            async with asyncio.timeout(timeout):
                line = await self.reader.readuntil(b"\n")
        except TimeoutError:
            await self._timeout(Kind.IDLE_TIMEOUT if remaining > timeout else why)
        except asyncio.IncompleteReadError as exc:
            raise _Closed("eof") from exc
        except asyncio.LimitOverrunError as exc:
            await self._discard_line(exc.consumed)
            raise _LineTooLong() from exc
        if len(line) > limit:
            raise _LineTooLong()
        return line

    def _time_left(self) -> tuple[float, Kind]:
        return rules.time_left(
            time.monotonic(),
            deadline=self.deadline,
            login_deadline=self.login_deadline,
            identified=self.identified,
        )

    async def _discard_line(self, consumed: int) -> None:
        await self.reader.readexactly(consumed)
        while True:
            try:
                async with asyncio.timeout(self.cfg.limits.idle_timeout):
                    await self.reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await self.reader.readexactly(exc.consumed)
            except TimeoutError:
                await self._timeout(Kind.IDLE_TIMEOUT)
            except asyncio.IncompleteReadError as exc:
                raise _Closed("eof") from exc

    async def _timeout(self, why: Kind) -> None:
        self.end_reason = "timeout"
        await self._refuse(Refusal(why, hostname=self.hostname))

    # --- the command loop -----------------------------------------------------------

    async def _converse(self) -> None:
        """The session's one task: TLS first on 465, the access check, then commands."""
        try:
            if self.tls is not None:
                await self._finish_tls()
            if self.gw.screen is not None:
                refusal = await self.gw.screen.refusal(self.client_ip, self.id)
                if refusal is not None:
                    self.end_reason = "access-denied"
                    await self.push(replies.line(refusal))
                    return
            await self.push(replies.greeting(self.hostname))
            while self.transport is not None:
                await self._one_command()
                if self.stop_requested and self.txn is None:
                    self.end_reason = "shutdown"
                    await self.push(replies.line(Refusal(Kind.SHUTTING_DOWN)))
                    return
        except _Closed:
            pass
        except ConnectionError:
            self.end_reason = "connection-error"
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session %s: internal error", self.id)
            self.end_reason = "internal-error"
            with contextlib.suppress(Exception):
                await self.push(replies.line(Refusal(Kind.INTERNAL_ERROR)))
        finally:
            self._finish()

    def _finish(self) -> None:
        """Synchronous on purpose: it also runs while the task is being cancelled."""
        upstream = self.smarthost.release()
        if upstream is not None:
            self.gw.spawn(upstream.quit())
        if self.transport is not None:
            self.transport.close()
        self.connection.finished()
        self.trail.ended(
            tls=self.tls_info,
            user=self.identity.user if self.identity else None,
            cert_serial=self.cert.serial if self.cert else None,
            messages=self.messages,
            seconds=time.monotonic() - self.started,
            end=self.end_reason,
        )

    async def _one_command(self) -> None:
        self.waiting_for_command = True
        try:
            raw = await self._readline(self.cfg.limits.max_auth_length)
        except _LineTooLong:
            await self._error(Refusal(Kind.LINE_TOO_LONG))
            return
        finally:
            self.waiting_for_command = False
        try:
            verb, arg = rules.split_command(
                raw,
                command_limit=self.cfg.limits.max_command_length,
                auth_limit=self.cfg.limits.max_auth_length,
            )
        except Refusal as err:
            await self._error(err)
            return
        handler = self._commands.get(verb)
        try:
            self.junk = rules.admit_command(
                verb,
                known=handler is not None,
                tls=bool(self.tls_info),
                junk=self.junk,
                max_junk=self.cfg.limits.max_junk_commands,
            )
            assert handler is not None
            await handler(self, arg)
        except _LineTooLong:
            await self._error(Refusal(Kind.LINE_TOO_LONG))
        except Refusal as err:
            await self._error(err)

    # --- commands -------------------------------------------------------------------

    async def _ehlo(self, arg: str | None, extended: bool) -> None:
        name = rules.helo_name(arg, extended=extended)
        await self._reset_transaction()
        self.helo = name
        self.esmtp = extended
        if not extended:
            await self.push(f"250 {self.hostname}")
            return
        lines = [
            self.hostname,
            *rules.extensions(
                tls=bool(self.tls_info),
                certificate=self.verdict is not None,
                max_size=self.cfg.limits.max_message_size,
            ),
        ]
        await self.push(*(f"250-{text}" for text in lines[:-1]), f"250 {lines[-1]}")

    async def smtp_EHLO(self, arg: str | None) -> None:
        await self._ehlo(arg, extended=True)

    async def smtp_HELO(self, arg: str | None) -> None:
        await self._ehlo(arg, extended=False)

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        rules.check_starttls(arg, tls=bool(self.tls_info))
        raw = self.raw
        if raw is None or self.transport is None or raw.is_closing():
            raise ConnectionResetError("connection lost")
        # Written to the socket and the TLS layer put under it in one step: whatever
        # arrives after this is TLS, whatever came before stays unread (RFC 3207 5).
        raw.write(replies.TLS_READY.encode("ascii") + b"\r\n")
        self._begin_tls(discard_pending=True)
        await self._finish_tls()
        # RFC 3207 4.2: forget everything learnt before TLS.
        self.helo = None
        self.esmtp = False
        await self._reset_transaction()

    def _begin_tls(self, *, discard_pending: bool) -> None:
        """Put a TLS layer between the socket and the session and start its handshake.

        Commands the client pipelined behind STARTTLS stay in the plain-text reader,
        which is dropped: the session reads only what comes through TLS from now on.
        """
        raw = self.raw
        assert raw is not None
        layer = TlsLayer(
            self.listener.tls_context,
            self,
            handshake_timeout=self.cfg.limits.tls_handshake_timeout,
            close_timeout=CLOSE_GRACE,
        )
        self.tls = layer
        # Logged by the layer's own outcome: the session's task may be cancelled (the
        # socket gone) before it would see a failed handshake.
        layer.handshake.add_done_callback(self._log_failed_handshake)
        self.transport = None
        self.reader = asyncio.StreamReader(limit=self.line_length_limit)
        self.connection.layer(layer)
        if not raw.is_reading():
            raw.resume_reading()  # the plain-text reader may have paused it
        layer.start(raw, discard_pending=discard_pending)

    def _log_failed_handshake(self, handshake: asyncio.Future[str | None]) -> None:
        reason = handshake.result()
        if reason is not None:
            self.end_reason = "tls-failed"
            self.trail.tls_failed(reason)

    async def _finish_tls(self) -> None:
        assert self.tls is not None
        reason = await self.tls.handshake
        if reason is not None or self.transport is None:
            self.end_reason = "tls-failed"
            raise _Closed("TLS handshake failed")
        self.tls_info = describe(self.tls.version, self.tls.cipher)
        cert = self.tls.peer_certificate
        if cert is not None and self.gw.certificates is not None:
            self.verdict = await self.gw.certificates.judge(cert, self.client_ip)
            self.cert = self.verdict.holder
            self.trail.certificate(self.verdict)

    async def smtp_AUTH(self, arg: str | None) -> None:
        mechanism, initial = rules.parse_auth(
            arg,
            esmtp=self.esmtp,
            authenticated=self.identity is not None,
            in_transaction=self.txn is not None,
            certificate=self.verdict is not None,
        )
        if mechanism == "EXTERNAL":
            await self._auth_external(initial)
            return
        certificates.check_required(self.verdict, required=self._certificate_required)
        if mechanism == "PLAIN":
            payload = decode_sasl(initial if initial is not None else await self._challenge(""))
            authzid, authcid, password = split_plain(payload)
        else:
            authzid = b""
            if initial is not None:
                authcid = decode_sasl(initial)
            else:
                authcid = decode_sasl(await self._challenge("Username:"))
            password = decode_sasl(await self._challenge("Password:"))
        verify = functools.partial(
            self.gw.authenticator.login,
            authcid,
            password,
            authzid,
            mechanism,
            self.cert,
            self.client_ip,
        )
        try:
            if self.gw.limiter is None:
                self.identity = await verify()
            else:
                self.identity = await self.gw.limiter.login(authcid, self.client_ip, verify)
        except Refusal as err:
            attempted = normalise_login(authcid.decode("utf-8", "replace"))
            self.trail.login_refused(mechanism, attempted, err)
            raise
        self.trail.login(mechanism, self.identity)
        await self.push(replies.AUTHENTICATED)

    async def _auth_external(self, initial: str | None) -> None:
        """RFC 4422 appendix A: the TLS certificate is the credential; a flawed one is
        refused with what is wrong with it."""
        verdict = self.verdict
        assert verdict is not None
        wanted = decode_sasl(initial if initial is not None else await self._challenge(""))
        try:
            certificates.check_external(verdict)
            assert verdict.holder is not None
            self.identity = rules.external_identity(verdict.holder, wanted)
        except Refusal as err:
            self.trail.login_refused("EXTERNAL", verdict.user, err)
            raise
        self.trail.login("EXTERNAL", self.identity)
        await self.push(replies.AUTHENTICATED)

    @property
    def _certificate_required(self) -> bool:
        return self.listener.settings.client_certificates == "required"

    async def _challenge(self, prompt: str) -> str:
        await self.push("334 " + base64.b64encode(prompt.encode()).decode())
        raw = await self._readline(self.cfg.limits.max_auth_length)
        return raw.decode("ascii", "replace")

    async def smtp_MAIL(self, arg: str | None) -> None:
        identity = self.identity = rules.mail_identity(
            self.identity,
            greeted=self.helo is not None,
            cert=self.cert,
            certificate_without_auth=self.listener.settings.certificate_without_auth,
            verdict=self.verdict,
            certificate_required=self._certificate_required,
        )
        rules.check_new_transaction(
            in_transaction=self.txn is not None,
            messages=self.messages,
            max_messages=self.cfg.limits.max_messages_per_session,
        )
        sender, params = parse_mail_from(arg, max_size=self.cfg.limits.max_message_size)
        allowed = await self._allowed_senders(identity)
        try:
            policy.check_sender(identity, sender, allowed)
        except Refusal as err:
            self.trail.sender_refused(identity, "envelope", [sender], replies.line(err))
            raise
        quota = None
        if self.gw.limiter is not None:
            quota = await self.gw.limiter.check_message(identity.user, self.client_ip, self.id)
        reply = await self.smarthost.mail(sender, params.upstream_options())
        if not 200 <= reply.code < 300:
            await self._reset_upstream()
            raise as_client_reply(reply, "5.1.0")
        self.txn = Transaction(sender, params, quota=quota)
        await self.push(replies.SENDER_OK)

    async def smtp_RCPT(self, arg: str | None) -> None:
        txn, upstream = self.txn, self.smarthost.upstream
        rules.check_recipient(
            in_transaction=txn is not None and upstream is not None,
            recipients=len(txn.recipients) if txn else 0,
            max_recipients=self.cfg.limits.max_recipients,
        )
        assert txn is not None and upstream is not None
        recipient = parse_rcpt_to(arg, smtputf8=txn.params.smtputf8)
        if txn.quota is not None and self.gw.limiter is not None:
            await self.gw.limiter.enforce(
                txn.quota, self.id, self.client_ip, recipients=len(txn.recipients) + 1
            )
        reply = await upstream.rcpt(recipient)
        if not 200 <= reply.code < 300:
            raise as_client_reply(reply, "5.1.0")
        txn.recipients.append(recipient)
        await self.push(replies.RECIPIENT_OK)

    async def smtp_DATA(self, arg: str | None) -> None:
        txn, upstream = self.txn, self.smarthost.upstream
        rules.check_data(
            arg,
            in_transaction=txn is not None and upstream is not None,
            recipients=len(txn.recipients) if txn else 0,
        )
        assert txn is not None and upstream is not None
        queue_id = message.new_queue_id()
        await self.push(replies.START_DATA)
        size = 0
        try:
            # In the pieces the decoder read, never joined: a big message is held once.
            content = await self._read_data()
            size = sum(map(len, content))
            eight_bit = txn.params.body == "8BITMIME"
            message.normalise_pieces(content, eight_bit_declared=eight_bit)
            if self.cfg.policy.check_header_from:
                await self._check_header_from(message.header_section(content))
        except Refusal as err:
            await self._reset_transaction()
            self._log_message(txn, _Sent(queue_id, None, size), replies.line(err), relayed=None)
            raise
        trace = message.Trace(
            helo=self.helo or "unknown",
            client_ip=None if self.cfg.server.hide_client_ip else self.client_ip,
            hostname=self.hostname,
            user=self.identity.user if self.identity else "",
            queue_id=queue_id,
            tls=self.tls_info,
            cert_serial=self.identity.cert_serial if self.identity else None,
            recipient=txn.recipients[0] if len(txn.recipients) == 1 else None,
        )
        self.txn = None
        started = time.monotonic()
        prepared = message.prepare_pieces(content, trace)
        size = sum(map(len, content))
        content.clear()  # `prepared` alone holds the pieces: each is freed once sent
        sent = _Sent(queue_id, message.message_id(message.header_section(prepared)), size)
        try:
            result = await upstream.data(prepared)
        except RelayError as err:
            self._log_message(txn, sent, replies.line(err), started)
            raise
        if 200 <= result.code < 300:
            self.messages += 1
            if self.gw.limiter is not None and self.identity is not None:
                self.gw.limiter.count_message(
                    self.identity.user, self.client_ip, len(txn.recipients)
                )
            self._log_message(txn, sent, result.line, started)
            self.smarthost.finished(clean=True)
            await self.push(replies.accepted(queue_id, result.line))
            return
        self._log_message(txn, sent, result.line, started)
        self.smarthost.finished(clean=True)
        raise as_client_reply(result, "5.6.0")

    async def _read_data(self) -> list[bytes]:
        """Read up to CRLF.CRLF in blocks; over-size and over-long lines are drained, then refused.

        One timer covers the whole DATA: it fires at the end of the session's
        lifetime, or once the client has sent nothing for idle_timeout (moved
        forward at most every `_IDLE_SLACK` seconds, never past the idle limit).
        Reads go only as far as `decoder.next_read()` allows, so pipelined
        commands after the final dot stay in the reader for the command loop.
        """
        decoder = DataDecoder(self.cfg.limits.max_message_size, DATA_LINE_LIMIT)
        loop = asyncio.get_running_loop()
        idle = self.cfg.limits.idle_timeout
        slack = min(_IDLE_SLACK, idle / 10)
        end = loop.time() + (self.deadline - time.monotonic())
        armed = loop.time()
        expires = min(end, armed + idle)
        reads = 0
        try:
            async with asyncio.timeout_at(expires) as timer:
                while not decoder.done:
                    want = decoder.next_read()
                    try:
                        if isinstance(want, int):
                            block = await self.reader.readexactly(want)
                        else:
                            block = await self.reader.readuntil(want)
                    except asyncio.LimitOverrunError as exc:
                        block = await self.reader.readexactly(exc.consumed)
                    if decoder.feed(block) != len(block):
                        raise RuntimeError("read past the end of DATA")
                    now = loop.time()
                    if now - armed >= slack:
                        armed = now
                        expires = min(end, now + idle)
                        timer.reschedule(expires)
                    reads += 1
                    if reads % _READS_PER_TURN == 0:
                        # Reads from the buffer do not yield: let other sessions run.
                        await asyncio.sleep(0)
        except TimeoutError:
            await self._timeout(Kind.DATA_TOO_LONG if expires >= end else Kind.IDLE_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            raise _Closed("eof") from exc
        return decoder.pieces()

    def _log_message(
        self, txn: Transaction, sent: _Sent, reply: str, relayed: float | None
    ) -> None:
        """`relayed`: when the message went to the smarthost; None if the gateway refused it
        before (its size is 0 when it was refused while being received)."""
        upstream = self.smarthost.upstream if relayed is not None else None
        self.trail.message(
            self.identity,
            queue_id=sent.queue_id,
            message_id=sent.message_id,
            sender=txn.sender,
            recipients=txn.recipients,
            size=sent.size,
            smarthost=str(upstream.server) if upstream else None,
            reply=reply,
            smarthost_seconds=None if relayed is None else time.monotonic() - relayed,
        )

    async def _allowed_senders(self, identity: Identity) -> list[str]:
        """What the user may send as, read once per session and off the event loop:
        with the login or the certificate when the gateway has a sender store, else here.

        The identity cannot change within a session, so one query serves every
        message; an admin's change applies from the user's next connection.
        """
        if self.allowed_senders is None and identity.senders is not None:
            self.allowed_senders = list(identity.senders)  # read with the login
        if self.allowed_senders is None:
            senders = self.gw.senders or Senders(None)
            self.allowed_senders = await senders.allowed(identity.user)
        return self.allowed_senders

    async def _check_header_from(self, headers: bytes) -> None:
        """The From: header is what recipients see: it must be as allowed as MAIL FROM.

        Python's header parser is slow on hostile input, so it runs in a worker
        thread (the event loop serves other sessions meanwhile) and gets
        `header_check_timeout` seconds; `from_addresses` bounds what it is given,
        and it is given the header section alone. The common shapes of From:
        (`Name <addr>`, `addr`) are read on the loop without it.
        """
        limits = self.cfg.limits
        bounds = HeaderLimits(
            max_header_bytes=limits.max_header_bytes,
            max_from_length=limits.max_from_length,
            max_from_addresses=limits.max_from_addresses,
        )
        addresses: list[str] = []
        loop = asyncio.get_running_loop()
        try:
            simple = None
            if len(headers) <= _SIMPLE_FROM_BYTES:
                simple = simple_from_addresses(headers, bounds)
            if simple is not None:
                addresses = simple
            else:
                try:
                    addresses = await asyncio.wait_for(
                        loop.run_in_executor(None, from_addresses, headers, bounds),
                        limits.header_check_timeout,
                    )
                except TimeoutError:
                    raise Refusal(Kind.HEADER_TOO_COMPLEX) from None
            policy.check_header_from(addresses, self.allowed_senders or [])
        except Refusal as err:
            self.trail.sender_refused(self.identity, "header", addresses, replies.line(err))
            raise

    async def _reset_upstream(self) -> None:
        if self.smarthost.upstream is not None:
            self.smarthost.finished(clean=await self.smarthost.upstream.reset())

    async def _reset_transaction(self) -> None:
        if self.txn is not None:
            await self._reset_upstream()
        self.txn = None

    async def smtp_RSET(self, arg: str | None) -> None:
        await self._reset_transaction()
        await self.push(replies.OK)

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.push(replies.OK)

    async def smtp_QUIT(self, arg: str | None) -> None:
        self.end_reason = "quit"
        await self.push(replies.BYE)
        raise _Closed("quit")

    async def smtp_VRFY(self, arg: str | None) -> None:
        await self.push(replies.CANNOT_VERIFY)

    async def smtp_EXPN(self, arg: str | None) -> None:
        raise Refusal(Kind.EXPN_UNSUPPORTED)

    async def smtp_HELP(self, arg: str | None) -> None:
        await self.push(replies.HELP)

    _commands: ClassVar[dict[str, Callable[[Session, str | None], Awaitable[None]]]] = {
        "EHLO": smtp_EHLO,
        "HELO": smtp_HELO,
        "STARTTLS": smtp_STARTTLS,
        "AUTH": smtp_AUTH,
        "MAIL": smtp_MAIL,
        "RCPT": smtp_RCPT,
        "DATA": smtp_DATA,
        "RSET": smtp_RSET,
        "NOOP": smtp_NOOP,
        "QUIT": smtp_QUIT,
        "VRFY": smtp_VRFY,
        "EXPN": smtp_EXPN,
        "HELP": smtp_HELP,
    }
