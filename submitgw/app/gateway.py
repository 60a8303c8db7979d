"""The serving side of the wiring: configuration and a database in, a running gateway out.

`submitgw serve` and the tests build the gateway here, so what a test runs is what
production runs. `App` owns the listeners and knows nothing of
processes; `serve` adds what a process needs (signals, the exit code).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
import signal
import socket
from dataclasses import dataclass

from aiohttp import web

import pki
from submitgw.app import Stores
from submitgw.config import Config, Endpoint, ListenerConfig, selfservice_url
from submitgw.services.audit import Recorder
from submitgw.services.authn import CertificateAuthenticator, PasswordAuthenticator
from submitgw.services.dns import ReverseDns
from submitgw.services.limiter import Limiter
from submitgw.services.memory import trim_after_churn
from submitgw.services.notify import notify
from submitgw.services.screening import ClientScreen
from submitgw.services.senders import Senders
from submitgw.services.trail import DatabaseTrail
from submitgw.smtp import replies, tlslayer
from submitgw.smtp.session import Gateway, Listener
from submitgw.store import (
    Database,
)
from submitgw.tls import server_context
from submitgw.web.site import SelfService

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything the protocols call, built once over one database."""

    cfg: Config
    stores: Stores
    authenticator: PasswordAuthenticator
    certificates: CertificateAuthenticator | None
    screen: ClientScreen
    limiter: Limiter
    senders: Senders
    # Every event's way out: the log, then the sinks added here.
    recorder: Recorder
    # The database trail ([audit] database), one of the recorder's sinks.
    trail: DatabaseTrail | None = None

    def close(self) -> None:
        self.authenticator.close()
        if self.trail is not None:
            self.trail.close()


def _certificates_needed(cfg: Config) -> bool:
    listeners = (cfg.submission, cfg.submissions)
    on_smtp = any(s.listen is not None and s.client_certificates != "off" for s in listeners)
    on_site = cfg.selfservice.listen is not None and cfg.selfservice.client_certificates != "off"
    return on_smtp or on_site


def build_services(cfg: Config, db: Database) -> Services:
    recorder = Recorder()
    stores = Stores(db, cfg, recorder)
    trail = DatabaseTrail(stores.audit, cfg.audit) if cfg.audit.database else None
    if trail is not None:
        recorder.sinks.append(trail)
    authenticator = PasswordAuthenticator(
        stores.users,
        cfg.auth,
        stores.networks,
        stores.credentials,
        cfg.passwords,
        selfservice_url(cfg),
    )
    certificates = None
    if _certificates_needed(cfg):
        certificates = CertificateAuthenticator(
            stores.certificates, pki.load_certificate(cfg.tls.ca_cert), stores.networks
        )
    return Services(
        cfg=cfg,
        stores=stores,
        authenticator=authenticator,
        certificates=certificates,
        screen=ClientScreen(stores.access_rules, ReverseDns(cfg.dns), cfg.policy, recorder),
        limiter=Limiter(cfg.limits, stores.counters, describe=replies.line, recorder=recorder),
        senders=Senders(stores.senders),
        recorder=recorder,
        trail=trail,
    )


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one: every connection, SMTP or
    HTTPS, costs a descriptor, and the usual soft 1024 runs out long before the caps."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    log.info("open-file limit %d", soft, extra={"event": {"event": "fd-limit", "nofile": soft}})
    return soft


def _bound(sockets: list[socket.socket], asked: Endpoint) -> Endpoint:
    """The address really listened on: port 0 asks the kernel for a free one."""
    if not sockets:
        return asked
    port = int(sockets[0].getsockname()[1])
    return dataclasses.replace(asked, port=port)


def _log_listening(name: str, endpoint: Endpoint, tls: str, certs: str, **more: object) -> None:
    event = {
        "event": "listening",
        "listener": name,
        "address": str(endpoint),
        "port": endpoint.port,
        "tls": tls,
        "client_certificates": certs,
        **more,
    }
    what = "self-service site on %s" if name == "selfservice" else "listening on %s"
    log.info(what, endpoint, extra={"event": event})


