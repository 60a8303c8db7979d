"""Prometheus metrics: counts from the events the gateway already emits, readings at scrape time.

`Metrics` is one more sink of the gateway's `Recorder`: every event that leaves as a
log line also moves a counter here, so the message path pays a dictionary lookup and
an increment, nothing else. What is a level rather than a count (open connections, the
argon2 pool, the event loop's lag) is read when Prometheus scrapes, through callbacks.

Each gateway has its own `CollectorRegistry` (no process-wide state: several gateways
may run in one test process). Labels only ever take values from small fixed sets below;
anything else becomes `other`, so no user name, address or client IP can become a label
(one time series each, and a leak into the metrics store).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from submitgw.rules import proxy
from submitgw.services.pool import PoolShares
from submitgw.types import CertificateFlaw

OTHER = "other"
LISTENERS = ("submission", "submissions", "selfservice")
SMTP_LISTENERS = ("submission", "submissions")
CONNECTION_REFUSALS = (
    "too-many-connections",
    "too-many-connections-from-client",
    "shutting-down",
    proxy.UNTRUSTED,
    proxy.MISSING,
    proxy.MALFORMED,
    proxy.TOO_LONG,
    proxy.UNSUPPORTED,
    proxy.TRUNCATED,
    proxy.LATE,
)
MECHANISMS = ("PLAIN", "LOGIN", "EXTERNAL", "selfservice-password", "selfservice-certificate")
AUTH_RESULTS = ("ok", "failed", "locked", "limited", "expired")
REJECTIONS = (
    "sender-binding",
    "header-from",
    "limit",
    "size",
    "content",
    "smarthost-4xx",
    "smarthost-5xx",
)
SMARTHOST_STEPS = ("connect", "mail", "rcpt", "data")
SMARTHOST_ERRORS = ("connect", "timeout", "lost", "4xx", "5xx")
LIMITS = {
    "user messages",
    "user recipients",
    "ip messages",
    "ip recipients",
    "account logins",
    "ip logins",
}
LOCKS = ("account", "ip")
CERTIFICATE_REASONS = tuple(flaw.value for flaw in CertificateFlaw)
ACCESS_DECISIONS = ("allow", "deny", "error")
SESSION_ENDS = (
    "quit",
    "disconnect",
    "timeout",
    "errors",
    "junk-commands",
    "evicted",
    "tls-failed",
    "access-denied",
    "shutdown",
    "connection-error",
    "internal-error",
)
# Site connections that ended before (or without) a finished TLS handshake.
_SITE_WITHOUT_TLS = {"tls-failed", "shutdown", "internal-error"}

# Seconds: the smarthost's time over a message, and the event loop's lateness.
SMARTHOST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# How often the event loop's lag is measured, and how far back the recent maximum looks.
LAG_INTERVAL = 0.5
LAG_WINDOW = 10.0


def known(value: object, allowed: Iterable[str]) -> str:
    """`value` if it is one of `allowed`, else `other`: the only way a label gets a value."""
    return value if isinstance(value, str) and value in allowed else OTHER


def version() -> str:
    try:
        return importlib.metadata.version("submitgw")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class RecentMax:
    """The largest value seen in the last one to two windows (two rolling buckets)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._started = 0.0
        self._current = 0.0
        self._previous = 0.0

    def add(self, now: float, value: float) -> None:
        if now - self._started >= self.window:
            elapsed_windows = (now - self._started) // self.window
            self._previous = self._current if elapsed_windows < 2 else 0.0
            self._current = 0.0
            self._started = now
        self._current = max(self._current, value)

    def value(self, now: float) -> float:
        if now - self._started >= 2 * self.window:
            return 0.0
        if now - self._started >= self.window:
            return self._current
        return max(self._current, self._previous)


