"""The self-service site's listener: caps and clocks around aiohttp, so idle clients cannot
hold the file descriptors that SMTP needs.

aiohttp's own TCP site has no connection cap, and asyncio's TLS server only calls the
application protocol once the handshake is over. So this site accepts the raw sockets
itself: a connection is counted at accept (in all and per client address), refused
before any TLS work when over a cap, then screened against the access rules and given
`connect_accepted_socket` for a TLS handshake with a deadline. asyncio never tells the
application protocol about a failed handshake, so that path gives the slot back where the
handshake is awaited; every later path gives it back in `connection_lost`. `release` is
idempotent, so no path can count twice.

Once the handshake is done a clock always runs until the connection is gone:
`header_timeout` from the connection or a request's first byte until its head is parsed,
`body_timeout` (plus a grace for the answer) while a request is being handled, and
`idle_timeout` between requests. A closed connection that cannot be flushed (a peer that
does not read) is aborted after a grace.

The metrics port reuses the same caps and clocks over plain HTTP (no TLS context).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from submitgw.config import Endpoint
from submitgw.errors import Need, Refusal, Unavailable
from submitgw.rules.limits import client_key
from submitgw.services import audit

log = logging.getLogger(__name__)

# Seconds a closing connection may take to flush, and the TLS close_notify exchange.
CLOSE_GRACE = 5.0
# Seconds beyond `body_timeout` for the answer to a request whose body was read in time.
ANSWER_GRACE = 5.0
# accept() errors that mean the process is out of descriptors or memory: wait, then retry.
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_PAUSE = 1.0

Screen = Callable[[str, str], Awaitable[Refusal | None]]

_IDLE, _HEAD, _BUSY, _CLOSING = "idle", "head", "busy", "closing"


class SiteLimits(Protocol):
    """The caps and clocks a guarded site applies (`[selfservice]` has them all)."""

    @property
    def max_connections(self) -> int: ...
    @property
    def max_connections_per_ip(self) -> int: ...
    @property
    def handshake_timeout(self) -> float: ...
    @property
    def header_timeout(self) -> float: ...
    @property
    def body_timeout(self) -> float: ...
    @property
    def idle_timeout(self) -> float: ...


def peer_address(addr: object) -> str:
    """The client's IP as text; an IPv4-mapped IPv6 address as plain IPv4."""
    host = addr[0] if isinstance(addr, tuple) and addr else "?"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


class SiteConnection(asyncio.Protocol):
    """One client connection: aiohttp's protocol inside, the clocks and the slot outside."""

    def __init__(
        self, site: GuardedSite, inner: asyncio.Protocol, client_ip: str, key: str
    ) -> None:
        self.site = site
        # The site's settings when the connection came: a live reload changes later ones.
        self.cfg = site.cfg
        self.inner = inner
        self.id = secrets.token_hex(6)
        self.client_ip = client_ip
        self.key = key
        self.started = time.monotonic()
        # The access rules' refusal of this client, else None.
        self.refusal: Refusal | None = None
        self.made = False
        self.released = False
        self.requests = 0
        self.end = "closed"
        self._transport: asyncio.Transport | None = None
        self._state = _HEAD
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio protocol, forwarded to aiohttp ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.made = True
        self._transport = transport
        self._arm(self.cfg.header_timeout, "header-timeout")
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:
            self._state = _HEAD
            self._arm(self.cfg.header_timeout, "header-timeout")
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self._transport = None
        self.site.release(self)
        self.inner.connection_lost(exc)

    # --- called by the site's middleware ----------------------------------------------

    def request_started(self) -> None:
        """The head is parsed: the body and the answer are on the request's clock now."""
        self.requests += 1
        if self._state != _CLOSING:
            self._state = _BUSY
            self._arm(self.cfg.body_timeout + ANSWER_GRACE, "body-timeout")

    def request_finished(self) -> None:
        if self._state != _CLOSING:
            self._state = _IDLE
            self._arm(self.cfg.idle_timeout, "idle-timeout")

    # --- clocks -------------------------------------------------------------------------

    def _arm(self, seconds: float, why: str) -> None:
        self._cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire, why)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self, why: str) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        state, self._state = self._state, _CLOSING
        if state == _CLOSING:
            transport.abort()
            return
        if self.end == "closed":
            self.end = why
        if state == _BUSY:
            # A request over its time: nothing more will be said on this connection.
            transport.abort()
            return
        transport.close()
        self._arm(CLOSE_GRACE, why)


