"""`serve --workers N`: one supervisor and N worker processes, so that every core serves.

The supervisor (the process `serve` started, systemd's MainPID) binds every listening
socket once and hands the same sockets to each worker, which it starts as a fresh
`submitgw ... serve --worker SPEC` process: no database engine, thread pool or event
loop is ever inherited. All workers accept on the shared sockets and the kernel
gives each connection to one of them; a port 0 stays one port.

The supervisor opens no database and serves no mail. It logs the `listening` events,
tells systemd READY/RELOADING/STOPPING, forwards SIGTERM/SIGINT and SIGHUP to the
workers, restarts a worker that died (a crash loop stops the gateway), and serves the
admin port, where each worker's metrics appear with a `worker` label and /readyz is
ready when every worker is.

The caps of one process are divided among the workers (`share`), so the gateway as a
whole never holds more connections or runs more argon2 threads than configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from submitgw.app.gateway import log_listening
from submitgw.config import Config, Endpoint
from submitgw.services.notify import NOTIFY_SOCKET_ENV, notify
from submitgw.services.readiness import Probe, Verdict
from submitgw.web.listener import bind_sockets
from submitgw.web.metrics import AdminSite

log = logging.getLogger(__name__)

# A worker that dies more than RESTART_LIMIT times within RESTART_WINDOW seconds is a
# crash loop: the supervisor stops the gateway rather than spin.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
RESTART_DELAY_MAX = 10.0
# Seconds for a scrape of one worker's metrics or readiness.
ASK_TIMEOUT = 5.0
BACKLOG = 128
_CREATED = "_created"


def worker_count(asked: int) -> int:
    """0 means one worker per core."""
    return asked if asked > 0 else os.cpu_count() or 1


def _part(total: int, count: int) -> int:
    """A cap of 0 stays 0 (what it means is the key's own)."""
    return 0 if total <= 0 else max(1, total // count)


def share(cfg: Config, count: int) -> Config:
    """One worker's part of each per-process cap: the total divided by the workers,
    rounded down, at least 1 (so a cap below N becomes N in all). Limits counted in
    the database (rates, failures) are shared by all workers already."""
    if count <= 1:
        return cfg
    limits, site, auth = cfg.limits, cfg.selfservice, cfg.auth
    return cfg.replace(
        limits=dataclasses.replace(
            limits,
            max_connections=_part(limits.max_connections, count),
            max_connections_per_ip=_part(limits.max_connections_per_ip, count),
        ),
        selfservice=dataclasses.replace(
            site,
            max_connections=_part(site.max_connections, count),
            max_connections_per_ip=_part(site.max_connections_per_ip, count),
        ),
        auth=dataclasses.replace(
            auth,
            workers=_part(auth.workers, count),
            max_pending=_part(auth.max_pending, count),
            max_pending_per_ip=_part(auth.max_pending_per_ip, count),
            max_pending_per_account=_part(auth.max_pending_per_account, count),
        ),
    )


@dataclass(frozen=True)
class Spec:
    """What a worker is told on its command line: which one it is, of how many, and
    the descriptors it inherited (listening sockets by listener name; its end of the
    line to the supervisor)."""

    index: int
    count: int
    fds: dict[str, list[int]]
    line: int

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> Spec:
        data = json.loads(text)
        return cls(
            index=int(data["index"]),
            count=int(data["count"]),
            fds={str(k): [int(fd) for fd in v] for k, v in data["fds"].items()},
            line=int(data["line"]),
        )

    def sockets(self) -> dict[str, list[socket.socket]]:
        return {name: [socket.socket(fileno=fd) for fd in fds] for name, fds in self.fds.items()}


def _bind_smtp(endpoint: Endpoint) -> socket.socket:
    """As `loop.create_server` would bind one listener."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((endpoint.host, endpoint.port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _port(sockets: Iterable[socket.socket], endpoint: Endpoint) -> Endpoint:
    for sock in sockets:
        return dataclasses.replace(endpoint, port=int(sock.getsockname()[1]))
    return endpoint


@dataclass
class Worker:
    index: int
    # Its own admin port on loopback, which only the supervisor asks.
    admin: socket.socket | None
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    reloaded: asyncio.Event = field(default_factory=asyncio.Event)
    deaths: list[float] = field(default_factory=list)


class Gathered:
    """A collector of the families last gathered from the workers."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


def merge(texts: dict[int, str]) -> list[Metric]:
    """The workers' exposition texts as one, each sample labelled with its worker;
    families of one name become one (their HELP and TYPE said once)."""
    merged: dict[str, Metric] = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(index)}
                into.samples.append(sample._replace(labels=labels))
    # The classic format writes a counter's `_created` as a gauge family of its own;
    # OpenMetrics wants it back in the counter's (or histogram's) family.
    for name in [n for n in merged if n.endswith(_CREATED)]:
        owner = merged.get(name.removesuffix(_CREATED))
        if owner is not None and owner.type in ("counter", "histogram", "summary"):
            owner.samples.extend(merged.pop(name).samples)
    for family in merged.values():
        # OpenMetrics: a series' samples together (a stable sort keeps buckets in order).
        family.samples.sort(key=_series)
    return list(merged.values())


def _series(sample: Sample) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in sample.labels.items() if k not in ("le", "quantile"))


