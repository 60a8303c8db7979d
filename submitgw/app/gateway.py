"""The serving side of the wiring: configuration and a database in, a running gateway out.

`submitgw serve` and the tests build the gateway here, so what a test runs is what
production runs. `App` owns the listeners and knows nothing of
processes; `serve` adds what a process needs (signals, the exit code, the log line
and the systemd notifications of a reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import resource
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from cryptography import x509
from OpenSSL import SSL

import pki
from submitgw import config as config_mod
from submitgw.app import Stores
from submitgw.app.reload import Prepared, prepare, read_tls_files
from submitgw.config import (
    Config,
    ConfigError,
    Endpoint,
    ListenerConfig,
    certificates_needed,
    selfservice_url,
)
from submitgw.services import audit
from submitgw.services.audit import Recorder
from submitgw.services.authn import CertificateAuthenticator, PasswordAuthenticator
from submitgw.services.dns import ReverseDns
from submitgw.services.limiter import Limiter
from submitgw.services.memory import trim_after_churn
from submitgw.services.metrics import Metrics
from submitgw.services.notify import notify
from submitgw.services.readiness import Readiness
from submitgw.services.screening import ClientScreen
from submitgw.services.senders import Senders
from submitgw.services.trail import DatabaseTrail
from submitgw.smtp import replies, tlslayer
from submitgw.smtp.session import Gateway, Listener
from submitgw.store import (
    Database,
)
from submitgw.tls import server_context
from submitgw.web.metrics import AdminSite
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
    dns: ReverseDns
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


def build_services(cfg: Config, db: Database, ca: x509.Certificate | None) -> Services:
    """`ca`: the bundled CA, needed when a listener asks for client certificates."""
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
        senders=stores.senders,
    )
    certificates = None
    if ca is not None:
        certificates = CertificateAuthenticator(stores.certificates, ca, senders=stores.senders)
    dns = ReverseDns(cfg.dns)
    return Services(
        cfg=cfg,
        stores=stores,
        authenticator=authenticator,
        certificates=certificates,
        screen=ClientScreen(stores.access_rules, dns, cfg.policy, recorder),
        dns=dns,
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


def log_listening(name: str, endpoint: Endpoint, tls: str, certs: str, **more: object) -> None:
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


def _listener(name: str, settings: ListenerConfig, context: SSL.Context) -> Listener:
    """`submissions` is the implicit-TLS listener (RFC 8314), `submission` STARTTLS."""
    return Listener(name, name == "submissions", context, settings)


class App:
    """The gateway's listeners over one set of services; start, then stop, once each.

    While it runs, `reload` reads the configuration and the TLS files again and
    applies them to the connections that come after (see `app.reload`).
    """

    def __init__(
        self,
        cfg: Config,
        db: Database,
        inherited: Mapping[str, list[socket.socket]] | None = None,
    ) -> None:
        """`inherited`: listening sockets by listener name, bound by the supervisor of
        `serve --workers` (which also logs their `listening` events); the rest are bound here."""
        self.cfg = cfg
        self.inherited = dict(inherited or {})
        # A ConfigError here names an unreadable file or a key that is not the certificate's.
        self.tls_files = read_tls_files(cfg.tls, need_ca=certificates_needed(cfg))
        self.services = build_services(cfg, db, self.tls_files.ca)
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
        self._selfservice: SelfService | None = None
        self._trimming: asyncio.Task[None] | None = None
        self._reloading = asyncio.Lock()
        self._admin: web.AppRunner | None = None
        self._lag: asyncio.Task[None] | None = None
        # Only with the admin port on: metrics cost nothing when nobody reads them.
        self.metrics: Metrics | None = None
        self.readiness: Readiness | None = None
        if cfg.metrics.listen is not None:
            self._watch(db)

    def _watch(self, db: Database) -> None:
        """Metrics as one more sink of the gateway's events, and the readiness probes."""
        cfg, table = self.cfg, self.gateway.connections
        metrics = self.metrics = Metrics()
        self.services.recorder.sinks.append(metrics)
        metrics.watch_connections(table.open_per_listener, lambda: table.admitted)
        metrics.watch_pool(self.services.authenticator.shares, cfg.auth.workers)
        gateway = self.gateway
        metrics.watch_smarthost_pool(
            lambda: (gateway.pool.idle, gateway.pool.counts.fresh, gateway.pool.counts.reused)
        )
        self.readiness = Readiness(
            db.ping,
            cfg.smarthost.servers,
            cache_seconds=cfg.metrics.readiness_cache_seconds,
            timeout=cfg.metrics.readiness_timeout,
        )

    def _listeners(self) -> list[tuple[Listener, Endpoint]]:
        return [
            (
                _listener(
                    name,
                    settings,
                    tlslayer.server_context(self.cfg.tls, settings.client_certificates),
                ),
                settings.listen,
            )
            for name, settings in self.cfg.listeners().items()
            if settings.listen is not None
        ]

    async def _listen(self, listener: Listener, endpoint: Endpoint) -> None:
        """A plain socket; TLS, implicit or STARTTLS, is layered on by the session itself."""
        loop = asyncio.get_running_loop()
        factory = self.gateway.connection_factory(listener)
        inherited = self.inherited.get(listener.name)
        if inherited:
            server = await loop.create_server(factory, sock=inherited[0])
        else:
            family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
            server = await loop.create_server(
                factory,
                host=endpoint.host,
                port=endpoint.port,
                family=family,
                reuse_address=True,
            )
        self._servers.append(server)
        bound = _bound(list(server.sockets), endpoint)
        self.bound[listener.name] = bound
        if inherited:
            return
        log_listening(
            listener.name,
            bound,
            "implicit" if listener.implicit_tls else "starttls",
            listener.settings.client_certificates,
        )

    def _site_url(self, cfg: Config) -> str | None:
        """Where the password-expired reply sends users; a port 0 is the one bound."""
        bound = self.bound.get("selfservice")
        if bound is not None and not cfg.selfservice.url:
            cfg = cfg.replace(selfservice=dataclasses.replace(cfg.selfservice, listen=bound))
        return selfservice_url(cfg)

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
        inherited = self.inherited.get("selfservice")
        self._site, sockets = await site.start(endpoint, context, inherited)
        self._selfservice = site
        bound = _bound(sockets, endpoint)
        self.bound["selfservice"] = bound
        s.authenticator.selfservice_url = self._site_url(cfg)
        if inherited:
            return
        log_listening(
            "selfservice",
            bound,
            "implicit",
            cfg.selfservice.client_certificates,
            url=s.authenticator.selfservice_url,
        )

    async def _listen_admin(self, endpoint: Endpoint) -> None:
        assert self.metrics is not None and self.readiness is not None
        admin = AdminSite(self.metrics.registry, self.readiness.verdict, self.cfg.metrics)
        inherited = self.inherited.get("metrics")
        self._admin, sockets = await admin.start(endpoint, inherited)
        bound = _bound(sockets, endpoint)
        self.bound["metrics"] = bound
        self._lag = asyncio.create_task(self.metrics.watch_loop())
        if not inherited:
            log_listening("metrics", bound, "none", "off", url=f"http://{bound}/metrics")

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
            if self.cfg.metrics.listen is not None:
                await self._listen_admin(self.cfg.metrics.listen)
        except BaseException:
            await self._close_listeners()
            await self._close_admin()
            raise
        if self.services.trail is not None:
            self.services.trail.start()
        self._start_trimming()

    def _start_trimming(self) -> None:
        if self._trimming is not None:
            self._trimming.cancel()
        self._trimming = asyncio.create_task(
            trim_after_churn(
                lambda: self.gateway.connections.released, self.cfg.server.memory_trim_interval
            )
        )

    async def reload(self, load: Callable[[], Config]) -> Prepared:
        """Read the configuration (`load`) and the TLS files again and apply them to the
        connections that come next; raises ConfigError, changing nothing, when anything
        is unusable. One at a time: a second waits for the first, then reads again."""
        async with self._reloading:
            prepared = await asyncio.to_thread(prepare, load, self.cfg, self.tls_files)
            self._apply(prepared)
            return prepared

    def _apply(self, ready: Prepared) -> None:
        """Everything at once, without an await: a new connection sees all of it or none."""
        cfg, s = ready.cfg, self.services
        self.cfg = s.cfg = s.stores.config = cfg
        self.tls_files = ready.files
        if ready.files.ca is not None:
            if s.certificates is None:
                s.certificates = CertificateAuthenticator(
                    s.stores.certificates, ready.files.ca, senders=s.stores.senders
                )
            else:
                s.certificates.reconfigure(ready.files.ca)
        listeners = [
            _listener(name, cfg.listeners()[name], context)
            for name, context in ready.contexts.items()
        ]
        self.gateway.reconfigure(cfg, listeners, s.certificates)
        s.limiter.reconfigure(cfg.limits)
        s.screen.reconfigure(cfg.policy)
        if ready.resolver is not None:
            s.dns.reconfigure(cfg.dns, ready.resolver)
        s.authenticator.reconfigure(cfg.auth, cfg.passwords, self._site_url(cfg), ready.hashing)
        s.stores.accounts.reconfigure(cfg.auth, cfg.passwords)
        if self._selfservice is not None and ready.site_context is not None:
            self._selfservice.reconfigure(cfg, ready.site_context, s.certificates)
        if self.readiness is not None:
            self.readiness.reconfigure(
                cfg.smarthost.servers,
                cache_seconds=cfg.metrics.readiness_cache_seconds,
                timeout=cfg.metrics.readiness_timeout,
            )
        if "server.memory_trim_interval" in ready.changed and self._trimming is not None:
            self._start_trimming()

    async def _close_listeners(self) -> None:
        for server in self._servers:
            server.close()
        if self._site is not None:
            await self._site.cleanup()
            self._site = None

    async def _close_admin(self) -> None:
        if self._lag is not None:
            self._lag.cancel()
            self._lag = None
        if self._admin is not None:
            await self._admin.cleanup()
            self._admin = None

    async def stop(self, grace: float | None = None) -> None:
        """No new connections; sessions get `grace` (default `shutdown_grace`) to finish,
        then services close. Not ready from the first moment (a balancer drains us), the
        admin port answers until the last."""
        if self.readiness is not None:
            self.readiness.stop()
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
        # Sessions do not wait for their last message's count: it is written now.
        await self.services.limiter.flush()
        if self.services.trail is not None:
            # Every session has ended: what they recorded goes to the database now.
            await asyncio.to_thread(self.services.trail.close)
        self.services.close()
        await self._close_admin()
        log.info("stopped")