async def bind_sockets(endpoint: Endpoint, backlog: int = 128) -> list[socket.socket]:
    """Listening sockets for every address `endpoint` names, non-blocking; all or none."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        endpoint.host, endpoint.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class GuardedSite(web.BaseSite):
    """An aiohttp site that accepts its own sockets (see the module docstring); over TLS
    unless `context` is None.

    `context` and `cfg` are read for each new connection, so a live reload replaces
    them (`reconfigure`) without touching the connections already open. Each
    connection ends in an `event` (`site-connection`) at INFO; a `quiet` site logs
    only the connections it refused (at WARNING), the rest at DEBUG.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        endpoint: Endpoint,
        context: ssl.SSLContext | None,
        cfg: SiteLimits,
        screen: Screen | None = None,
        recorder: audit.Recorder | None = None,
        *,
        listener: str = "selfservice",
        event: str = "site-connection",
        quiet: bool = False,
        bound: list[socket.socket] | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=context)
        # Listening sockets bound by another process (`serve --workers`): served, not bound.
        self.bound = bound
        self.recorder = recorder or audit.Recorder()
        self.listener = listener
        self.event = event
        self.quiet = quiet
        self.app_runner = runner
        self.endpoint = endpoint
        self.context = context
        self.cfg = cfg
        self.screen = screen
        self.open = 0
        self.per_client: dict[str, int] = {}
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def name(self) -> str:
        return f"{'https' if self.context else 'http'}://{self.endpoint}/"

    def reconfigure(self, cfg: SiteLimits, context: ssl.SSLContext | None) -> None:
        self.cfg = cfg
        self.context = context

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._sockets)

    async def start(self) -> None:
        await super().start()
        if self.bound is not None:
            self._sockets = list(self.bound)
            for sock in self._sockets:
                sock.setblocking(False)
        else:
            try:
                self._sockets = await bind_sockets(self.endpoint, self._backlog)
            except OSError:
                self._close_sockets()
                raise
        for sock in self._sockets:
            self._spawn(self._accept(sock))

    async def stop(self) -> None:
        """No new connections, unfinished handshakes dropped; aiohttp closes the rest."""
        self._stopping = True
        self._close_sockets()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await super().stop()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    log.error("self-service site cannot accept: %s; pausing", exc.strerror)
                    await asyncio.sleep(ACCEPT_PAUSE)
                elif listening.fileno() == -1:
                    return
                else:
                    await asyncio.sleep(0.01)
                continue
            self._admit(sock, peer_address(address))

    def _admit(self, sock: socket.socket, client_ip: str) -> None:
        """Count the connection, or close it at once when it would go over a cap."""
        key = client_key(client_ip)
        refused = None
        if self._stopping or self.open >= self.cfg.max_connections:
            refused = "too-many-connections"
        elif self.per_client.get(key, 0) >= self.cfg.max_connections_per_ip:
            refused = "too-many-connections-from-client"
        if refused is not None:
            sock.close()
            self._connection_event(None, client_ip, 0, 0.0, refused)
            return
        self.open += 1
        self.per_client[key] = self.per_client.get(key, 0) + 1
        runner_server = self.app_runner.server
        assert runner_server is not None
        conn = SiteConnection(self, runner_server(), client_ip, key)
        self._spawn(self._handshake(conn, sock))

    async def _handshake(self, conn: SiteConnection, sock: socket.socket) -> None:
        """Screen the client, then TLS; a connection that never reaches aiohttp is released here."""
        loop = asyncio.get_running_loop()
        handed = False
        try:
            if self.screen is not None:
                conn.refusal = await self._screen(conn)
            handed = True
            if self.context is None:
                await loop.connect_accepted_socket(lambda: conn, sock)
            else:
                await loop.connect_accepted_socket(
                    lambda: conn,
                    sock,
                    ssl=self.context,
                    ssl_handshake_timeout=conn.cfg.handshake_timeout,
                    ssl_shutdown_timeout=CLOSE_GRACE,
                )
        except (OSError, ssl.SSLError, EOFError) as exc:
            if self.context is None:
                conn.end = "disconnect"
                return
            conn.end = "tls-failed"
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
            self.recorder.tls_failure(
                session=conn.id,
                client=conn.client_ip,
                reason=str(reason or type(exc).__name__),
                listener=self.listener,
            )
        except asyncio.CancelledError:
            conn.end = "shutdown"
            raise
        except Exception as exc:
            conn.end = "internal-error"
            log.error("self-service connection %s failed: %s", conn.id, type(exc).__name__)
        finally:
            if not handed:
                sock.close()
            if not conn.made:
                self.release(conn)

    async def _screen(self, conn: SiteConnection) -> Refusal | None:
        assert self.screen is not None
        try:
            return await asyncio.wait_for(
                self.screen(conn.client_ip, conn.id), conn.cfg.handshake_timeout
            )
        except TimeoutError:
            log.error("access rules took too long for %s; refusing", conn.client_ip)
            return Unavailable(Need.ACCESS_RULES)

    def release(self, conn: SiteConnection) -> None:
        """Give the connection's slot back: exactly once, whichever path ends it."""
        if conn.released:
            return
        conn.released = True
        self.open -= 1
        left = self.per_client.get(conn.key, 0) - 1
        if left > 0:
            self.per_client[conn.key] = left
        else:
            self.per_client.pop(conn.key, None)
        self._connection_event(
            conn.id, conn.client_ip, conn.requests, time.monotonic() - conn.started, conn.end
        )

    def _connection_event(
        self, session: str | None, client: str, requests: int, seconds: float, end: str
    ) -> None:
        refused = end.startswith("too-many")
        self.recorder.emit(
            {
                "event": self.event,
                "session": session,
                "client": client,
                "requests": requests,
                "seconds": round(seconds, 3),
                "end": end,
            },
            logging.WARNING if refused else logging.DEBUG if self.quiet else logging.INFO,
        )


def connection_of(request: web.BaseRequest) -> SiteConnection | None:
    """The guarded connection a request came on (None outside a `GuardedSite`)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, SiteConnection) else None
