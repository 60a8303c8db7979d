"""Pass-through relay: one smarthost session mirrors one client transaction.

The smarthost session opens at MAIL FROM, sees each RCPT as the client sends it
and receives the message before the client is told anything about it, so the
client's 250 is always the smarthost's 250 (nothing lost, nothing faked).
Commands are sent with the exact addresses the gateway checked.

Trouble with a smarthost (unreachable, silent, gone, or refusing) is reported
through a `Trouble` callback as it happens, so the session can log it as an
event of its own and metrics can count it by kind.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib

from submitgw.config import SmarthostConfig, SmarthostServer
from submitgw.errors import Kind, Refusal, RelayError
from submitgw.rules.message import LineEnds

log = logging.getLogger(__name__)

_TRANSIENT = (
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    aiosmtplib.SMTPConnectError,
    ConnectionError,
    TimeoutError,
    OSError,
)


# How much of the message may wait in the smarthost transport's buffer, and how often a
# full buffer is looked at again.
_WRITE_BUFFER = 256 * 1024
_DRAIN_POLL = 0.002

# (server, step, error, detail): step is "connect", "mail", "rcpt" or "data"; error is
# "connect", "timeout", "lost", "4xx" or "5xx"; detail is the exception or the reply.
Trouble = Callable[[str, str, str, str], None]


def log_trouble(server: str, step: str, error: str, detail: str) -> None:
    """The report when nobody listens for it: a plain log line."""
    log.warning("smarthost %s: %s at %s: %s", server, error, step, detail)


def _exception_error(exc: BaseException, step: str) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 400:
        return f"{exc.code // 100}xx"
    return "connect" if step == "connect" else "lost"


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@dataclass(frozen=True)
class UpstreamReply:
    code: int
    text: str

    @property
    def line(self) -> str:
        first = self.text.splitlines()[0] if self.text else ""
        return f"{self.code} {first}".rstrip()


def _tls_context(server: SmarthostServer) -> ssl.SSLContext:
    if not server.tls_verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    cafile = str(server.ca_file) if server.ca_file else None
    return ssl.create_default_context(cafile=cafile)


def _password(server: SmarthostServer) -> str | None:
    if not server.password_file:
        return None
    return server.password_file.read_text(encoding="utf-8").splitlines()[0]


def _reply(error: aiosmtplib.SMTPResponseException) -> UpstreamReply:
    return UpstreamReply(error.code, error.message)


def wire_form(content: bytes) -> bytes:
    """The message as DATA carries it (RFC 5321 4.5.2), in a few passes at C speed.

    Every line ending becomes CRLF (a lone CR or LF too, so that no smarthost can
    read a line end where we did not: SMTP smuggling), every line that starts with
    a dot gets another, and the end is CRLF "." CRLF.
    """
    wire = WireForm()
    return wire.feed(content) + wire.end()


class WireForm:
    """`wire_form` piece by piece: the joined output is `wire_form` of the joined input,
    wherever the cuts fall (a CR whose LF is in the next piece, a dot that starts a line
    at the start of a piece)."""

    __slots__ = ("_ends", "_line_start")

    def __init__(self) -> None:
        self._ends = LineEnds()
        self._line_start = True

    def feed(self, piece: bytes) -> bytes:
        lines = self._ends.lf(piece)
        if not lines:
            return b""
        stuffed = lines.replace(b"\n.", b"\n..")
        if self._line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        self._line_start = lines.endswith(b"\n")
        return stuffed.replace(b"\n", b"\r\n")

    def end(self) -> bytes:
        """The last line's end if it had none, and the end of DATA."""
        if self._ends.end() or not self._line_start:
            return b"\r\n.\r\n"
        return b".\r\n"


