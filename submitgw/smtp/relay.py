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
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib

from submitgw.config import SmarthostServer
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
        self._trouble = trouble

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
            self._trouble(str(self.server), step, f"{reply.code // 100}xx", reply.line)
        return reply

    async def _command(self, step: str, *args: bytes, kept: bool = False) -> UpstreamReply:
        """`kept`: a connection kept from an earlier message, which the smarthost may
        have closed meanwhile; losing it is not trouble (the caller retries)."""
        try:
            response = await self._client.execute_command(*args)
        except _TRANSIENT as exc:
            if not kept:
                self._trouble(str(self.server), step, _exception_error(exc, step), _described(exc))
            self.close()
            raise RelayError(Kind.SMARTHOST_UNAVAILABLE) from exc
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
            self._trouble(
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

    async def reset(self) -> None:
        """Abandon the current transaction upstream (client RSET, EHLO, or a failed MAIL)."""
        try:
            await self._client.execute_command(b"RSET")
        except Exception:
            self.close()

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


class Smarthost:
    """A session's way to the smarthost: one connection, kept from message to message.

    Reusing the connection spares a connect, EHLO, STARTTLS and login per message.
    A kept connection the smarthost has closed meanwhile is only noticed at the
    next MAIL, so that MAIL is retried once on a fresh connection; a fresh one
    that fails is a failure.
    """

    def __init__(
        self,
        servers: tuple[SmarthostServer, ...],
        helo_name: str,
        trouble: Trouble = log_trouble,
    ) -> None:
        self._servers = servers
        self._helo_name = helo_name
        self._trouble = trouble
        self.upstream: Upstream | None = None

    async def mail(self, sender: str, options: list[str]) -> UpstreamReply:
        reused = self.upstream is not None and self.upstream.usable
        if self.upstream is None or not reused:
            self.upstream = await Upstream.connect(self._servers, self._helo_name, self._trouble)
        try:
            return await self.upstream.mail(sender, options, kept=reused)
        except RelayError:
            if not reused:
                raise
        self.upstream = await Upstream.connect(self._servers, self._helo_name, self._trouble)
        return await self.upstream.mail(sender, options)

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