def _from_file(cfg: Config) -> Callable[[], Config]:
    def load() -> Config:
        if cfg.path is None:
            raise ConfigError("the configuration came from no file; there is nothing to re-read")
        return config_mod.load(cfg.path)

    return load


def _counts(app: App) -> dict[str, int]:
    return {
        "connections": app.gateway.connections.total,
        "sessions": len(app.gateway.sessions),
    }


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


async def _reload(app: App, load: Callable[[], Config], worker: int | None = None) -> None:
    """SIGHUP: reload, and say in one log line what came of it (`worker`: which one)."""
    notify(f"RELOADING=1\nMONOTONIC_USEC={_monotonic_usec()}")
    who = {} if worker is None else {"worker": worker}
    try:
        done = await app.reload(load)
    except Exception as exc:
        reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        event = {
            "event": "reload",
            "result": "refused",
            "reason": reason,
            **who,
            **_counts(app),
        }
        log.error(
            "reload refused, still serving the previous configuration: %s",
            reason,
            exc_info=not isinstance(exc, ConfigError),
            extra={"event": event},
        )
    else:
        if any(key.startswith("log.") for key in done.changed):
            audit.setup_logging(app.cfg.log, worker)
        cert = done.files.cert
        event = {
            "event": "reload",
            "result": "ok",
            "changed": done.changed,
            "needs_restart": done.needs_restart,
            "cert_serial": pki.format_serial(cert.serial_number),
            "cert_not_after": cert.not_valid_after_utc.isoformat(),
            **who,
            **_counts(app),
        }
        if done.needs_restart:
            log.warning(
                "configuration reloaded; restart to apply %s",
                ", ".join(done.needs_restart),
                extra={"event": event},
            )
        else:
            log.info(
                "configuration reloaded; changed: %s",
                ", ".join(done.changed) or "nothing",
                extra={"event": event},
            )
    finally:
        notify(f"READY=1\nSTATUS={_status(app)}")