class Upstream:
    """An open smarthost connection in the middle of a transaction."""

    def __init__(
        self, client: aiosmtplib.SMTP, server: SmarthostServer, trouble: Trouble = log_trouble
    ) -> None:
        self._client = client
        self.server = server
        # Whom to tell of trouble: the session using the connection now.
        self.trouble = trouble
        # Messages sent over this connection (each DATA), for the pool's limit.
        self.messages = 0

    @classmethod
    async def connect(
        cls, servers: tuple[SmarthostServer, ...], helo_name: str, trouble: Trouble = log_trouble
    ) -> Upstream:
        """Try each smarthost in order; only connection-level failures move to the next."""
        last = "no smarthost configured"
        for server in servers:
            client = aiosmtplib.SMTP(
                hostname=server.host,
                port=server.port,
                local_hostname=helo_name,
                timeout=server.command_timeout,
                start_tls=False,
                use_tls=False,
            )
            try:
                await client.connect(timeout=server.connect_timeout)
                await client.ehlo()
                if server.starttls:
                    await client.starttls(tls_context=_tls_context(server))
                    await client.ehlo()
                if server.username:
                    await client.login(server.username, _password(server) or "")
            except (*_TRANSIENT, aiosmtplib.SMTPException) as exc:
                last = f"{server}: {_described(exc)}"
                trouble(str(server), "connect", _exception_error(exc, "connect"), _described(exc))
                client.close()
                continue
            return cls(client, server, trouble)
        log.error("no smarthost reachable (%s)", last)
        raise RelayError(Kind.SMARTHOST_UNAVAILABLE)

    def _refused(self, step: str, reply: UpstreamReply) -> UpstreamReply:
        """Report a 4xx or 5xx reply; hand back any reply."""
        if reply.code >= 400:
            self.trouble(str(self.server), step, f"{reply.code // 100}xx", reply.line)
        return reply

    async def _command(self, step: str, *args: bytes, kept: bool = False) -> UpstreamReply:
        """`kept`: a connection kept from an earlier message, which the smarthost may
        have closed meanwhile; losing it is not trouble (the caller retries)."""
        try:
            response = await self._client.execute_command(*args)
        except _TRANSIENT as exc:
            if not kept:
                self.trouble(str(self.server), step, _exception_error(exc, step), _described(exc))
            self.close()
            raise RelayError(Kind.SMARTHOST_UNAVAILABLE) from exc
        if kept and response.code == 421:
            # The smarthost's own idle timeout ("421 ... timeout") met our command.
            self.close()
            raise RelayError(Kind.SMARTHOST_UNAVAILABLE)
        return self._refused(step, UpstreamReply(response.code, response.message))

    async def mail(self, sender: str, options: list[str], *, kept: bool = False) -> UpstreamReply:
        args = [b"MAIL", b"FROM:<" + sender.encode("utf-8") + b">"]
        args += [o.encode("ascii") for o in options]
        return await self._command("mail", *args, kept=kept)

    async def rcpt(self, recipient: str) -> UpstreamReply:
        return await self._command("rcpt", b"RCPT", b"TO:<" + recipient.encode("utf-8") + b">")

    async def data(self, message: list[bytes]) -> UpstreamReply:
        """Send the message; a lost or silent smarthost after the dot is reported as such.

        The message goes in its wire form (`WireForm`), piece by piece after the 354,
        each written once the transport's buffer is below `_WRITE_BUFFER`: the client
        library's own `data()` runs regular expressions over every line ending (for
        4 MiB of empty lines ~200 MiB and 0.4 s of event loop), and writing the
        whole wire form at once would hold a second copy of the message.
        `message` is emptied as it is sent, so each sent piece can be freed.
        """
        timeout = self.server.data_timeout
        self.messages += 1
        try:
            start = await self._client.execute_command(b"DATA", timeout=timeout)
            if start.code != 354:
                return self._refused("data", UpstreamReply(start.code, start.message))
            async with asyncio.timeout(timeout):
                await self._write(WireForm(), message)
            protocol = self._client.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            response = await protocol.read_response(timeout=timeout)
        except _TRANSIENT as exc:
            self.trouble(
                str(self.server),
                "data",
                _exception_error(exc, "data"),
                f"{type(exc).__name__} after the message; it may or may not have queued it",
            )
            self.close()
            raise RelayError(Kind.SMARTHOST_UNCONFIRMED) from exc
        return self._refused("data", UpstreamReply(response.code, response.message))

    def _transport(self) -> asyncio.WriteTransport:
        protocol = self._client.protocol
        transport = protocol.transport if protocol is not None else None
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        return transport

    async def _write(self, wire: WireForm, message: list[bytes]) -> None:
        """Wait while the transport holds more than `_WRITE_BUFFER` bytes (polled: the
        client library offers no public drain), then write the next piece."""
        message.reverse()
        while message:
            while self._transport().get_write_buffer_size() > _WRITE_BUFFER:
                await asyncio.sleep(_DRAIN_POLL)
            self._transport().write(wire.feed(message.pop()))
        self._transport().write(wire.end())

    async def reset(self) -> bool:
        """Abandon the current transaction upstream (client RSET, EHLO, or a failed MAIL);
        True when the smarthost said 250, so the connection is clean for another."""
        try:
            reply = await self._client.execute_command(b"RSET")
        except Exception:
            self.close()
            return False
        if reply.code != 250:
            self.close()
            return False
        return True

    @property
    def usable(self) -> bool:
        return self._client.is_connected

    def close(self) -> None:
        self._client.close()

    async def quit(self) -> None:
        try:
            await self._client.quit(timeout=5)
        except Exception:
            self._client.close()


