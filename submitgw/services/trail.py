"""The database trail: every event of the `Recorder`, written in batches by a thread of its own.

`record` runs wherever an event happens (mostly on the event loop, inside an SMTP
session), so it only appends to a bounded in-memory queue; it never touches the
database, waits or raises. One thread writes what has queued up every
`flush_interval` seconds, or as soon as `batch_size` events wait, in one
transaction per batch. While the database is unreachable the thread retries with
a growing pause; the queue keeps at most `max_queue` events, then drops the
oldest (the newest say most about what is going on now) and counts them in one
error line when writing resumes. The JSON log has every event either way.

A clean stop (`close`) writes what is still queued, for at most a bounded time.
The same thread deletes records older than `retention_days` once a day, one
short transaction at a time between batches.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from submitgw.config import AuditConfig
from submitgw.rules.trail import ip_key
from submitgw.store.audit import PRUNE_BATCH, AuditStore, EventRow, MessageRow
from submitgw.store.errors import BAD_ROWS

log = logging.getLogger(__name__)

# Event kind -> the field that becomes the record's `result` column.
RESULT_FIELDS = {
    "session": "end",
    "auth": "result",
    "certificate": "result",
    "tls": "reason",
    "access": "decision",
    "sender": "check",
    "limit": "limit",
    "lockout": "lock",
    "connection": "reason",
}
# Messages have a table of their own; account changes already have theirs (the account
# trail), and the site's per-connection bookkeeping is not an audit record.
RECORDED = frozenset(RESULT_FIELDS) | {"message"}
# Columns of every record; `result` is a column too (its own value, or that of the
# event's result field), so an event's constant "result" (tls: "failed") is not repeated.
_TOP_LEVEL = frozenset({"event", "session", "client", "user", "result"})
_FIRST_RETRY = 0.5
_LONGEST_RETRY = 30.0
DAY = 86400.0

Row = EventRow | MessageRow
_Entry = tuple[int, float, Mapping[str, Any]]


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def to_row(at: datetime, event: Mapping[str, Any]) -> Row:
    """The record an event becomes: a message row, or an event row with the fields no
    search needs kept as JSON."""
    kind = str(event.get("event"))
    client = _text(event.get("client"))
    ip = ip_key(client) if client else None
    if kind == "message":
        return MessageRow(
            at=at,
            queue_id=str(event.get("queue_id") or ""),
            message_id=_text(event.get("message_id")),
            session=_text(event.get("session")),
            client=client,
            ip=ip,
            user=str(event.get("user") or ""),
            mechanism=_text(event.get("mechanism")),
            cert_serial=_text(event.get("cert_serial")),
            cert_fingerprint=_text(event.get("cert_fingerprint")),
            app_password=_text(event.get("app_password")),
            sender=str(event.get("sender") or ""),
            size=int(event.get("size") or 0),
            recipients=tuple(str(r) for r in event.get("recipient_list") or ()),
            smarthost=_text(event.get("smarthost")),
            smarthost_queue_id=_text(event.get("smarthost_queue_id")),
            reply=str(event.get("reply") or ""),
        )
    result_field = RESULT_FIELDS.get(kind)
    return EventRow(
        at=at,
        kind=kind,
        session=_text(event.get("session")),
        client=client,
        ip=ip,
        user=_text(event.get("user")),
        result=_text(event.get(result_field)) if result_field else None,
        detail={k: v for k, v in event.items() if k not in _TOP_LEVEL and k != result_field},
    )


class DatabaseTrail:
    """A `Sink` for the gateway's `Recorder`; `start` once, `close` once."""

    def __init__(
        self,
        store: AuditStore,
        cfg: AuditConfig,
        *,
        clock: Callable[[], float] = time.time,
        first_prune: float = 300.0,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self._clock = clock
        self._queue: deque[_Entry] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._seq = 0
        # Entries up to this sequence number are being written right now.
        self._inflight = 0
        self._dropped = 0
        self._overflowing = False
        self._failing = False
        self._closing = False
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._prune_at = time.monotonic() + first_prune if cfg.retention_days else float("inf")
        self.written = 0

    # --- the hot path -------------------------------------------------------------------

    def record(self, event: Mapping[str, Any]) -> None:
        if event.get("event") not in RECORDED:
            return
        now = self._clock()
        first_drop = False
        with self._lock:
            self._seq += 1
            if len(self._queue) >= self.cfg.max_queue:
                oldest = self._queue.popleft()
                if oldest[0] > self._inflight:
                    self._dropped += 1
                    first_drop = not self._overflowing
                    self._overflowing = True
            self._queue.append((self._seq, now, event))
            if len(self._queue) >= self.cfg.batch_size:
                self._wake.notify()
        if first_drop:
            log.error(
                "audit trail: %d events wait for the database, the most kept; dropping the "
                "oldest from now on (the log has them all)",
                self.cfg.max_queue,
            )

    @property
    def waiting(self) -> int:
        """Events not yet in the database."""
        return len(self._queue)

    # --- the writer thread --------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-trail", daemon=True)
        self._thread.start()

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued, waiting at most `timeout` (default `shutdown_timeout`)
        seconds; True if nothing was left behind. Idempotent."""
        wait = self.cfg.shutdown_timeout if timeout is None else timeout
        with self._lock:
            if self._closing:
                return not self._queue
            self._closing = True
            self._deadline = time.monotonic() + wait
            self._wake.notify()
        thread = self._thread
        if thread is None:
            self._run()
        elif thread is not threading.current_thread():
            thread.join(max(self._deadline - time.monotonic(), 0) + 1.0)
        left = len(self._queue)
        if left:
            log.error(
                "audit trail: %d events could not be written to the database before the "
                "gateway stopped (the log has them)",
                left,
            )
        return left == 0

    def _run(self) -> None:
        retry_at = 0.0
        pause = _FIRST_RETRY
        flush_at = time.monotonic() + self.cfg.flush_interval
        while True:
            batch = self._next_batch(retry_at, flush_at)
            if batch is None:
                return
            now = time.monotonic()
            flush_at = now + self.cfg.flush_interval
            if batch:
                if self._write(batch):
                    pause = _FIRST_RETRY
                    retry_at = 0.0
                else:
                    retry_at = now + pause
                    pause = min(pause * 2, _LONGEST_RETRY)
                    if self._closing and retry_at >= self._deadline:
                        return
            elif self._closing:
                return
            if not self._closing and now >= self._prune_at and retry_at == 0.0:
                self._prune_step()

    def _next_batch(self, retry_at: float, flush_at: float) -> list[_Entry] | None:
        """Wait until a batch is due; the entries to write (left queued until written), or
        None when closing with nothing left."""
        with self._lock:
            while True:
                now = time.monotonic()
                if self._closing:
                    if not self._queue:
                        return None
                    if now >= retry_at:
                        break
                    if now >= self._deadline:
                        return None
                    self._wake.wait(min(retry_at, self._deadline) - now)
                    continue
                if now < retry_at:
                    self._wake.wait(retry_at - now)
                    continue
                full = len(self._queue) >= self.cfg.batch_size
                if full or now >= flush_at or now >= self._prune_at:
                    break
                self._wake.wait(flush_at - now)
            batch = list(itertools.islice(self._queue, self.cfg.batch_size))
            if batch:
                self._inflight = batch[-1][0]
            return batch

    def _write(self, batch: list[_Entry]) -> bool:
        rows = []
        for _, at, event in batch:
            try:
                rows.append(to_row(datetime.fromtimestamp(at, UTC), event))
            except Exception:
                log.exception("audit trail: cannot record a %s event", event.get("event"))
        events = [r for r in rows if isinstance(r, EventRow)]
        messages = [r for r in rows if isinstance(r, MessageRow)]
        try:
            try:
                self.store.write(events, messages)
            except BAD_ROWS:
                self._write_one_by_one(events, messages)
        except Exception as exc:
            if not self._failing:
                cause = getattr(exc, "orig", None) or exc
                log.error(
                    "audit trail: cannot write to the database (%s: %s); retrying while up to "
                    "%d events wait",
                    type(exc).__name__,
                    str(cause).splitlines()[0] if str(cause) else "",
                    self.cfg.max_queue,
                )
            self._failing = True
            return False
        self._done(batch[-1][0], len(batch))
        return True

    def _write_one_by_one(self, events: list[EventRow], messages: list[MessageRow]) -> None:
        """A batch the database refuses: keep every row it takes, log the ones it does not."""
        for row in [*events, *messages]:
            single_events = [row] if isinstance(row, EventRow) else []
            single_messages = [row] if isinstance(row, MessageRow) else []
            try:
                self.store.write(single_events, single_messages)
            except BAD_ROWS as exc:
                kind = row.kind if isinstance(row, EventRow) else "message"
                log.error(
                    "audit trail: the database refused a %s record (%s); the log has it",
                    kind,
                    type(exc).__name__,
                )

    def _done(self, upto: int, count: int) -> None:
        with self._lock:
            while self._queue and self._queue[0][0] <= upto:
                self._queue.popleft()
            dropped, self._dropped = self._dropped, 0
            self._overflowing = False
        self.written += count
        if dropped:
            log.error(
                "audit trail: %d events were dropped while the database could not keep up "
                "(the log has them)",
                dropped,
            )
        elif self._failing:
            log.warning("audit trail: writing to the database again")
        self._failing = False

    def _prune_step(self) -> None:
        """One slice of the daily clean-up; the next slice waits for the next loop."""
        before = datetime.fromtimestamp(self._clock(), UTC) - timedelta(
            days=self.cfg.retention_days
        )
        try:
            deleted = self.store.prune_slice(before, PRUNE_BATCH)
        except Exception as exc:
            log.error("audit trail: pruning failed (%s); next try in a day", type(exc).__name__)
            deleted = 0
        if deleted < PRUNE_BATCH:
            self._prune_at = time.monotonic() + DAY
        if deleted:
            log.info("audit trail: deleted %d records older than %s", deleted, before.date())
