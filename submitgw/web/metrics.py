"""The admin port: `/metrics` for Prometheus, `/healthz` and `/readyz` for load balancers.

Plain HTTP on the gateway's own event loop, behind the same connection caps and clocks
as the self-service site (`web.listener.GuardedSite`, without TLS): it is meant for
loopback or a management network, but a stranger who reaches it still cannot hold
its sockets or make it work hard. Only GET (and HEAD) of the three paths are served.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from submitgw.config import Endpoint, MetricsConfig
from submitgw.services import audit
from submitgw.services.readiness import Verdict
from submitgw.web.listener import CLOSE_GRACE, GuardedSite, connection_of

# A request has no business with a body here.
MAX_BODY = 1024


@dataclass(frozen=True)
class AdminLimits:
    """`web.listener.SiteLimits` for the admin port: short clocks, nothing to upload."""

    max_connections: int
    max_connections_per_ip: int
    handshake_timeout: float = 5.0  # unused: no TLS
    header_timeout: float = 5.0
    body_timeout: float = 5.0
    idle_timeout: float = 30.0


class AdminSite:
    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Callable[[], Awaitable[Verdict]],
        cfg: MetricsConfig,
        limits: AdminLimits | None = None,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.registry = registry
        # Called before each scrape: the supervisor of `serve --workers` gathers its workers'.
        self.refresh = refresh
        self.readiness = readiness
        self.limits = limits or AdminLimits(cfg.max_connections, cfg.max_connections_per_ip)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._clocks], client_max_size=MAX_BODY)
        app.add_routes(
            [
                web.get("/metrics", self.metrics),
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
            ]
        )
        return app

    async def start(
        self, endpoint: Endpoint, bound: list[socket.socket] | None = None
    ) -> tuple[web.AppRunner, list[socket.socket]]:
        """Serve on `endpoint`; the runner's `cleanup` stops it."""
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.limits.idle_timeout + CLOSE_GRACE,
        )
        await runner.setup()
        # Its own recorder: a scrape is not an event of the gateway's (logged at DEBUG).
        site = GuardedSite(
            runner,
            endpoint,
            None,
            self.limits,
            recorder=audit.Recorder(),
            listener="metrics",
            event="metrics-connection",
            quiet=True,
            bound=bound,
        )
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner, site.sockets

    @web.middleware
    async def _clocks(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The connection's clocks: a request's time while it is served, idle after."""
        conn = connection_of(request)
        if conn is None:
            return await handler(request)
        conn.request_started()
        try:
            return await handler(request)
        finally:
            conn.request_finished()

    async def metrics(self, request: web.Request) -> web.Response:
        """The text format Prometheus asks for in `Accept` (OpenMetrics or the classic one)."""
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        if self.refresh is not None:
            await self.refresh()
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        """The process runs and its event loop answers (this very handler runs on it)."""
        return web.Response(text="ok\n", content_type="text/plain")

    async def readyz(self, request: web.Request) -> web.Response:
        verdict = await self.readiness()
        return web.Response(
            status=200 if verdict.ready else 503,
            text=verdict.text(),
            content_type="text/plain",
            headers={"Cache-Control": "no-store"},
        )
