"""Process lifecycle: open the store, start the listeners, stop gracefully on a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

from submitgw.auth import PasswordAuthenticator
from submitgw.config import Config, Endpoint
from submitgw.server import Gateway
from submitgw.store import Database, UserStore
from submitgw.tls import server_context

log = logging.getLogger(__name__)


async def _listen(gw: Gateway, name: str, endpoint: Endpoint, implicit: bool) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    server = await loop.create_server(
        gw.session_factory(name, implicit),
        host=endpoint.host,
        port=endpoint.port,
        family=family,
        ssl=gw.tls_context if implicit else None,
        ssl_handshake_timeout=gw.cfg.limits.idle_timeout if implicit else None,
        reuse_address=True,
    )
    log.info(
        "listening on %s (%s)",
        endpoint,
        "implicit TLS" if implicit else "STARTTLS",
        extra={"event": {"event": "listening", "listener": name, "address": str(endpoint)}},
    )
    return server


async def serve(cfg: Config, db: Database) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit code."""
    authenticator = PasswordAuthenticator(UserStore(db), cfg.auth)
    gw = Gateway(cfg, authenticator, server_context(cfg.tls))
    servers = []
    try:
        if cfg.submission.listen:
            servers.append(await _listen(gw, "submission", cfg.submission.listen, False))
        if cfg.submissions.listen:
            servers.append(await _listen(gw, "submissions", cfg.submissions.listen, True))
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
    await stop.wait()

    log.info("stopping: no new connections, %d session(s) open", len(gw.sessions))
    for server in servers:
        server.close()
    await gw.drain(cfg.server.shutdown_grace)
    for server in servers:
        await server.wait_closed()
    authenticator.close()
    log.info("stopped")
    return 0