def _status(app: App) -> str:
    return "listening: " + ", ".join(f"{name} {endpoint}" for name, endpoint in app.bound.items())


@dataclass(frozen=True)
class WorkerRole:
    """What a worker of `serve --workers` is given: its number, its supervisor's
    listening sockets, and a line to tell the supervisor "ready" and "reloaded"."""

    index: int
    inherited: Mapping[str, list[socket.socket]]
    # A socket to the supervisor: lines said on it; its end means the supervisor is gone.
    line: socket.socket

    def tell(self, what: str) -> None:
        with contextlib.suppress(OSError):
            self.line.send(what.encode("ascii") + b"\n")

    def on_orphaned(self, stop: Callable[[], None]) -> None:
        """`stop` when the supervisor's end closes (it died: no worker outlives it)."""
        self.line.setblocking(False)

        def readable() -> None:
            try:
                if self.line.recv(64):
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            asyncio.get_running_loop().remove_reader(self.line.fileno())
            stop()

        asyncio.get_running_loop().add_reader(self.line.fileno(), readable)


async def serve(
    cfg: Config,
    db: Database,
    load: Callable[[], Config] | None = None,
    worker: WorkerRole | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code.

    SIGHUP reloads: `load` reads the configuration again as `serve` was given it (the
    command line's flags over the file); by default, the file `cfg` came from.
    """
    raise_fd_limit()
    try:
        app = App(cfg, db, worker.inherited if worker else None)
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
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
    reloads: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        await _reload(app, load or _from_file(cfg), worker.index if worker else None)
        if worker is not None:
            worker.tell("reloaded")

    def hangup() -> None:
        task = asyncio.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    # Only now, with every listener bound, may systemd (Type=notify) start what needs us.
    notify(f"READY=1\nSTATUS={_status(app)}")
    if worker is not None:
        worker.on_orphaned(stop.set)
        worker.tell("ready")
    await stop.wait()
    notify("STOPPING=1")
    loop.remove_signal_handler(signal.SIGHUP)
    for task in reloads:
        task.cancel()
    await app.stop()
    return 0
