"""Who holds the places (waiting or running) of the bounded argon2 pool.

Bookkeeping shared by the event loop (which claims places) and the worker threads
(which give them back); the limits it applies are decided in `rules.limits`.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from submitgw.rules.limits import IP


@dataclass(eq=False)
class Share:
    """One place in the pool, held by a client and maybe an account name until released."""

    owner: PoolShares
    client: str | None
    account: str | None
    released: bool = field(default=False, init=False)

    def release(self) -> None:
        """Give the place back; only the first call counts (every path may call it)."""
        self.owner._release(self)


class PoolShares:
    """Who holds the places (waiting or running) of the bounded argon2 pool.

    First come, first served alone lets one client with a correct password
    fill the pool in a loop and leave every other login a 454. So besides the
    pool's capacity, each client (`client_key`) and each login name holds at
    most a few places. Thread-safe: places are claimed on the event loop and
    given back by the worker thread that finished the work.
    """

    def __init__(self, capacity: int, per_client: int, per_account: int) -> None:
        self.capacity = capacity
        self.per_client = per_client
        self.per_account = per_account
        self.held = 0
        self._clients: Counter[str] = Counter()
        self._accounts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def resize(self, capacity: int, per_client: int, per_account: int) -> None:
        """New caps for later claims; places already held stay until released."""
        with self._lock:
            self.capacity = capacity
            self.per_client = per_client
            self.per_account = per_account

    def claim(self, client: str | None = None, account: str | None = None) -> Share | None:
        """A place for `client` and `account` (None: not counted), or None when refused."""
        with self._lock:
            if self.refusal(client, account) is not None:
                return None
            self.held += 1
            if client is not None:
                self._clients[client] += 1
            if account is not None:
                self._accounts[account] += 1
            return Share(self, client, account)

    def refusal(self, client: str | None, account: str | None) -> str | None:
        """Why a claim would be refused now ("pool", "ip", "account"), or None."""
        if self.held >= self.capacity:
            return "pool"
        if client is not None and self._clients[client] >= self.per_client:
            return IP
        if account is not None and self._accounts[account] >= self.per_account:
            return "account"
        return None

    def holding(self, client: str | None = None, account: str | None = None) -> int:
        """Places held in all (no arguments), or by `client` or `account`."""
        if client is not None:
            return self._clients[client]
        if account is not None:
            return self._accounts[account]
        return self.held

    def _release(self, share: Share) -> None:
        with self._lock:
            if share.released:
                return
            share.released = True
            self.held -= 1
            for counter, key in ((self._clients, share.client), (self._accounts, share.account)):
                if key is not None:
                    counter[key] -= 1
                    if counter[key] == 0:
                        del counter[key]
