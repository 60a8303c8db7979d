"""Whether this gateway can take mail now: its database answers and a smarthost greets.

A load balancer asks every few seconds, and so may anyone who reaches the admin port;
so a verdict is reused for `cache_seconds`, concurrent askers share the one check in
progress, and a database query that hangs keeps one worker thread, never more (the
next check reports it still hanging instead of starting another). Each probe has
`timeout` seconds. Once the gateway is stopping, the answer is "no" at once, so a
balancer sends new clients elsewhere while the sessions in progress finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from submitgw.config import SmarthostServer

log = logging.getLogger(__name__)

# Bytes of a smarthost's greeting read at most (RFC 5321 allows a multi-line 220).
MAX_GREETING = 4096


@dataclass(frozen=True)
class Probe:
    """One thing checked: its name, whether it passed, and what was seen.

    `detail` is what /readyz shows; `cause` (the error's text) only goes to the log.
    """

    name: str
    ok: bool
    detail: str
    cause: str = ""


@dataclass(frozen=True)
class Verdict:
    probes: tuple[Probe, ...]
    stopping: bool = False

    @property
    def ready(self) -> bool:
        return not self.stopping and all(p.ok for p in self.probes)

    def text(self) -> str:
        """A few plain lines: the verdict, then one per probe."""
        if self.stopping:
            return "not ready: stopping\n"
        head = "ready" if self.ready else "not ready"
        return head + "\n" + "".join(f"{p.name}: {p.detail}\n" for p in self.probes)


class Readiness:
    def __init__(
        self,
        ping: Callable[[], object],
        smarthosts: tuple[SmarthostServer, ...],
        *,
        cache_seconds: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._smarthosts = smarthosts
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._clock = clock
        self._stopping = False
        self._verdict: Verdict | None = None
        self._checked_at = 0.0
        self._checking: asyncio.Future[Verdict] | None = None
        self._query: asyncio.Future[object] | None = None
        self._query_started = 0.0

    def reconfigure(
        self, smarthosts: tuple[SmarthostServer, ...], *, cache_seconds: float, timeout: float
    ) -> None:
        """A live reload: the next verdict probes the smarthosts now configured."""
        self._smarthosts = smarthosts
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._verdict = None

    def stop(self) -> None:
        """From now on: not ready."""
        self._stopping = True

    async def verdict(self) -> Verdict:
        if self._stopping:
            return Verdict((), stopping=True)
        fresh = self._clock() - self._checked_at < self._cache_seconds
        if self._verdict is not None and fresh:
            return self._verdict
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._check())
        checking = self._checking
        # Shielded: an asker that goes away must not cancel the others' check.
        verdict = await asyncio.shield(checking)
        return Verdict((), stopping=True) if self._stopping else verdict

    async def _check(self) -> Verdict:
        try:
            probes = await asyncio.gather(self._database(), self._smarthost())
            verdict = Verdict(tuple(probes))
            if self._verdict is None or self._verdict.ready != verdict.ready:
                _log_change(verdict)
            self._verdict, self._checked_at = verdict, self._clock()
            return verdict
        finally:
            self._checking = None

    async def _database(self) -> Probe:
        """The query runs in a worker thread; one that hangs is waited for, not repeated."""
        loop = asyncio.get_running_loop()
        if self._query is None or self._query.done():
            self._query = loop.run_in_executor(None, self._ping)
            self._query.add_done_callback(_consume)
            self._query_started = loop.time()
        started = loop.time()
        try:
            await asyncio.wait_for(asyncio.shield(self._query), self._timeout)
        except TimeoutError:
            waited = loop.time() - self._query_started
            return Probe("database", False, f"no answer for {waited:.1f} s")
        except Exception as exc:
            return Probe("database", False, f"failed ({type(exc).__name__})", _first_line(exc))
        return Probe("database", True, f"ok ({(loop.time() - started) * 1000:.0f} ms)")

    async def _smarthost(self) -> Probe:
        """The smarthosts in order until one greets with 220; each gets `timeout` seconds."""
        failures = []
        for server in self._smarthosts:
            try:
                await asyncio.wait_for(_greeted(server), self._timeout)
            except TimeoutError:
                failures.append(f"{server} no greeting within {self._timeout:g} s")
                continue
            except Exception as exc:  # refused, reset, unresolvable, garbled: not ready
                failures.append(f"{server} {_first_line(exc)}")
                continue
            return Probe("smarthost", True, f"ok ({server})")
        return Probe("smarthost", False, "none greets: " + "; ".join(failures))


async def _greeted(server: SmarthostServer) -> None:
    """Connect, read the whole greeting, expect 220, say QUIT and go."""
    reader, writer = await asyncio.open_connection(server.host, server.port, limit=MAX_GREETING)
    try:
        while True:
            line = await reader.readuntil(b"\n")
            if not line.startswith(b"220"):
                raise ValueError(f"greeted with {line[:40]!r}")
            if line[3:4] != b"-":
                break
        writer.write(b"QUIT\r\n")
        with contextlib.suppress(OSError):
            await writer.drain()
    finally:
        writer.close()


def _log_change(verdict: Verdict) -> None:
    event: dict[str, object] = {"event": "readiness", "ready": verdict.ready}
    for probe in verdict.probes:
        event[probe.name] = probe.detail + (f": {probe.cause}" if probe.cause else "")
    level = logging.INFO if verdict.ready else logging.WARNING
    log.log(level, "%s", "ready" if verdict.ready else "not ready", extra={"event": event})


def _consume(future: asyncio.Future[object]) -> None:
    """A query nobody waits for any more must not be reported as an unretrieved error."""
    if not future.cancelled():
        future.exception()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