class _Readings(Collector):
    """What is read when Prometheus scrapes, not counted as it happens."""

    def __init__(self, read: Callable[[], Iterator[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        return self._read()


class Metrics:
    """The gateway's metrics: a `Sink` for its events, gauges read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections_refused = Counter(
            "submitgw_connections_refused",
            "Connections closed at accept, by listener and reason",
            ["listener", "reason"],
            registry=r,
        )
        self.tls_handshakes = Counter(
            "submitgw_tls_handshakes",
            "TLS handshakes by listener and result (ok counted when the connection ends)",
            ["listener", "result"],
            registry=r,
        )
        self.auth_attempts = Counter(
            "submitgw_auth_attempts",
            "Logins (SMTP AUTH and self-service sign-ins) by mechanism and result",
            ["mechanism", "result"],
            registry=r,
        )
        self.messages_accepted = Counter(
            "submitgw_messages_accepted", "Messages the smarthost accepted", registry=r
        )
        self.recipients_accepted = Counter(
            "submitgw_recipients_accepted",
            "Recipients of the messages the smarthost accepted",
            registry=r,
        )
        self.messages_rejected = Counter(
            "submitgw_messages_rejected",
            "Messages refused, by reason",
            ["reason"],
            registry=r,
        )
        self.smarthost_seconds = Histogram(
            "submitgw_smarthost_data_seconds",
            "Seconds from DATA to the smarthost's answer after the message",
            buckets=SMARTHOST_BUCKETS,
            registry=r,
        )
        self.smarthost_errors = Counter(
            "submitgw_smarthost_errors",
            "Smarthost trouble by step and kind",
            ["step", "error"],
            registry=r,
        )
        self.limit_hits = Counter(
            "submitgw_limit_hits",
            "Refusals for a sending or login limit, by who is counted and what",
            ["scope", "measure"],
            registry=r,
        )
        self.lockouts = Counter(
            "submitgw_lockouts",
            "Lockouts after failed logins, of a login name or a client address",
            ["lock"],
            registry=r,
        )
        self.certificates = Counter(
            "submitgw_client_certificates",
            "Client certificates judged, by result and reason",
            ["result", "reason"],
            registry=r,
        )
        self.access = Counter(
            "submitgw_access_decisions",
            "Access-rule decisions before the greeting",
            ["decision"],
            registry=r,
        )
        self.sessions_ended = Counter(
            "submitgw_sessions_ended",
            "SMTP sessions ended, by listener and reason",
            ["listener", "end"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "submitgw_event_loop_lag_seconds",
            "How late the event loop ran a timer, measured every half second",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        Info("submitgw_build", "The running version", registry=r).info({"version": version()})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._recent_lag = RecentMax(LAG_WINDOW)
        self._clock: Callable[[], float] | None = None
        self._connections: Callable[[], Mapping[str, int]] | None = None
        self._admitted: Callable[[], Mapping[str, int]] | None = None
        self._pool: tuple[PoolShares, int] | None = None
        self._smarthost_pool: Callable[[], tuple[int, int, int]] | None = None
        self._zero()
        r.register(_Readings(self._readings))
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "connection": self._connection,
            "site-connection": self._site_connection,
            "tls": self._tls,
            "session": self._session,
            "auth": self._auth,
            "message": self._message,
            "sender": self._sender,
            "limit": self._limit,
            "lockout": self._lockout,
            "certificate": self._certificate,
            "access": self._access,
            "smarthost": self._smarthost,
        }

    def _zero(self) -> None:
        """Every usual series from the start, so a rate over the first hits is right."""
        for listener in LISTENERS:
            for result in ("ok", "failed"):
                self.tls_handshakes.labels(listener, result)
        for listener in SMTP_LISTENERS:
            for reason in CONNECTION_REFUSALS[:3]:
                self.connections_refused.labels(listener, reason)
        for mechanism in MECHANISMS:
            for result in AUTH_RESULTS:
                self.auth_attempts.labels(mechanism, result)
        for reason in REJECTIONS:
            self.messages_rejected.labels(reason)
        for step in SMARTHOST_STEPS:
            for error in SMARTHOST_ERRORS:
                self.smarthost_errors.labels(step, error)
        for lock in LOCKS:
            self.lockouts.labels(lock)
        for decision in ACCESS_DECISIONS:
            self.access.labels(decision)

    # --- what is read at scrape time ----------------------------------------------------

    def watch_connections(
        self, open_now: Callable[[], Mapping[str, int]], admitted: Callable[[], Mapping[str, int]]
    ) -> None:
        """Open connections and connections admitted so far, per listener."""
        self._connections = open_now
        self._admitted = admitted

    def watch_pool(self, shares: PoolShares, workers: int) -> None:
        self._pool = (shares, workers)

    def watch_smarthost_pool(self, read: Callable[[], tuple[int, int, int]]) -> None:
        """`read`: idle pooled smarthost connections now, connections opened, reused."""
        self._smarthost_pool = read

    def _readings(self) -> Iterator[Metric]:
        if self._connections is not None and self._admitted is not None:
            opened = GaugeMetricFamily(
                "submitgw_connections_open", "SMTP connections open now", labels=["listener"]
            )
            admitted = CounterMetricFamily(
                "submitgw_connections_accepted",
                "SMTP connections admitted (not refused at accept)",
                labels=["listener"],
            )
            live, total = self._connections(), self._admitted()
            for listener in SMTP_LISTENERS:
                opened.add_metric([listener], live.get(listener, 0))
                admitted.add_metric([listener], total.get(listener, 0))
            yield opened
            yield admitted
        if self._pool is not None:
            shares, workers = self._pool
            held = shares.holding()
            yield GaugeMetricFamily(
                "submitgw_auth_pool_in_use",
                "Places of the argon2 pool held now (running or waiting)",
                value=held,
            )
            yield GaugeMetricFamily(
                "submitgw_auth_pool_waiting",
                "Password checks waiting for an argon2 worker",
                value=max(0, held - workers),
            )
            yield GaugeMetricFamily(
                "submitgw_auth_pool_capacity",
                "Places of the argon2 pool (workers + max_pending)",
                value=shares.capacity,
            )
        if self._smarthost_pool is not None:
            idle, fresh, reused = self._smarthost_pool()
            yield GaugeMetricFamily(
                "submitgw_smarthost_pool_idle",
                "Smarthost connections kept open, idle, for the next session",
                value=idle,
            )
            taken = CounterMetricFamily(
                "submitgw_smarthost_connections",
                "Smarthost connections a transaction got: opened for it or taken from the pool",
                labels=["how"],
            )
            taken.add_metric(["fresh"], fresh)
            taken.add_metric(["reused"], reused)
            yield taken
        if self._clock is not None:
            yield GaugeMetricFamily(
                "submitgw_event_loop_lag_max_seconds",
                f"The event loop's largest lag over the last {LAG_WINDOW:g} to "
                f"{2 * LAG_WINDOW:g} seconds",
                value=self._recent_lag.value(self._clock()),
            )

    async def watch_loop(self, interval: float = LAG_INTERVAL) -> None:
        """Run for ever: how much later than asked the loop wakes a sleeping task."""
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        while True:
            asked = loop.time() + interval
            await asyncio.sleep(interval)
            now = loop.time()
            lag = max(0.0, now - asked)
            self.loop_lag.observe(lag)
            self._recent_lag.add(now, lag)

    # --- the sink: one event, a few increments ------------------------------------------

    def record(self, event: Mapping[str, Any]) -> None:
        handle = self._handlers.get(event.get("event", ""))
        if handle is not None:
            handle(event)

    def _connection(self, event: Mapping[str, Any]) -> None:
        self.connections_refused.labels(
            known(event.get("listener"), LISTENERS),
            known(event.get("reason"), CONNECTION_REFUSALS),
        ).inc()

    def _site_connection(self, event: Mapping[str, Any]) -> None:
        end = event.get("end")
        if event.get("session") is None:
            self.connections_refused.labels("selfservice", known(end, CONNECTION_REFUSALS)).inc()
        elif end not in _SITE_WITHOUT_TLS:
            self.tls_handshakes.labels("selfservice", "ok").inc()

    def _tls(self, event: Mapping[str, Any]) -> None:
        if event.get("result") == "failed":
            self.tls_handshakes.labels(known(event.get("listener"), LISTENERS), "failed").inc()

    def _session(self, event: Mapping[str, Any]) -> None:
        listener = known(event.get("listener"), LISTENERS)
        self.sessions_ended.labels(listener, known(event.get("end"), SESSION_ENDS)).inc()
        if event.get("tls"):
            self.tls_handshakes.labels(listener, "ok").inc()

    def _auth(self, event: Mapping[str, Any]) -> None:
        self.auth_attempts.labels(
            known(event.get("mechanism"), MECHANISMS), known(event.get("result"), AUTH_RESULTS)
        ).inc()

    def _message(self, event: Mapping[str, Any]) -> None:
        reply = str(event.get("reply") or "")
        seconds = event.get("smarthost_seconds")
        if isinstance(seconds, int | float):
            self.smarthost_seconds.observe(seconds)
        if reply.startswith("2"):
            recipients = event.get("recipients")
            count = len(recipients) if isinstance(recipients, list | tuple) else recipients
            self.messages_accepted.inc()
            if isinstance(count, int):
                self.recipients_accepted.inc(count)
            return
        self.messages_rejected.labels(rejection(reply, relayed=seconds is not None)).inc()

    def _sender(self, event: Mapping[str, Any]) -> None:
        # A From: refusal also ends the message, whose own event counts it.
        if event.get("check") == "envelope":
            self.messages_rejected.labels("sender-binding").inc()

    def _limit(self, event: Mapping[str, Any]) -> None:
        limit = event.get("limit")
        scope, _, measure = (limit if limit in LIMITS else "other other").partition(" ")
        self.limit_hits.labels(scope, measure).inc()
        if event.get("session") is not None:  # a MAIL or RCPT refused, not a login
            self.messages_rejected.labels("limit").inc()

    def _lockout(self, event: Mapping[str, Any]) -> None:
        self.lockouts.labels(known(event.get("lock"), LOCKS)).inc()

    def _certificate(self, event: Mapping[str, Any]) -> None:
        reason = event.get("reason")
        self.certificates.labels(
            known(event.get("result"), ("accepted", "rejected")),
            "none" if reason is None else known(reason, CERTIFICATE_REASONS),
        ).inc()

    def _access(self, event: Mapping[str, Any]) -> None:
        self.access.labels(known(event.get("decision"), ACCESS_DECISIONS)).inc()

    def _smarthost(self, event: Mapping[str, Any]) -> None:
        self.smarthost_errors.labels(
            known(event.get("step"), SMARTHOST_STEPS), known(event.get("error"), SMARTHOST_ERRORS)
        ).inc()


def rejection(reply: str, *, relayed: bool) -> str:
    """Why a message that got `reply` after DATA was refused, in one of `REJECTIONS`.

    The smarthost's refusal (or a smarthost that did not confirm) by its class; the
    gateway's own by the enhanced status of its reply (see README, *Reply codes*).
    """
    if relayed:
        return "smarthost-4xx" if reply.startswith("4") else "smarthost-5xx"
    status = reply.split(" ", 2)[1] if reply.count(" ") >= 1 else ""
    if status == "5.3.4":
        return "size"
    if status == "5.7.1":
        return "header-from"
    return "content"
