"""Sending limits and password-guessing protection: the decisions, without any I/O.

Counters live in the database as fixed time buckets per key, so that counting
a message is one UPSERT and reading a rolling window is one SUM over at most
61 rows, on any number of gateways sharing the database (`store.counters`).
This module decides what those numbers mean: which bucket a moment falls in,
which buckets a window covers, whether a limit is exceeded, when it frees up
again, how long a login waits and which keys a failure locks.

Keys name who is counted: `user:EMAIL` and `ip:CLIENT` for sending limits,
`acct:LOGIN` and `ip:CLIENT` for failed logins, `ok:acct:LOGIN` and
`ok:ip:CLIENT` for successful ones. CLIENT is the IPv4 address or
the IPv6 /64 a client connects from: one IPv6 host can use a whole /64, so
counting single IPv6 addresses would let it step around every per-IP limit.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from submitgw.config import LimitsConfig
from submitgw.errors import Kind, Refusal
from submitgw.types import Override

BUCKETS_PER_WINDOW = 60
# Longer login names are hashed so that every key fits the 400-character column.
MAX_NAME_IN_KEY = 320

# A usage reading may be reused only while every limit has this much room left: at least
# a tenth of it and at least MIN_ROOM (see `has_room`).
MIN_ROOM = 10

USER = "user"
IP = "ip"
MESSAGES = "messages"
RECIPIENTS = "recipients"


@dataclass(frozen=True)
class Window:
    """A rolling window of `seconds`, counted in buckets of `width` seconds.

    A bucket is named by its start (Unix seconds, a multiple of `width`), so
    the stored rows mean the same whatever window a reader uses. The window
    counts the current bucket and the `steps` before it: an event counts for
    at least `seconds` and at most one bucket more (two when `width` does not
    divide `seconds`). Erring on the long side keeps the promise "no more than
    N in any `seconds`".
    """

    seconds: int

    @property
    def width(self) -> int:
        return max(1, math.ceil(self.seconds / BUCKETS_PER_WINDOW))

    @property
    def steps(self) -> int:
        return math.ceil(self.seconds / self.width)

    def bucket(self, now: float) -> int:
        return int(now // self.width) * self.width

    def first_counted(self, now: float) -> int:
        """The oldest bucket that still counts at `now`."""
        return self.bucket(now) - self.steps * self.width

    def expires(self, bucket: int) -> int:
        """When the events of `bucket` stop counting."""
        return bucket + (self.steps + 1) * self.width


@functools.lru_cache(maxsize=4096)
def client_key(client_ip: str) -> str:
    """The part of a client address that limits are counted for (see the module docstring)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def login_name(authcid: bytes | str) -> str:
    """The name a login attempt is counted under, whether or not such a user exists.

    Case and surrounding blanks are dropped as the user store does, so that
    `Alice@Example.org` and `alice@example.org` share one counter and one lock.
    """
    text = authcid.decode("utf-8", "replace") if isinstance(authcid, bytes) else authcid
    name = text.strip().lower()
    if len(name) > MAX_NAME_IN_KEY:
        name = "sha256:" + hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()
    return name


def user_key(email: str) -> str:
    return f"{USER}:{email}"


def ip_key(client_ip: str) -> str:
    return f"{IP}:{client_key(client_ip)}"


def account_key(authcid: bytes | str) -> str:
    return f"acct:{login_name(authcid)}"


def success_key(key: str) -> str:
    """Where the successful logins of `key` (an account or client key) are counted."""
    return f"ok:{key}"


# --- sending limits ---------------------------------------------------------------------


@dataclass(frozen=True)
class Counted:
    """One key's limits and what it has used in the window when the snapshot was taken."""

    scope: str
    key: str
    # How the key is named in a reply: the user's address or the client network.
    who: str
    max_messages: int
    max_recipients: int
    messages: int = 0
    recipients: int = 0


@dataclass(frozen=True)
class Exceeded:
    """A limit that a message or recipient would go beyond, and by how much."""

    counted: Counted
    measure: str
    limit: int
    # Units that must leave the window before the attempt would fit.
    excess: int


@dataclass(frozen=True)
class Quota:
    """The sending limits of one transaction: read at MAIL, used again at each RCPT.

    Reusing the MAIL snapshot at RCPT costs no query per recipient; concurrent
    transactions of the same user or client can therefore each pass and
    overshoot a limit by what they carry, which the next MAIL then sees.
    """

    user: str
    counts: tuple[Counted, ...]

    def exceeded(self, messages: int = 0, recipients: int = 0) -> Exceeded | None:
        """The first limit that `messages` more messages and `recipients` more would break."""
        for counted in self.counts:
            for measure, used, extra, limit in (
                (MESSAGES, counted.messages, messages, counted.max_messages),
                (RECIPIENTS, counted.recipients, recipients, counted.max_recipients),
            ):
                if extra and used + extra > limit:
                    return Exceeded(counted, measure, limit, used + extra - limit)
        return None