class Supervisor:
    def __init__(
        self, cfg: Config, command: list[str], count: int, first_delay: float = 0.25
    ) -> None:
        """`command`: how to start a worker, to which `--worker SPEC` is added;
        `first_delay`: the pause before a restart, doubled for each recent death."""
        self.first_delay = first_delay
        self.cfg = cfg
        self.command = command
        self.count = count
        self.shared: dict[str, list[socket.socket]] = {}
        self.workers = [Worker(i, None) for i in range(count)]
        self.stopping = False
        self.failed = False
        self.stop = asyncio.Event()
        self.gathered = Gathered()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.gathered)
        self._admin: aiohttp.web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def _bind(self) -> None:
        for name, settings in self.cfg.listeners().items():
            if settings.listen is not None:
                sock = _bind_smtp(settings.listen)
                self.shared[name] = [sock]
                log_listening(
                    name,
                    _port([sock], settings.listen),
                    "implicit" if name == "submissions" else "starttls",
                    settings.client_certificates,
                    workers=self.count,
                )
        site = self.cfg.selfservice
        if site.listen is not None:
            sockets = await bind_sockets(site.listen, BACKLOG)
            for sock in sockets:
                sock.setblocking(True)
            self.shared["selfservice"] = sockets
            log_listening(
                "selfservice",
                _port(sockets, site.listen),
                "implicit",
                site.client_certificates,
                workers=self.count,
            )
        if self.cfg.metrics.listen is not None:
            for worker in self.workers:
                worker.admin = _bind_smtp(Endpoint("127.0.0.1", 0))
            admin = AdminSite(self.registry, self.verdict, self.cfg.metrics, refresh=self.gather)
            self._admin, sockets = await admin.start(self.cfg.metrics.listen)
            bound = _port(sockets, self.cfg.metrics.listen)
            log_listening("metrics", bound, "none", "off", url=f"http://{bound}/metrics")

    def _close(self) -> None:
        for sockets in self.shared.values():
            for sock in sockets:
                sock.close()
        for worker in self.workers:
            if worker.admin is not None:
                worker.admin.close()

    async def _spawn(self, worker: Worker) -> None:
        ours, theirs = socket.socketpair()
        fds = {name: [s.fileno() for s in socks] for name, socks in self.shared.items()}
        if worker.admin is not None:
            fds["metrics"] = [worker.admin.fileno()]
        spec = Spec(worker.index, self.count, fds, theirs.fileno())
        passed = [fd for group in fds.values() for fd in group] + [theirs.fileno()]
        # Only the supervisor talks to systemd (NotifyAccess=main).
        env = {k: v for k, v in os.environ.items() if k != NOTIFY_SOCKET_ENV}
        worker.ready.clear()
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *self.command,
                "--worker",
                spec.dumps(),
                pass_fds=passed,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        log.info(
            "worker %d started, pid %d",
            worker.index,
            worker.proc.pid,
            extra={
                "event": {"event": "worker-start", "worker": worker.index, "pid": worker.proc.pid}
            },
        )
        self._run(self._listen(worker, ours))
        self._run(self._watch(worker, worker.proc))

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self, worker: Worker, line: socket.socket) -> None:
        """What the worker says: "ready" once started, "reloaded" after each SIGHUP."""
        reader, writer = await asyncio.open_connection(sock=line)
        try:
            while said := await reader.readline():
                if said.strip() == b"ready":
                    worker.ready.set()
                    log.info(
                        "worker %d ready",
                        worker.index,
                        extra={"event": {"event": "worker-ready", "worker": worker.index}},
                    )
                elif said.strip() == b"reloaded":
                    worker.reloaded.set()
        finally:
            writer.close()

    async def _watch(self, worker: Worker, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self.stopping:
            return
        now = time.monotonic()
        worker.deaths = [t for t in worker.deaths if now - t < RESTART_WINDOW] + [now]
        event = {"event": "worker-exit", "worker": worker.index, "pid": proc.pid, "code": code}
        if len(worker.deaths) > RESTART_LIMIT:
            log.error(
                "worker %d exited (%s) %d times within %.0f s; stopping the gateway",
                worker.index,
                code,
                len(worker.deaths),
                RESTART_WINDOW,
                extra={"event": {**event, "restart": False}},
            )
            self.failed = True
            self.stop.set()
            return
        delay = min(RESTART_DELAY_MAX, self.first_delay * 2 ** (len(worker.deaths) - 1))
        log.error(
            "worker %d exited unexpectedly (%s); restarting in %.2f s",
            worker.index,
            code,
            delay,
            extra={"event": {**event, "restart": True, "delay": delay}},
        )
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(worker)

    def _signal(self, sig: int, *, ready_only: bool = False) -> None:
        for worker in self.workers:
            if ready_only and not worker.ready.is_set():
                continue
            if worker.proc is not None and worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(sig)

    async def _reload(self) -> None:
        """SIGHUP: each worker reloads itself and logs its own `reload` line."""
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        # One still starting has no handler yet (SIGHUP would kill it); it reads the
        # configuration afresh anyway.
        asked = [w for w in self.workers if w.ready.is_set()]
        for worker in asked:
            worker.reloaded.clear()
        self._signal(signal.SIGHUP, ready_only=True)
        waits = [w.reloaded.wait() for w in asked if w.proc and w.proc.returncode is None]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), 60)
        notify(f"READY=1\nSTATUS={self._status()}")

    def _status(self) -> str:
        return f"{self.count} workers; listening: " + ", ".join(sorted(self.shared))

    async def _ask(self, worker: Worker, path: str) -> tuple[int, str]:
        if worker.admin is None or self._session is None:
            return 503, "no admin port"
        if worker.proc is None or worker.proc.returncode is not None:
            return 503, "not running"
        port = worker.admin.getsockname()[1]
        try:
            async with self._session.get(f"http://127.0.0.1:{port}{path}") as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 503, f"unreachable: {type(exc).__name__}"

    async def gather(self) -> None:
        """Before a scrape: every worker's metrics, with its number as a label."""
        answers = await asyncio.gather(*(self._ask(w, "/metrics") for w in self.workers))
        texts = {
            w.index: text
            for w, (status, text) in zip(self.workers, answers, strict=True)
            if status == 200
        }
        self.gathered.families = merge(texts)

    async def verdict(self) -> Verdict:
        """Ready when every worker is."""
        if self.stopping:
            return Verdict((), stopping=True)
        answers = await asyncio.gather(*(self._ask(w, "/readyz") for w in self.workers))
        probes = tuple(
            Probe(f"worker {w.index}", status == 200, "; ".join(text.split("\n")).strip("; "))
            for w, (status, text) in zip(self.workers, answers, strict=True)
        )
        return Verdict(probes)

    async def run(self) -> int:
        try:
            await self._bind()
        except OSError as exc:
            log.error("cannot listen: %s", exc)
            self._close()
            return 1
        if self._admin is not None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._run(self._reload()))
        for worker in self.workers:
            await self._spawn(worker)
        self._run(self._ready())
        await self.stop.wait()
        return await self._shutdown()

    async def _ready(self) -> None:
        await asyncio.gather(*(w.ready.wait() for w in self.workers))
        notify(f"READY=1\nSTATUS={self._status()}")

    async def _shutdown(self) -> int:
        notify("STOPPING=1")
        self.stopping = True
        log.info("stopping %d workers", self.count, extra={"event": {"event": "workers-stopping"}})
        self._signal(signal.SIGTERM)
        procs = [w.proc for w in self.workers if w.proc is not None]
        # A worker's own stop: the grace, 5 s for silent clients, the trail's last write.
        limit = self.cfg.server.shutdown_grace + 5 + self.cfg.audit.shutdown_timeout + 5
        try:
            codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), limit)
        except TimeoutError:
            log.error("workers still running %.0f s after SIGTERM; killing them", limit)
            self._signal(signal.SIGKILL)
            codes = [await p.wait() for p in procs]
            codes.append(1)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._admin is not None:
            await self._admin.cleanup()
        if self._session is not None:
            await self._session.close()
        self._close()
        log.info("stopped")
        # Killed by the SIGTERM sent: one still starting, before its handlers were set.
        clean = (0, -signal.SIGTERM)
        return 1 if self.failed or any(code not in clean for code in codes) else 0


def worker_command() -> list[str]:
    """This very command line again, as a worker's."""
    return [sys.executable, "-m", "submitgw", *sys.argv[1:]]


async def supervise(cfg: Config, count: int) -> int:
    return await Supervisor(cfg, worker_command(), count).run()