class App:
    """The gateway's listeners over one set of services; start, then stop, once each."""

    def __init__(self, cfg: Config, db: Database) -> None:
        self.cfg = cfg
        self.services = build_services(cfg, db)
        s = self.services
        self.gateway = Gateway(
            cfg,
            s.authenticator,
            s.certificates,
            s.screen,
            senders=s.senders,
            limiter=s.limiter,
            recorder=s.recorder,
        )
        # name -> the address actually bound (a port 0 in the config becomes the real one).
        self.bound: dict[str, Endpoint] = {}
        self._servers: list[asyncio.Server] = []
        self._site: web.AppRunner | None = None
        self._trimming: asyncio.Task[None] | None = None

    def _listeners(self) -> list[tuple[Listener, Endpoint]]:
        cfg = self.cfg
        chosen: list[tuple[str, ListenerConfig, bool]] = [
            ("submission", cfg.submission, False),
            ("submissions", cfg.submissions, True),
        ]
        return [
            (
                Listener(
                    name, implicit, tlslayer.server_context(cfg.tls, s.client_certificates), s
                ),
                s.listen,
            )
            for name, s, implicit in chosen
            if s.listen is not None
        ]

    async def _listen(self, listener: Listener, endpoint: Endpoint) -> None:
        """A plain socket; TLS, implicit or STARTTLS, is layered on by the session itself."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        server = await loop.create_server(
            self.gateway.connection_factory(listener),
            host=endpoint.host,
            port=endpoint.port,
            family=family,
            reuse_address=True,
        )
        self._servers.append(server)
        bound = _bound(list(server.sockets), endpoint)
        self.bound[listener.name] = bound
        _log_listening(
            listener.name,
            bound,
            "implicit" if listener.implicit_tls else "starttls",
            listener.settings.client_certificates,
        )

    async def _listen_site(self, endpoint: Endpoint) -> None:
        cfg, s = self.cfg, self.services
        site = SelfService(
            cfg,
            s.authenticator,
            s.certificates,
            s.limiter,
            users=s.stores.users,
            cert_store=s.stores.certificates,
            accounts=s.stores.accounts,
            screen=s.screen.refusal,
            recorder=s.recorder,
        )
        context = server_context(cfg.tls, cfg.selfservice.client_certificates)
        self._site, sockets = await site.start(endpoint, context)
        bound = _bound(sockets, endpoint)
        self.bound["selfservice"] = bound
        if endpoint.port == 0 and not cfg.selfservice.url:
            # The password-expired reply names the site; only now is its port known.
            bound_cfg = cfg.replace(selfservice=dataclasses.replace(cfg.selfservice, listen=bound))
            s.authenticator.selfservice_url = selfservice_url(bound_cfg)
        _log_listening(
            "selfservice",
            bound,
            "implicit",
            cfg.selfservice.client_certificates,
            url=s.authenticator.selfservice_url,
        )

    async def start(self) -> None:
        """Bind every configured listener; on failure nothing stays bound (OSError)."""
        listeners = self._listeners()
        if not listeners:
            raise ValueError("both listeners are off; nothing to do")
        try:
            for listener, endpoint in listeners:
                await self._listen(listener, endpoint)
            if self.cfg.selfservice.listen is not None:
                await self._listen_site(self.cfg.selfservice.listen)
        except BaseException:
            await self._close_listeners()
            raise
        if self.services.trail is not None:
            self.services.trail.start()
        self._trimming = asyncio.create_task(
            trim_after_churn(
                lambda: self.gateway.connections.released, self.cfg.server.memory_trim_interval
            )
        )

    async def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        if self._site is not None:
            await self._site.cleanup()
            self._site = None

    async def stop(self, grace: float | None = None) -> None:
        """No new connections; sessions get `grace` (default `shutdown_grace`) to finish,
        then services close."""
        if self._trimming is not None:
            self._trimming.cancel()
        log.info(
            "stopping: no new connections, %d connection(s) open",
            self.gateway.connections.total,
        )
        await self._close_listeners()
        await self.gateway.drain(self.cfg.server.shutdown_grace if grace is None else grace)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.services.trail is not None:
            # Every session has ended: what they recorded goes to the database now.
            await asyncio.to_thread(self.services.trail.close)
        self.services.close()
        log.info("stopped")

    def report_status(self) -> None:
        """SIGHUP: until configuration can be reloaded live, say so instead of dying."""
        gw = self.gateway
        log.warning(
            "SIGHUP: live reload is not supported; restart to apply configuration changes",
            extra={
                "event": {
                    "event": "status",
                    "signal": "SIGHUP",
                    "reload": "unsupported",
                    "connections": gw.connections.total,
                    "sessions": len(gw.sessions),
                }
            },
        )


async def serve(cfg: Config, db: Database) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    raise_fd_limit()
    app = App(cfg, db)
    try:
        await app.start()
    except ValueError as exc:
        log.error("%s", exc)
        app.services.close()
        return 1
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        app.services.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.report_status)
    # Only now, with every listener bound, may systemd (Type=notify) start what needs us.
    listening = ", ".join(f"{name} {endpoint}" for name, endpoint in app.bound.items())
    notify(f"READY=1\nSTATUS=listening: {listening}")
    await stop.wait()
    notify("STOPPING=1")
    await app.stop()
    return 0
