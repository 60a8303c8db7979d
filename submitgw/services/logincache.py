"""Recent successful password logins, so a client that logs in for every message pays
argon2 once in a while instead of every time.

An entry says: this login name with this password was verified, unlocking this
account (and app password, if one), while the account's row carried this
credential generation. It is found by an HMAC of the login name and the password
under a key drawn when the process starts and never stored, so neither the
password nor a hash of it alone is kept, and nothing outlives the process.

Only successes are remembered: a wrong password has no entry and is verified with
argon2 as always. What the entry says is trusted only while the row still carries
that generation (every change to the user's credentials, policy, state or networks
moves it on) and for `seconds` after the verification at most; everything else a
login depends on (lockouts, login limits, networks, expiry, policy, the account
being enabled) is checked on every login as before. At most `entries` are kept,
the least recently used going first.

Thread-safe: looked up on the event loop, and small enough that a lock costs nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Remembered:
    """What a verified password unlocked, and when it was verified (`clock` seconds)."""

    user_id: int
    generation: int
    app_id: int | None
    app_label: str
    at: float


class LoginCache:
    def __init__(
        self, entries: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = entries
        self.seconds = seconds
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, Remembered] = OrderedDict()
        self._lock = threading.Lock()
        # Since the start, for the curious (tests, metrics): logins served from here.
        self.hits = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def key(self, login: str, password: bytes) -> bytes:
        """Where the login name (normalised) and password are filed; the name's length
        first, so that no other split of the same bytes gives the same key."""
        name = login.encode("utf-8")
        message = len(name).to_bytes(4, "big") + name + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def get(self, key: bytes) -> Remembered | None:
        """The entry, if there is one young enough; an old one is dropped."""
        if not self.enabled:
            return None
        now = self._clock()
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if not 0 <= now - found.at < self.seconds:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return found

    def put(
        self, key: bytes, user_id: int, generation: int, app_id: int | None, app_label: str
    ) -> None:
        """Remember a success verified just now, forgetting the least recently used
        entries beyond the capacity."""
        if not self.enabled:
            return
        entry = Remembered(user_id, generation, app_id, app_label, self._clock())
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def resize(self, entries: int, seconds: float) -> None:
        """New bounds (a live reload): the least recently used beyond them go at once."""
        with self._lock:
            self.capacity, self.seconds = entries, seconds
            while len(self._entries) > entries:
                self._entries.popitem(last=False)

    def hit(self) -> None:
        with self._lock:
            self.hits += 1

    def drop(self, key: bytes) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