@dataclass
class PoolCounts:
    """Connections a gateway's sessions got, fresh or reused; kept across reloads."""

    fresh: int = 0
    reused: int = 0


class ConnectionPool:
    """Idle smarthost connections, greeted and logged in, shared by a gateway's sessions.

    A session takes one at MAIL FROM and gives it back once the transaction ended
    cleanly; up to `pool_size` per server wait for the next, each for at most
    `pool_idle_seconds` and `pool_max_messages` messages, then they QUIT. A closed pool
    (reload, shutdown) keeps nothing: what comes back is closed.
    """

    def __init__(
        self, settings: SmarthostConfig, helo_name: str, counts: PoolCounts | None = None
    ) -> None:
        self.settings = settings
        self.helo_name = helo_name
        self.counts = counts or PoolCounts()
        self.closed = settings.pool_size == 0
        self._idle: dict[SmarthostServer, deque[tuple[Upstream, float]]] = {
            server: deque() for server in settings.servers
        }
        self._sweeper: asyncio.TimerHandle | None = None
        self._quitting: set[asyncio.Task[None]] = set()

    def serves(self, settings: SmarthostConfig, helo_name: str) -> bool:
        return not self.closed and settings == self.settings and helo_name == self.helo_name

    @property
    def idle(self) -> int:
        return sum(len(kept) for kept in self._idle.values())

    def take(self) -> Upstream | None:
        """The most recently used live connection, to the most preferred server."""
        now = time.monotonic()
        for kept in self._idle.values():
            while kept:
                upstream, since = kept.pop()
                if upstream.usable and now - since < self.settings.pool_idle_seconds:
                    self.counts.reused += 1
                    return upstream
                self._quit(upstream)
        return None

    def give_back(self, upstream: Upstream) -> None:
        kept = self._idle.get(upstream.server)
        if (
            self.closed
            or kept is None
            or not upstream.usable
            or upstream.messages >= self.settings.pool_max_messages
            or len(kept) >= self.settings.pool_size
        ):
            self._quit(upstream)
            return
        upstream.trouble = log_trouble
        kept.append((upstream, time.monotonic()))
        if self._sweeper is None:
            self._sweep_at(self.settings.pool_idle_seconds)

    def _sweep_at(self, delay: float) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(delay, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle too long; come back when the next one will be."""
        self._sweeper = None
        now, limit = time.monotonic(), self.settings.pool_idle_seconds
        oldest = None
        for kept in self._idle.values():
            while kept and now - kept[0][1] >= limit:
                self._quit(kept.popleft()[0])
            if kept and (oldest is None or kept[0][1] < oldest):
                oldest = kept[0][1]
        if oldest is not None:
            self._sweep_at(oldest + limit - now)

    def _quit(self, upstream: Upstream) -> None:
        if not upstream.usable:
            upstream.close()
            return
        task = asyncio.ensure_future(upstream.quit())
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    async def close(self, timeout: float = 5.0) -> None:
        """QUIT every idle connection, within `timeout` seconds; keep none from now on."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for kept in self._idle.values():
            while kept:
                self._quit(kept.pop()[0])
        if self._quitting:
            await asyncio.wait(set(self._quitting), timeout=timeout)


class Smarthost:
    """A session's way to the smarthost: one connection per transaction, reused.

    Reusing a connection spares a connect, EHLO, STARTTLS and login per message.
    With a pool, the connection comes from it at MAIL FROM and goes back when the
    transaction ended cleanly; without, the session keeps its own from message to
    message. A kept connection the smarthost has closed meanwhile is only noticed at
    the next MAIL, so that MAIL is retried once on a fresh connection (nothing was
    sent yet); a fresh one that fails is a failure.
    """

    def __init__(
        self,
        servers: tuple[SmarthostServer, ...],
        helo_name: str,
        trouble: Trouble = log_trouble,
        pool: ConnectionPool | None = None,
    ) -> None:
        self._servers = servers
        self._helo_name = helo_name
        self._trouble = trouble
        self._pool = pool
        self.upstream: Upstream | None = None

    async def _connect(self) -> Upstream:
        upstream = await Upstream.connect(self._servers, self._helo_name, self._trouble)
        if self._pool is not None:
            self._pool.counts.fresh += 1
        return upstream

    def _kept(self) -> Upstream | None:
        if self.upstream is not None and self.upstream.usable:
            return self.upstream
        upstream = self._pool.take() if self._pool is not None else None
        if upstream is not None:
            upstream.trouble = self._trouble
        return upstream

    async def mail(self, sender: str, options: list[str]) -> UpstreamReply:
        kept = self._kept()
        self.upstream = upstream = kept or await self._connect()
        try:
            return await upstream.mail(sender, options, kept=kept is not None)
        except RelayError:
            if kept is None:
                raise
        self.upstream = await self._connect()
        return await self.upstream.mail(sender, options)

    def finished(self, *, clean: bool) -> None:
        """The transaction is over: `clean` after a reply to the message or a 250 to
        RSET. The connection goes back to the pool, or stays for the session's next
        message; one in doubt is closed."""
        upstream = self.upstream
        if upstream is None:
            return
        if not clean:
            self.upstream = None
            upstream.close()
        elif self._pool is not None:
            self.upstream = None
            self._pool.give_back(upstream)

    def release(self) -> Upstream | None:
        """Hand over the connection for a polite QUIT once the session is over."""
        upstream, self.upstream = self.upstream, None
        return upstream


def as_client_reply(reply: UpstreamReply, fallback_status: str) -> Refusal:
    """Turn a smarthost refusal into the reply we pass on (its code, its enhanced status)."""
    text = reply.text.splitlines()[0] if reply.text else ""
    first, _, rest = text.partition(" ")
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return _refused(reply.code, first, rest or "Refused by smarthost")
    if reply.code >= 500:
        status = fallback_status
    elif reply.code >= 400:
        status = "4" + fallback_status[1:]
    else:
        status = fallback_status
    return _refused(reply.code, status, text or "Refused by smarthost")


def _refused(code: int, status: str, text: str) -> Refusal:
    return Refusal(Kind.UPSTREAM_REFUSED, code=code, status=status, text=text)
