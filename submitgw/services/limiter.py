"""The gateway's side of the limits: asks the counter store off the event loop, applies `limits`.

Sending: MAIL reads the user's and the client's usage in one query and keeps
it for the transaction's RCPTs; a message is counted (an UPSERT per key) once
the smarthost has accepted it, so refused or failed messages cost nothing.
Messages accepted while a count is being written share the next write; the
250 does not wait for it, the next MAIL in this process that reads does.
A reading is reused by the next MAILs of the same user and client for up to
`usage_reuse_seconds`, with this process's own counts since added to it, while
every limit has room (`has_room`): far from a limit a persistent session then
makes no trip to the database per message, near one every MAIL reads.

Logins: the lockouts, failure and success counts of the account name and the
client are read in one query *before* a password is checked, so a locked-out
guesser, or a client that has used up its successful logins, costs that small
query and no argon2 work; the delay is served by the event loop, not a worker
thread. A checked password is counted once: as a failure, or as a success (an
upsert, batched with the message counts unless it also forgets the account's
failures, which is written at once).
Concurrent logins all read the counts before any is written, so a limit may be
overshot by the logins in flight, which `[auth] max_pending_per_*` bound.

A database error never lets a message or a login through unchecked: it is
`Unavailable` (MAIL gets `451 4.3.0`, AUTH `454 4.7.0`), as when the user
store is unavailable.
Only the counting after a message was accepted fails open (logged), because
the smarthost already has the message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from submitgw.config import LimitsConfig
from submitgw.errors import (
    AuthFailed,
    LoginLocked,
    Need,
    PasswordExpired,
    Refusal,
    TooManyLogins,
    Unavailable,
)
from submitgw.rules.limits import (
    IP,
    Quota,
    Window,
    account_key,
    format_time,
    has_room,
    ip_key,
    keys_to_lock,
    limit_refusal,
    login_delay,
    login_name,
    quota,
    reset_time,
    success_key,
    success_limit_reached,
    user_key,
)
from submitgw.services import audit
from submitgw.services.offload import offload
from submitgw.store.counters import CounterStore
from submitgw.types import Override

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# Old buckets and expired lockouts are deleted at most this often per process.
PRUNE_INTERVAL = 60.0
# Usage readings kept for reuse; beyond it the stale ones go, then all.
MAX_READINGS = 4096


@dataclass
class _Reading:
    """One key's usage as read from the database, and what this process counted for it
    since the read began (some of which the read may already include: never too low)."""

    taken: float
    used: tuple[int, int] | None = None  # None until the read has come back
    override: Override | None = None  # the user's own limits, on the user's key
    messages: int = 0
    recipients: int = 0

    def total(self) -> tuple[int, int]:
        assert self.used is not None
        return self.used[0] + self.messages, self.used[1] + self.recipients


class Limiter:
    """One per gateway process, shared by its sessions."""

    def __init__(
        self,
        cfg: LimitsConfig,
        store: CounterStore,
        clock: Callable[[], float] = time.time,
        describe: Callable[[Refusal], str] = str,
        recorder: audit.Recorder | None = None,
    ) -> None:
        self.cfg = cfg
        self.recorder = recorder or audit.Recorder()
        self.store = store
        self.rates = Window(cfg.rate_window)
        self.logins = Window(cfg.auth_window)
        self._clock = clock
        # How a refusal reads in the log (the SMTP reply line; see `app`).
        self._describe = describe
        self._next_prune = 0.0
        # Counts of accepted messages and successful logins not yet written, and who waits
        # for them.
        self._pending: dict[tuple[str, int], tuple[int, int]] = {}
        self._pending_logins: dict[tuple[str, int], int] = {}
        self._batch: asyncio.Future[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._readings: dict[str, _Reading] = {}

    def reconfigure(self, cfg: LimitsConfig) -> None:
        """Live reload: every check from now on, in running sessions too, counts with `cfg`.

        The stored buckets are named by their start, so they read the same under a
        new window.
        """
        self.cfg = cfg
        self.rates = Window(cfg.rate_window)
        self.logins = Window(cfg.auth_window)
        self._readings.clear()

    async def _off_loop(
        self, what: Need, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await offload(functools.partial(fn, *args, **kwargs), what)

    # --- sending ------------------------------------------------------------------------

    async def check_message(self, user: str, client_ip: str, session: str) -> Quota:
        """At MAIL: refuse when one more message (with one recipient) would go over a limit."""
        now = self._clock()
        current = self._reuse(user, client_ip, now) or await self._read(user, client_ip, now)
        await self.enforce(current, session, client_ip, messages=1, recipients=1)
        return current

    def _reuse(self, user: str, client_ip: str, now: float) -> Quota | None:
        """The quota from recent readings of both keys, if they are fresh and far from
        every limit."""
        ukey, ikey = user_key(user), ip_key(client_ip)
        mine, client = self._readings.get(ukey), self._readings.get(ikey)
        if mine is None or client is None or mine.used is None or client.used is None:
            return None
        oldest = min(mine.taken, client.taken)
        if not oldest <= now <= oldest + self.cfg.usage_reuse_seconds:
            return None
        used = {ukey: mine.total(), ikey: client.total()}
        current = quota(self.cfg, user, client_ip, used, mine.override)
        return current if has_room(current) else None

    async def _read(self, user: str, client_ip: str, now: float) -> Quota:
        """Read both keys' usage after every count of this process so far is committed.

        The readings kept for reuse start counting before the wait, so a message
        counted meanwhile is in them even if the read misses it.
        """
        keys = [user_key(user), ip_key(client_ip)]
        readings = [_Reading(now), _Reading(now)]
        if self.cfg.usage_reuse_seconds > 0:
            self._keep(dict(zip(keys, readings, strict=True)), now)
        await self._settled()
        used, override = await self._off_loop(
            Need.LIMITS, self.store.usage, keys, self.rates.first_counted(now), user
        )
        for key, reading in zip(keys, readings, strict=True):
            reading.used = used.get(key, (0, 0))
        readings[0].override = override
        return quota(self.cfg, user, client_ip, used, override)

    def _keep(self, readings: dict[str, _Reading], now: float) -> None:
        if len(self._readings) >= MAX_READINGS:
            fresh = now - self.cfg.usage_reuse_seconds
            self._readings = {k: r for k, r in self._readings.items() if r.taken >= fresh}
            if len(self._readings) >= MAX_READINGS:
                self._readings.clear()
        self._readings.update(readings)

    async def enforce(
        self,
        current: Quota,
        session: str,
        client_ip: str,
        *,
        messages: int = 0,
        recipients: int = 0,
    ) -> None:
        """Refuse (LIMIT_REACHED) if `messages`/`recipients` more would go over `current`."""
        over = current.exceeded(messages, recipients)
        if over is None:
            return
        now = self._clock()
        try:
            buckets = await self._off_loop(
                Need.LIMITS,
                self.store.buckets,
                over.counted.key,
                self.rates.first_counted(now),
                over.measure,
            )
            resets = reset_time(self.rates, buckets, over.excess, now)
        except Unavailable:
            # The refusal stands; only its reset time is unknown.
            resets = None
        refusal = limit_refusal(over, self.rates, resets, now)
        self.recorder.emit(
            {
                "event": "limit",
                "session": session,
                "client": client_ip,
                "user": current.user,
                "limit": f"{over.counted.scope} {over.measure}",
                "key": over.counted.key,
                "reply": self._describe(refusal),
            },
            logging.WARNING,
        )
        raise refusal

    def count_message(self, user: str, client_ip: str, recipients: int) -> None:
        """After the smarthost accepted a message: count it for the user and the client.

        Returns at once: the 250 does not wait for the database, the next MAIL
        in this process that reads does (`check_message`), and the kept readings
        add it at once, so every session here sees every message counted.
        Messages finishing while a write is under way are
        written together by the next one (group commit): under load, one
        transaction serves many messages instead of one each.
        """
        bucket = self.rates.bucket(self._clock())
        for key in (user_key(user), ip_key(client_ip)):
            messages, rcpts = self._pending.get((key, bucket), (0, 0))
            self._pending[(key, bucket)] = (messages + 1, rcpts + recipients)
            reading = self._readings.get(key)
            if reading is not None:
                reading.messages += 1
                reading.recipients += recipients
        self._start_writing()

    def _start_writing(self) -> None:
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_pending())

    async def _settled(self) -> None:
        """Wait until every count this process made so far is committed: a read after it
        sees them all."""
        settled = self._batch or self._in_flight
        if settled is not None:
            # Shielded: a session that goes away must not cancel the others' write.
            await asyncio.shield(settled)

    async def flush(self) -> None:
        """Wait until every counted message is committed (at shutdown, after the sessions)."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write_pending(self) -> None:
        """Write what is pending, batch after batch, until nothing is left."""
        try:
            while self._pending or self._pending_logins:
                counts, self._pending = self._pending, {}
                logins, self._pending_logins = self._pending_logins, {}
                batch, self._batch = self._batch, None
                self._in_flight = batch
                now = self._clock()
                try:
                    await self._off_loop(
                        Need.LIMITS, self._write, counts, logins, now, self._prune_due(now)
                    )
                except Exception as exc:
                    log.error("could not count sent messages or logins: %s", type(exc).__name__)
                self._in_flight = None
                if batch is not None:
                    batch.set_result(None)
        finally:
            self._writer = None
            # Cancelled (the loop is closing): nobody may wait for a write that will not come.
            for left in (self._in_flight, self._batch):
                if left is not None and not left.done():
                    left.set_result(None)
            self._in_flight = None

    def _write(
        self,
        counts: dict[tuple[str, int], tuple[int, int]],
        logins: dict[tuple[str, int], int],
        now: float,
        prune: bool,
    ) -> None:
        self.store.add_counts(counts, logins)
        if prune:
            self._prune(now)

    def _prune_due(self, now: float) -> bool:
        """Whether it is time to delete old rows (decided on the event loop, so only once)."""
        if now < self._next_prune:
            return False
        self._next_prune = now + PRUNE_INTERVAL
        return True

    def _prune(self, now: float) -> None:
        """Housekeeping: a failure here must not undo the count it rides along with."""
        try:
            self.store.prune(self.rates.first_counted(now), self.logins.first_counted(now))
        except Exception as exc:
            log.error("could not delete old counters: %s", type(exc).__name__)

    # --- logins -------------------------------------------------------------------------

    async def login(
        self,
        authcid: bytes,
        client_ip: str,
        verify: Callable[[], Awaitable[T]],
    ) -> T:
        """Run `verify` (the password check) unless the name or client is locked out.

        Raises `LoginLocked` or `TooManyLogins` without calling `verify`;
        waits the escalating delay before calling it; counts it as a failure if
        it raises `AuthFailed`, as a success if it returns.
        """
        account, client = account_key(authcid), ip_key(client_ip)
        keys = [account, client, success_key(account), success_key(client)]
        await self._settled()
        now = self._clock()
        state = await self._off_loop(
            Need.LOGIN, self.store.login_state, keys, self.logins.first_counted(now)
        )
        until = max((lock.locked_until.timestamp() for lock in state.locks), default=0.0)
        if until > now:
            raise LoginLocked(until)
        over = success_limit_reached(
            state.failures.get(success_key(account), 0),
            state.failures.get(success_key(client), 0),
            self.cfg,
        )
        if over is not None:
            raise self._too_many_logins(over, authcid, client_ip)
        account_failures = state.failures.get(account, 0)
        delay = login_delay(account_failures, state.failures.get(client, 0), self.cfg)
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            identity = await verify()
        except AuthFailed:
            await self._failed(authcid, client_ip)
            raise
        except PasswordExpired:
            # The right password all the same: a client retrying it in a loop is counted.
            await self._succeeded(account, client, None)
            raise
        await self._succeeded(account, client, account if account_failures else None)
        return identity

    def _too_many_logins(self, which: str, authcid: bytes, client_ip: str) -> TooManyLogins:
        """The refusal, logged for the admin with the limit that was reached."""
        refusal = TooManyLogins()
        limit = (
            self.cfg.auth_successes_per_ip if which == IP else self.cfg.auth_successes_per_account
        )
        self.recorder.emit(
            {
                "event": "limit",
                "client": client_ip,
                "user": login_name(authcid) if which == "account" else None,
                "limit": f"{which} logins",
                "max": limit,
                "reply": self._describe(refusal),
            },
            logging.WARNING,
        )
        return refusal

    async def _succeeded(self, account: str, client: str, forget: str | None) -> None:
        """Count a successful login; a failure to count is logged, the login stands.

        Like a message, a login without failures to forget is counted in the
        background (the 235 does not wait; this process's next login does).
        Forgetting failures is written at once: a failure counted after it must stay.
        """
        now = self._clock()
        if forget is None:
            bucket = self.logins.bucket(now)
            for key in (success_key(account), success_key(client)):
                self._pending_logins[(key, bucket)] = self._pending_logins.get((key, bucket), 0) + 1
            self._start_writing()
            return
        try:
            await self._off_loop(
                Need.LOGIN,
                self._record_success,
                account,
                client,
                forget,
                now,
                self._prune_due(now),
            )
        except Exception as exc:
            log.error("could not count a login: %s", type(exc).__name__)

    def _record_success(
        self, account: str, client: str, forget: str | None, now: float, prune: bool
    ) -> None:
        keys = [success_key(account), success_key(client)]
        self.store.record_success(keys, self.logins.bucket(now), forget)
        if prune:
            self._prune(now)

    async def _failed(self, authcid: bytes, client_ip: str) -> None:
        now = self._clock()
        try:
            locked = await self._off_loop(
                Need.LOGIN, self._record_failure, authcid, client_ip, now, self._prune_due(now)
            )
        except Exception as exc:
            log.error("could not count a failed login: %s", type(exc).__name__)
            return
        for which, failures, until in locked:
            self.recorder.emit(
                {
                    "event": "lockout",
                    "lock": which,
                    "user": login_name(authcid) if which == "account" else None,
                    "client": client_ip,
                    "failures": failures,
                    "until": format_time(until),
                },
                logging.WARNING,
            )

    def _record_failure(
        self, authcid: bytes, client_ip: str, now: float, prune: bool
    ) -> list[tuple[str, int, float]]:
        """Count the failure; lock what reached its threshold. (which, failures, until) locked."""
        account, client = account_key(authcid), ip_key(client_ip)
        counts = self.store.record_failure(
            [account, client], self.logins.bucket(now), self.logins.first_counted(now)
        )
        locked = []
        until = now + self.cfg.auth_lockout
        for which in keys_to_lock(counts[account], counts[client], self.cfg):
            key = client if which == IP else account
            self.store.lock(key, datetime.fromtimestamp(until, UTC), counts[key])
            locked.append((which, counts[key], until))
        if prune:
            self._prune(now)
        return locked