def has_room(current: Quota) -> bool:
    """Whether a reading of the usage is far enough from every limit to be reused.

    Another gateway's counts reach a reused reading only when it is read again;
    near a limit every MAIL reads afresh, so those counts are not overlooked there.
    """
    for counted in current.counts:
        for used, limit in (
            (counted.messages, counted.max_messages),
            (counted.recipients, counted.max_recipients),
        ):
            if limit - used < max(MIN_ROOM, limit // 10):
                return False
    return True


def quota(
    cfg: LimitsConfig,
    user: str,
    client_ip: str,
    used: dict[str, tuple[int, int]],
    override: Override | None,
) -> Quota:
    """The user's and the client's limits (a per-user override beats the default)."""
    own = override or Override()
    ukey, ikey = user_key(user), ip_key(client_ip)
    u_messages, u_recipients = used.get(ukey, (0, 0))
    i_messages, i_recipients = used.get(ikey, (0, 0))
    who = user if user.isascii() else "this user"
    return Quota(
        user,
        (
            Counted(
                USER,
                ukey,
                who,
                cfg.messages_per_user if own.messages is None else own.messages,
                cfg.recipients_per_user if own.recipients is None else own.recipients,
                u_messages,
                u_recipients,
            ),
            Counted(
                IP,
                ikey,
                f"client {client_key(client_ip)}",
                cfg.messages_per_ip,
                cfg.recipients_per_ip,
                i_messages,
                i_recipients,
            ),
        ),
    )


def reset_time(
    window: Window, buckets: list[tuple[int, int]], excess: int, now: float
) -> int | None:
    """When enough of the oldest buckets have left the window to free `excess` units.

    `buckets` are (start, count) in any order. None when even an empty window
    would not be enough (the attempt alone is over the limit).
    """
    freed = 0
    for start, count in sorted(buckets):
        freed += count
        if freed >= excess:
            return max(window.expires(start), math.ceil(now))
    return None


def per_window(seconds: int) -> str:
    if seconds == 3600:
        return "per hour"
    if seconds % 3600 == 0:
        return f"per {seconds // 3600} hours"
    if seconds % 60 == 0:
        return f"per {seconds // 60} minutes"
    return f"per {seconds} seconds"


def format_time(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def limit_refusal(over: Exceeded, window: Window, resets: int | None, now: float) -> Refusal:
    """The refusal naming the limit, whose it is, and when it frees up (None: unknown)."""
    return Refusal(
        Kind.LIMIT_REACHED,
        measure=over.measure,
        who=over.counted.who,
        limit=over.limit,
        window=window.seconds,
        resets=resets,
        now=now,
    )


# --- password guessing ------------------------------------------------------------------


def login_delay(account_failures: int, ip_failures: int, cfg: LimitsConfig) -> float:
    """Seconds a login waits before its password is checked.

    It doubles with every failure of the account, and with every
    (auth_failures_per_ip / auth_failures_per_account) failures of the client,
    so both reach the same delay just before their lockout. A correct password
    waits too: otherwise a guesser could stop waiting after a moment, knowing
    that only failures are slow.
    """
    level = max(
        float(account_failures),
        ip_failures * cfg.auth_failures_per_account / cfg.auth_failures_per_ip,
    )
    if level < 1:
        return 0.0
    return min(cfg.auth_delay * 2 ** (level - 1), cfg.auth_max_delay)


def keys_to_lock(account_failures: int, ip_failures: int, cfg: LimitsConfig) -> tuple[str, ...]:
    """Which of ("account", "ip") the failure counts (this failure included) lock out."""
    locked = []
    if account_failures >= cfg.auth_failures_per_account:
        locked.append("account")
    if ip_failures >= cfg.auth_failures_per_ip:
        locked.append("ip")
    return tuple(locked)


def success_limit_reached(
    account_successes: int, ip_successes: int, cfg: LimitsConfig
) -> str | None:
    """Which of ("account", "ip") has used up its successful logins, if any.

    Checked before a password is verified, so a client that logs in far more
    often than any mail client would costs a query, not argon2 work.
    """
    if account_successes >= cfg.auth_successes_per_account:
        return "account"
    if ip_successes >= cfg.auth_successes_per_ip:
        return IP
    return None
