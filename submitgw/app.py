"""Process lifecycle: open the store, start the listeners, stop gracefully on a signal."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket

from aiohttp import web

import pki
from submitgw.config import Config, Endpoint, ListenerConfig, selfservice_url
from submitgw.services.authn import CertificateAuthenticator, PasswordAuthenticator
from submitgw.services.dns import ReverseDns
from submitgw.services.limiter import Limiter
from submitgw.services.memory import trim_after_churn
from submitgw.services.screening import ClientScreen
from submitgw.smtp import replies
from submitgw.smtp.session import Gateway, Listener
from submitgw.store import (
    AccessRuleStore,
    CertificateStore,
    CredentialStore,
    Database,
    SenderStore,
    UserNetworkStore,
    UserStore,
)
from submitgw.store.counters import CounterStore
from submitgw.tls import server_context
from submitgw.web.site import SelfService

log = logging.getLogger(__name__)


async def _listen(gw: Gateway, listener: Listener, endpoint: Endpoint) -> asyncio.Server:
    """A plain socket; TLS, implicit or STARTTLS, is layered on by the session itself."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    server = await loop.create_server(
        gw.connection_factory(listener),
        host=endpoint.host,
        port=endpoint.port,
        family=family,
        reuse_address=True,
    )
    log.info(
        "listening on %s",
        endpoint,
        extra={
            "event": {
                "event": "listening",
                "listener": listener.name,
                "address": str(endpoint),
                "tls": "implicit" if listener.implicit_tls else "starttls",
                "client_certificates": listener.settings.client_certificates,
            }
        },
    )
    return server


async def _listen_selfservice(
    cfg: Config, selfservice: SelfService, endpoint: Endpoint
) -> web.AppRunner:
    context = server_context(cfg.tls, cfg.selfservice.client_certificates)
    runner = await selfservice.start(endpoint, context)
    log.info(
        "self-service site on %s",
        endpoint,
        extra={
            "event": {
                "event": "listening",
                "listener": "selfservice",
                "address": str(endpoint),
                "tls": "implicit",
                "client_certificates": cfg.selfservice.client_certificates,
                "url": selfservice_url(cfg),
            }
        },
    )
    return runner


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


def _listeners(cfg: Config) -> list[tuple[Listener, Endpoint]]:
    chosen: list[tuple[str, ListenerConfig, bool]] = [
        ("submission", cfg.submission, False),
        ("submissions", cfg.submissions, True),
    ]
    return [
        (Listener(name, implicit, server_context(cfg.tls, s.client_certificates), s), s.listen)
        for name, s, implicit in chosen
        if s.listen is not None
    ]


def _status(gw: Gateway) -> None:
    """SIGHUP: until configuration can be reloaded live, say so instead of dying."""
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
    networks = UserNetworkStore(db)
    authenticator = PasswordAuthenticator(
        UserStore(db),
        cfg.auth,
        networks,
        CredentialStore(db),
        cfg.passwords,
        selfservice_url(cfg),
    )
    listeners = _listeners(cfg)
    certificates = None
    site_certs = cfg.selfservice.listen is not None and cfg.selfservice.client_certificates != "off"
    if site_certs or any(lst.settings.client_certificates != "off" for lst, _ in listeners):
        certificates = CertificateAuthenticator(
            CertificateStore(db), pki.load_certificate(cfg.tls.ca_cert), networks
        )
    screen = ClientScreen(AccessRuleStore(db), ReverseDns(cfg.dns), cfg.policy)
    limiter = Limiter(cfg.limits, CounterStore(db), describe=replies.line)
    gw = Gateway(cfg, authenticator, certificates, screen, senders=SenderStore(db), limiter=limiter)
    servers = []
    site: web.AppRunner | None = None
    try:
        for listener, endpoint in listeners:
            servers.append(await _listen(gw, listener, endpoint))
        if cfg.selfservice.listen is not None:
            selfservice = SelfService(
                cfg, db, authenticator, certificates, limiter, screen=screen.refusal
            )
            site = await _listen_selfservice(cfg, selfservice, cfg.selfservice.listen)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        for server in servers:
            server.close()
        authenticator.close()
        return 1
    if not servers:
        log.error("both listeners are off; nothing to do")
        authenticator.close()
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _status, gw)
    trimming = asyncio.create_task(
        trim_after_churn(lambda: gw.connections.released, cfg.server.memory_trim_interval)
    )
    await stop.wait()
    trimming.cancel()

    log.info("stopping: no new connections, %d connection(s) open", gw.connections.total)
    for server in servers:
        server.close()
    if site is not None:
        await site.cleanup()
    await gw.drain(cfg.server.shutdown_grace)
    for server in servers:
        await server.wait_closed()
    authenticator.close()
    log.info("stopped")
    return 0
